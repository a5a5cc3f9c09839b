// Package broker moves bytes and holds connections: the raw TCP listener,
// the gobwas/ws upgrade with authentication in its callbacks, the epoll
// poller that reads only ready sockets, connections and their lifecycle, and
// channels with fan-out. Every outcome becomes one event (package event)
// handed to the configured sinks.
package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker/poller"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
)

// Traces decides which upgrade traces are kept and turns kept upgrades
// into spans (tracing.Provider implements it).
type Traces interface {
	Keeps(sc trace.SpanContext, failed bool) bool
	event.Sink
}

// Deps are the collaborators a Server is given; none is global.
type Deps struct {
	Extractor *authn.Extractor
	Verifier  *authn.Verifier
	Origins   *authn.Origins
	Metrics   *telemetry.Metrics
	// Sink receives every event (metrics, log, event log...).
	Sink event.Sink
	// Traces, when set, traces upgrades: it decides which traces are kept
	// and builds their spans from the events (tracing.Provider).
	Traces Traces
	Logger *slog.Logger
	// Redactor masks the configured query parameter, among others.
	Redactor *redact.Redactor
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Epoch distinguishes this run of the node from earlier ones.
	Epoch uint64
	// Bus carries channel messages to and from the other nodes of a
	// cluster (package broker/cluster); nil keeps channels on this node.
	Bus Bus
}

// Server accepts WebSocket upgrades and serves the connections.
type Server struct {
	cfg      Config
	ex       *authn.Extractor
	ver      *authn.Verifier
	origins  *authn.Origins
	metrics  *telemetry.Metrics
	sink     event.Sink
	traces   Traces
	log      *slog.Logger
	redactor *redact.Redactor
	now      func() time.Time
	epoch    uint64

	seq      atomic.Uint64 // request ids
	evSeq    atomic.Uint64 // event sequence
	connSeq  atomic.Uint64
	failures *failureLimiter
	// traceFailures caps exported rejection traces per reason.
	traceFailures reasonLimiter
	// testHookOpen, when set (tests only), runs between an accepted
	// upgrade's 101 and its registration: the window of the limit race.
	testHookOpen func()

	perms   permCache
	hsPool  sync.Pool
	evPool  sync.Pool
	hsSlots chan struct{} // one per handshake goroutine
	hsQueue chan accepted // to idle handshake goroutines (unbuffered)
	// waited counts the handshakes whose request did not arrive whole with
	// the first read, moved to Go's network poller (handshake.waitable).
	waited atomic.Uint64

	poller   *poller.Poller
	writers  *writerPool
	hub      *hub
	expiries *expiries

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[uint64]*Conn
	bySubject map[string]int
	closing   bool
	wg        sync.WaitGroup // accept loops and handshakes
	connWG    sync.WaitGroup // open connections
	stop      chan struct{}
	stopOnce  sync.Once
}

// New validates cfg and returns a Server. Call Close to release it.
func New(cfg Config, d Deps) (*Server, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	if d.Extractor == nil || d.Verifier == nil || d.Metrics == nil {
		return nil, errors.New("broker: Extractor, Verifier and Metrics are required")
	}
	if d.Extractor.Enabled(authn.SourceCookie) && d.Origins.Empty() {
		return nil, errors.New("token-sources: the cookie source needs --allowed-origins (a cookie alone would let any site open a connection as the user)")
	}
	s := &Server{
		cfg:       cfg,
		ex:        d.Extractor,
		ver:       d.Verifier,
		origins:   d.Origins,
		metrics:   d.Metrics,
		sink:      d.Sink,
		traces:    d.Traces,
		log:       d.Logger,
		redactor:  d.Redactor,
		now:       d.Now,
		epoch:     d.Epoch,
		hsSlots:   make(chan struct{}, cfg.MaxHandshakes),
		hsQueue:   make(chan accepted),
		listeners: map[net.Listener]struct{}{},
		conns:     map[uint64]*Conn{},
		bySubject: map[string]int{},
		stop:      make(chan struct{}),
	}
	if s.sink == nil {
		s.sink = event.Sinks{}
	}
	if s.traces != nil {
		// Spans come from the events, after every other sink saw them.
		s.sink = event.Sinks{s.sink, s.traces}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.redactor == nil {
		s.redactor = redact.New()
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.failures = newFailureLimiter(cfg.FailureBurst, cfg.FailureRate)
	s.traceFailures.rate = cfg.TraceFailureRate
	s.hsPool.New = func() any { return newHandshake(s) }
	s.evPool.New = func() any { return new(event.Event) }
	p, err := poller.New(poller.Config{})
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	s.poller = p
	s.writers = newWriterPool(0)
	s.hub = newHub(s, d.Bus)
	s.expiries = newExpiries(s)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.expiries.run(s.stop)
	}()
	s.wg.Add(1)
	go s.sweep()
	return s, nil
}

// Config returns the effective configuration.
func (s *Server) Config() Config { return s.cfg }

// emit stamps e and hands it to the sinks.
func (s *Server) emit(ctx context.Context, e *event.Event) {
	e.Node, e.Epoch = s.cfg.Node, s.epoch
	e.Seq = s.evSeq.Add(1)
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	s.sink.Observe(ctx, e)
}

func (s *Server) getEvent() *event.Event { return s.evPool.Get().(*event.Event) }

func (s *Server) putEvent(e *event.Event) {
	e.Reset()
	s.evPool.Put(e)
}

// Listen opens a TCP listener for Serve the way the broker wants its
// sockets: without TCP keep-alive. The broker pings every connection and
// closes the idle ones itself (Config.PingInterval, Config.IdleTimeout),
// so the kernel's probes would only repeat that, at the price of four
// setsockopt calls on every accepted connection (net.Listen's default).
//
// On Linux the broker also accepts the listener's connections itself
// (tcpListener in fdconn_linux.go): a connection stays out of Go's network
// poller from its accept to its close unless its handshake has to wait.
func Listen(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(ctx, "tcp", addr) // its error names the address
	if err != nil {
		return nil, err
	}
	rl, err := newTCPListener(ln.(*net.TCPListener))
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("broker: listen %s: %w", addr, err)
	}
	return rl, nil
}

// peerAccepter is a listener whose accepts give the peer's address without
// a net.TCPAddr (tcpListener).
type peerAccepter interface {
	acceptPeer() (accepted, error)
}

// Serve accepts connections on ln until Close. It returns nil after Close.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return errors.New("broker: serve after close")
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	accept := func() (accepted, error) {
		c, err := ln.Accept()
		return accepted{c: c}, err
	}
	if pa, ok := ln.(peerAccepter); ok {
		accept = pa.acceptPeer
	}
	var backoff time.Duration
	for {
		a, err := accept()
		if err != nil {
			select {
			case <-s.stop:
				return nil
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(backoff*2, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "error", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("broker: accept: %w", err)
		}
		backoff = 0
		if !s.dispatch(a) {
			a.c.Close()
			return nil
		}
	}
}

// hsWorkerIdle is how long a handshake goroutine waits for the next
// connection before it exits.
const hsWorkerIdle = 30 * time.Second

// dispatch hands c to an idle handshake goroutine, or starts one if fewer
// than MaxHandshakes run, or waits for one to be free. Handshake goroutines
// outlive their handshake: a new goroutine per upgrade spent ~15% of the
// upgrade's CPU growing its stack (see docs/benchmarks.md). It reports
// false when the server stops first.
func (s *Server) dispatch(a accepted) bool {
	select {
	case s.hsQueue <- a:
		return true
	default:
	}
	select {
	case s.hsQueue <- a:
	case s.hsSlots <- struct{}{}:
		s.wg.Add(1)
		go s.hsWorker(a)
	case <-s.stop:
		return false
	}
	return true
}

func (s *Server) hsWorker(a accepted) {
	defer s.wg.Done()
	defer func() { <-s.hsSlots }()
	idle := time.NewTimer(hsWorkerIdle)
	defer idle.Stop()
	for {
		s.handleAccepted(a)
		idle.Reset(hsWorkerIdle)
		select {
		case a = <-s.hsQueue:
		case <-idle.C:
			return
		case <-s.stop:
			return
		}
	}
}

// isTemporary treats EMFILE/ENFILE-like accept errors as retryable: they
// pass once descriptors are freed, and the listener must not die of them.
func isTemporary(err error) bool {
	type temporary interface{ Temporary() bool }
	var t temporary
	return errors.As(err, &t) && t.Temporary()
}

// accepted is a connection for a handshake goroutine, with its peer's
// address when the accept gave it (tcpListener.acceptPeer).
type accepted struct {
	c    net.Conn
	peer netip.Addr
}

// handle runs the handshake of a connection from a listener of the caller's
// (tests: in-memory connections).
func (s *Server) handle(c net.Conn) { s.handleAccepted(accepted{c: c}) }

// handleAccepted runs one handshake (on a handshake goroutine, see
// dispatch) and hands an accepted connection to the poller. The handshake
// may move the socket to another net.Conn (hsConn.Read): h.conn is the
// connection from then on.
func (s *Server) handleAccepted(a accepted) {
	h := s.hsPool.Get().(*handshake)
	defer s.hsPool.Put(h)
	h.reset(a)
	_ = a.c.SetDeadline(h.deadline())
	_, err := h.up.Upgrade(&h.hc)
	switch {
	case err == nil:
	case h.hc.swallow:
		// Refused by authentication (HTTP mode).
		s.reject(h)
		h.conn.Close()
		return
	case h.hc.tooLarge:
		s.metrics.HandshakeError(telemetry.HandshakeTooLarge)
		writeTooLarge(h.conn)
		h.conn.Close()
		return
	default:
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			s.metrics.HandshakeError(telemetry.HandshakeTimeout)
			writeTimeout(h.conn, s.cfg.HandshakeTimeout)
		} else {
			s.metrics.HandshakeError(telemetry.HandshakeBadRequest)
		}
		h.conn.Close()
		return
	}
	if h.reason != authn.ReasonNone {
		// Close mode: upgraded, now closed with the reason.
		s.reject(h)
		h.conn.Close()
		return
	}
	_ = h.conn.SetDeadline(time.Time{})
	s.open(h)
}

func writeTooLarge(c net.Conn) {
	writePlain(c, "431 Request Header Fields Too Large", "handshake larger than max-handshake-bytes\n")
}

// writeTimeout answers a request that did not arrive whole within the
// handshake timeout with 408 (RFC 9110 §15.5.9), so that a client on a slow
// or stalled path reads why it was cut off instead of an EOF. The write has
// a short deadline of its own: the peer may not be reading.
func writeTimeout(c net.Conn, d time.Duration) {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	writePlain(c, "408 Request Timeout", "handshake not received within handshake-timeout "+d.String()+"\n")
}

// writePlain writes an HTTP/1.1 answer with a text body and closes the
// exchange (Connection: close) for a request the upgrade could not read.
func writePlain(c net.Conn, status, body string) {
	_, _ = c.Write([]byte("HTTP/1.1 " + status + "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body))
}

// reject answers, records and counts a refused upgrade.
func (s *Server) reject(h *handshake) {
	status := h.reason.Status()
	rid := h.rid
	if rid == "" {
		rid = h.requestID()
	}
	if s.cfg.RejectMode == RejectClose {
		status = int(CloseCode(h.reason))
		h.writeRejectionClose()
	} else {
		h.writeRejection(rid)
	}
	if h.reason != authn.ReasonRateLimited && h.reason != authn.ReasonConnectionLimit && h.reason != authn.ReasonKeysUnavailable {
		s.failures.fail(h.remote, h.start)
	}
	e := s.getEvent()
	h.rejectionEvent(e, status, rid)
	e.Duration = s.now().Sub(h.start)
	h.traceEvent(e)
	s.emit(context.Background(), e)
	s.putEvent(e)
}

// keepTrace decides whether an upgrade's trace is exported: successes by
// the tracer's ratio, failures always, up to TraceFailureRate per second
// and reason, so that a flood of rejections cannot make tracing the
// broker's main cost (the metrics and the event log still count every one).
func (s *Server) keepTrace(sc trace.SpanContext, r authn.Reason) bool {
	if r == authn.ReasonNone {
		return s.traces.Keeps(sc, false)
	}
	return s.traceFailures.allow(r, s.now()) && s.traces.Keeps(sc, true)
}

// reasonLimiter is a token bucket per reason.
type reasonLimiter struct {
	rate float64 // per second; <= 0: unlimited
	mu   sync.Mutex
	b    [authn.NumReasons]bucket
}

func (l *reasonLimiter) allow(r authn.Reason, now time.Time) bool {
	if l.rate <= 0 || r >= authn.NumReasons {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := &l.b[r]
	if b.last.IsZero() {
		b.tokens = l.rate
	} else {
		b.tokens = min(l.rate, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// clientAddr is the peer address, or the client address a trusted proxy
// put in X-Forwarded-For (the right-most address not itself trusted).
func (s *Server) clientAddr(peer netip.Addr, xff []byte) netip.Addr {
	if len(xff) == 0 || !s.trusted(peer) {
		return peer
	}
	rest := string(xff)
	for rest != "" {
		i := len(rest) - 1
		for i >= 0 && rest[i] != ',' {
			i--
		}
		part := rest[i+1:]
		if i >= 0 {
			rest = rest[:i]
		} else {
			rest = ""
		}
		a, err := netip.ParseAddr(strings.Trim(part, " \t"))
		if err != nil {
			return peer
		}
		a = a.Unmap()
		if !s.trusted(a) {
			return a
		}
		peer = a
	}
	return peer
}

func (s *Server) trusted(a netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Ready reports whether the server accepts connections.
func (s *Server) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.closing && len(s.listeners) > 0
}

// Conns returns the number of open connections.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Shutdown stops accepting, closes every connection with 1001 (going
// away) and waits, at most until ctx ends, for them to be gone.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	conns := make([]*Conn, 0, len(s.conns))
	for _, c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(event.CloseServerShutdown, ws.StatusGoingAway, "server shutting down")
	}
	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		s.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("broker: shutdown: %w", ctx.Err())
	}
	s.writers.close()
	s.poller.Close()
	return err
}

// Close is Shutdown with the configured drain bound.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownDrain)
	defer cancel()
	return s.Shutdown(ctx)
}

// failureLimiter is a token bucket of failed attempts per client address.
type failureLimiter struct {
	burst float64
	rate  float64
	mu    sync.Mutex
	m     map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newFailureLimiter(burst int, rate float64) *failureLimiter {
	return &failureLimiter{burst: float64(burst), rate: rate, m: map[netip.Addr]*bucket{}}
}

const maxTrackedAddrs = 100000

func (f *failureLimiter) refill(b *bucket, now time.Time) {
	b.tokens = min(f.burst, b.tokens+now.Sub(b.last).Seconds()*f.rate)
	b.last = now
}

// limited reports whether addr has no failure budget left.
func (f *failureLimiter) limited(addr netip.Addr, now time.Time) bool {
	if f.burst <= 0 {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.m[addr]
	if b == nil {
		return false
	}
	f.refill(b, now)
	return b.tokens < 1
}

// fail spends one token of addr's budget.
func (f *failureLimiter) fail(addr netip.Addr, now time.Time) {
	if f.burst <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	b := f.m[addr]
	if b == nil {
		if len(f.m) >= maxTrackedAddrs {
			f.evict(now)
		}
		b = &bucket{tokens: f.burst, last: now}
		f.m[addr] = b
	}
	f.refill(b, now)
	b.tokens = max(0, b.tokens-1)
}

// evict drops buckets that have refilled; the map never outgrows the bound.
func (f *failureLimiter) evict(now time.Time) {
	for a, b := range f.m {
		f.refill(b, now)
		if b.tokens >= f.burst {
			delete(f.m, a)
		}
	}
	if len(f.m) >= maxTrackedAddrs {
		clear(f.m)
	}
}
