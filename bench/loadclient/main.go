// Command loadclient drives wsbroker or the baseline server (bench/baseline)
// identically, from its own process (the open-file limit is per process),
// spreading its sockets over several 127.0.0.x source addresses. It mints
// its own tokens from the servers' key material and prints one JSON object
// per run on stdout.
//
//	loadclient handshake -url ws://127.0.0.1:18080/ws -hmac-secret-file S -rsa-key-file K \
//	    -case accept-hs256 -workers 32 -duration 3s
//	loadclient hold -url ws://127.0.0.1:18080/ws -metrics http://127.0.0.1:19090/metrics \
//	    -hmac-secret-file S -n 10000 -fanout 5
//
// handshake: workers each loop connect → upgrade request → read the
// response head → close (RST, so neither side keeps TIME_WAIT) for a fixed
// duration. Cases: accept-hs256 and accept-rs256 (Authorization header),
// reject-missing (no token), reject-badsig (HS256 signed with another
// secret). Anything but the expected status counts as unexpected.
//
// hold: opens n connections (token as the subprotocol bearer.<jwt>), reads
// the server's RSS, Go heap, stacks and goroutines from its /metrics before
// and after, and prints the difference per connection; with -fanout M it
// subscribes every connection to one channel and publishes M messages, one
// at a time, reporting delivery latency (p50/p99) and deliveries/s. Each
// delivery is timed twice: when the subscriber's socket received the bytes
// (the kernel's SO_TIMESTAMPNS receive timestamp: the server's delivery) and
// when the client's reader goroutine got to read them (adds the scheduling
// of 10,000 client goroutines on CPUs the server shares).
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadclient handshake|hold [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "handshake":
		err = handshakeCmd(os.Args[2:])
	case "hold":
		err = holdCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadclient:", err)
		os.Exit(1)
	}
}

// keys is the token material shared by both commands.
type keys struct {
	secretFile, rsaFile string
}

func (k *keys) flags(fs *flag.FlagSet) {
	fs.StringVar(&k.secretFile, "hmac-secret-file", "", "HS256 secret file (the servers')")
	fs.StringVar(&k.rsaFile, "rsa-key-file", "", "RSA private key (PEM) whose public half the servers trust")
}

func (k *keys) secret() ([]byte, error) {
	raw, err := os.ReadFile(k.secretFile)
	if err != nil {
		return nil, fmt.Errorf("hmac-secret-file: %w", err)
	}
	return bytes.TrimSpace(raw), nil
}

func (k *keys) rsaKey() (*rsa.PrivateKey, error) {
	raw, err := os.ReadFile(k.rsaFile)
	if err != nil {
		return nil, fmt.Errorf("rsa-key-file: %w", err)
	}
	key, err := jwt.ParseRSAPrivateKeyFromPEM(raw)
	if err != nil {
		return nil, fmt.Errorf("rsa-key-file %s: %w", k.rsaFile, err)
	}
	return key, nil
}

func claims(sub string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{"sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "channels": []string{"*"}}
}

// tokenFor mints the token of a handshake case ("" for reject-missing).
func (k *keys) tokenFor(c string) (string, error) {
	switch c {
	case "accept-hs256":
		s, err := k.secret()
		if err != nil {
			return "", err
		}
		return sign(jwt.SigningMethodHS256, s)
	case "reject-badsig":
		s, err := k.secret()
		if err != nil {
			return "", err
		}
		return sign(jwt.SigningMethodHS256, append([]byte("not-the-secret-"), s...))
	case "accept-rs256":
		key, err := k.rsaKey()
		if err != nil {
			return "", err
		}
		return sign(jwt.SigningMethodRS256, key)
	case "reject-missing":
		return "", nil
	}
	return "", fmt.Errorf("unknown case %q (accept-hs256, accept-rs256, reject-missing, reject-badsig)", c)
}

func sign(m jwt.SigningMethod, key any) (string, error) {
	s, err := jwt.NewWithClaims(m, claims("bench")).SignedString(key)
	if err != nil {
		return "", fmt.Errorf("sign %s: %w", m.Alg(), err)
	}
	return s, nil
}

// dialer binds each socket to one of several 127.0.0.x addresses with
// IP_BIND_ADDRESS_NO_PORT, so the kernel picks the port per 4-tuple and
// each source address has its own ephemeral range.
type dialer struct {
	sources int
	next    atomic.Uint64
}

func (d *dialer) dial(ctx context.Context, addr string) (net.Conn, error) {
	i := d.next.Add(1)
	nd := net.Dialer{
		Timeout:   10 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%uint64(d.sources)))},
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	c, err := nd.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return c, nil
}

// handshakeResult is one handshake run.
type handshakeResult struct {
	Case       string  `json:"case"`
	Workers    int     `json:"workers"`
	Seconds    float64 `json:"seconds"`
	OK         int64   `json:"ok"`
	Unexpected int64   `json:"unexpected"`
	Errors     int64   `json:"errors"`
	PerSec     float64 `json:"per_sec"`
	P50Micros  float64 `json:"p50_us"`
	P99Micros  float64 `json:"p99_us"`
	FirstError string  `json:"first_error,omitempty"`
}

func handshakeCmd(args []string) error {
	fs := flag.NewFlagSet("handshake", flag.ContinueOnError)
	var k keys
	k.flags(fs)
	rawURL := fs.String("url", "ws://127.0.0.1:18080/ws", "WebSocket URL")
	c := fs.String("case", "accept-hs256", "accept-hs256, accept-rs256, reject-missing or reject-badsig")
	workers := fs.Int("workers", 32, "concurrent connect→upgrade→close loops")
	duration := fs.Duration("duration", 3*time.Second, "how long to run")
	sources := fs.Int("sources", 16, "127.0.0.x source addresses to spread over")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*rawURL)
	if err != nil {
		return fmt.Errorf("url: %w", err)
	}
	tok, err := k.tokenFor(*c)
	if err != nil {
		return err
	}
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsbroker.v1\r\nUser-Agent: loadclient\r\n", u.Path, u.Host)
	if tok != "" {
		fmt.Fprintf(&req, "Authorization: Bearer %s\r\n", tok)
	}
	req.WriteString("\r\n")
	want := 101
	if strings.HasPrefix(*c, "reject") {
		want = 401
	}
	res, err := runHandshakes(u.Host, []byte(req.String()), want, *workers, *duration, &dialer{sources: *sources})
	if err != nil {
		return err
	}
	res.Case = *c
	return json.NewEncoder(os.Stdout).Encode(res)
}

func runHandshakes(addr string, req []byte, want, workers int, d time.Duration, dl *dialer) (handshakeResult, error) {
	var ok, unexpected, errs atomic.Int64
	var firstErr atomic.Value
	lats := make([][]time.Duration, workers)
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	end, _ := ctx.Deadline()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for ctx.Err() == nil {
				t0 := time.Now()
				status, err := oneHandshake(ctx, dl, addr, req, buf)
				switch {
				case err != nil:
					// A dial cut by the run's deadline is not an error.
					if ctx.Err() != nil || time.Now().After(end) {
						return
					}
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					time.Sleep(time.Millisecond) // bounded back-off
				case status != want:
					unexpected.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d, want %d", status, want))
				default:
					ok.Add(1)
					lats[w] = append(lats[w], time.Since(t0))
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	r := handshakeResult{Workers: workers, Seconds: elapsed, OK: ok.Load(), Unexpected: unexpected.Load(), Errors: errs.Load(), PerSec: float64(ok.Load()) / elapsed}
	if len(all) > 0 {
		r.P50Micros = float64(all[len(all)/2].Microseconds())
		r.P99Micros = float64(all[len(all)*99/100].Microseconds())
	}
	if v, _ := firstErr.Load().(string); v != "" {
		r.FirstError = v
	}
	if r.OK == 0 {
		return r, fmt.Errorf("no handshake got status %d: %s", want, r.FirstError)
	}
	return r, nil
}

// oneHandshake connects, writes req, reads the response head and closes
// with RST. It returns the status code.
func oneHandshake(ctx context.Context, dl *dialer, addr string, req, buf []byte) (int, error) {
	c, err := dl.dial(ctx, addr)
	if err != nil {
		return 0, err
	}
	defer func() {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(req); err != nil {
		return 0, fmt.Errorf("write request: %w", err)
	}
	n := 0
	for !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
		if n == len(buf) {
			return 0, errors.New("response head larger than 4 KiB")
		}
		m, err := c.Read(buf[n:])
		if err != nil {
			return 0, fmt.Errorf("read response: %w", err)
		}
		n += m
	}
	line, _, _ := bytes.Cut(buf[:n], []byte("\r\n"))
	f := bytes.Fields(line)
	if len(f) < 2 {
		return 0, fmt.Errorf("status line %q", line)
	}
	status, err := strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, fmt.Errorf("status line %q: %w", line, err)
	}
	return status, nil
}

// holdResult is one hold run.
type holdResult struct {
	Conns         float64 `json:"conns"`
	DialSeconds   float64 `json:"dial_seconds"`
	RSSPerConn    float64 `json:"rss_per_conn"`
	HeapPerConn   float64 `json:"heap_per_conn"`
	StackPerConn  float64 `json:"stack_per_conn"`
	GoroutinesPer float64 `json:"goroutines_per_conn"`
	// *Marginal: the growth from n/2 to n connections per connection.
	RSSMarginal    float64 `json:"rss_marginal_per_conn"`
	HeapMarginal   float64 `json:"heap_marginal_per_conn"`
	FanoutMessages int     `json:"fanout_messages,omitempty"`
	Deliveries     int     `json:"deliveries,omitempty"`
	DeliveriesPerS float64 `json:"deliveries_per_sec,omitempty"`
	P50Millis      float64 `json:"p50_ms,omitempty"`
	P99Millis      float64 `json:"p99_ms,omitempty"`
	MaxMillis      float64 `json:"max_ms,omitempty"`
	// Socket*: the same latencies at the kernel receive timestamp of the
	// subscriber's socket, without the client's scheduling.
	SocketP50Millis float64 `json:"socket_p50_ms,omitempty"`
	SocketP99Millis float64 `json:"socket_p99_ms,omitempty"`
	SocketMaxMillis float64 `json:"socket_max_ms,omitempty"`
	FanoutMissing   int     `json:"fanout_missing,omitempty"`
	FanoutFirstFail string  `json:"fanout_first_error,omitempty"`
}

// dialRange dials conns[from:to] with workers concurrent dials.
func dialRange(dl *dialer, rawURL, tok string, conns []*wsConn, from, to, workers int) error {
	next := atomic.Int64{}
	next.Store(int64(from))
	errc := make(chan error, workers)
	for range workers {
		go func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= to {
					errc <- nil
					return
				}
				c, err := dialWS(dl, rawURL, tok)
				if err != nil {
					errc <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				conns[i] = c
			}
		}()
	}
	var dialErr error
	for range workers {
		if err := <-errc; err != nil && dialErr == nil {
			dialErr = err
		}
	}
	return dialErr
}

// awaitHeld waits (at most 30s) until the server counts n connections more
// than before, then settle, and returns its metrics then.
func awaitHeld(metrics string, before map[string]float64, n int, settle time.Duration) (map[string]float64, error) {
	for deadline := time.Now().Add(30 * time.Second); ; {
		m, err := scrape(metrics)
		if err != nil {
			return nil, err
		}
		if m["wsbroker_connections"] >= before["wsbroker_connections"]+float64(n) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(settle)
	return scrape(metrics)
}

func holdCmd(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	var k keys
	k.flags(fs)
	rawURL := fs.String("url", "ws://127.0.0.1:18080/ws", "WebSocket URL")
	metrics := fs.String("metrics", "http://127.0.0.1:19090/metrics", "the server's /metrics")
	n := fs.Int("n", 10000, "connections to hold")
	workers := fs.Int("workers", 16, "concurrent dials")
	sources := fs.Int("sources", 16, "127.0.0.x source addresses to spread over")
	fanout := fs.Int("fanout", 0, "messages to publish to every connection (0: memory only)")
	gap := fs.Duration("fanout-gap", 500*time.Millisecond, "pause between published messages")
	quiet := fs.Duration("fanout-settle", time.Second, "pause between the last subscribe ack and the first publish, so that the subscription burst's own work (wsbroker appends a subscription.added event per subscriber) is over")
	settle := fs.Duration("settle", 2*time.Second, "wait after the last connection before reading memory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := k.secret()
	if err != nil {
		return err
	}
	tok, err := sign(jwt.SigningMethodHS256, s)
	if err != nil {
		return err
	}
	before, err := scrape(*metrics)
	if err != nil {
		return err
	}
	dl := &dialer{sources: *sources}
	conns := make([]*wsConn, *n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	// Two halves, memory read after each: the second half's growth is the
	// marginal cost of a connection, without what the server allocates
	// once (buffers, caches) that the first half already paid for.
	start := time.Now()
	half := *n / 2
	if err := dialRange(dl, *rawURL, tok, conns, 0, half, *workers); err != nil {
		return err
	}
	mid, err := awaitHeld(*metrics, before, half, *settle)
	if err != nil {
		return err
	}
	if err := dialRange(dl, *rawURL, tok, conns, half, *n, *workers); err != nil {
		return err
	}
	res := holdResult{DialSeconds: time.Since(start).Seconds()}
	after, err := awaitHeld(*metrics, before, *n, *settle)
	if err != nil {
		return err
	}
	held := after["wsbroker_connections"] - before["wsbroker_connections"]
	if held <= 0 {
		return fmt.Errorf("server counts %v connections after %d dials", held, *n)
	}
	res.Conns = held
	per := func(m string) float64 { return (after[m] - before[m]) / held }
	res.RSSPerConn = per("process_resident_memory_bytes")
	res.HeapPerConn = per("go_memstats_heap_inuse_bytes")
	res.StackPerConn = per("go_memstats_stack_inuse_bytes")
	res.GoroutinesPer = per("go_goroutines")
	if second := held - (mid["wsbroker_connections"] - before["wsbroker_connections"]); second > 0 {
		res.RSSMarginal = (after["process_resident_memory_bytes"] - mid["process_resident_memory_bytes"]) / second
		res.HeapMarginal = (after["go_memstats_heap_inuse_bytes"] - mid["go_memstats_heap_inuse_bytes"]) / second
	}
	if *fanout > 0 {
		if err := fanOut(conns, *fanout, *gap, *quiet, &res); err != nil {
			return err
		}
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// wsConn is a client connection with the reader the dial left buffered.
type wsConn struct {
	net.Conn
	rw io.ReadWriter
	// rx holds the kernel receive time of the last bytes read (nil where
	// the socket cannot give one).
	rx *rxStampReader
}

func dialWS(dl *dialer, rawURL, tok string) (*wsConn, error) {
	d := ws.Dialer{
		Protocols: []string{"wsbroker.v1", "bearer." + tok},
		Timeout:   10 * time.Second,
		NetDial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dl.dial(ctx, addr)
		},
	}
	c, br, _, err := d.Dial(context.Background(), rawURL)
	if err != nil {
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	rx, err := enableRxStamps(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("SO_TIMESTAMPNS: %w", err)
	}
	var r io.Reader = c
	if rx != nil {
		r = rx
	}
	if br != nil && br.Buffered() > 0 {
		// Bytes the server sent right behind its 101.
		b, _ := br.Peek(br.Buffered())
		r = io.MultiReader(bytes.NewReader(b), r)
	}
	return &wsConn{Conn: c, rx: rx, rw: struct {
		io.Reader
		io.Writer
	}{bufio.NewReaderSize(r, 512), c}}, nil
}

// fanOut subscribes every connection to "bench", waits for every ack and
// then for quiet, then publishes msgs messages from the first connection,
// each carrying its send time in nanoseconds, and records when each
// subscriber received each.
func fanOut(conns []*wsConn, msgs int, gap, quiet time.Duration, res *holdResult) error {
	n := len(conns)
	var acked sync.WaitGroup
	acked.Add(n)
	recv := make([][]time.Duration, n)
	// arrived: the same deliveries timed at the kernel's receive
	// timestamp of the subscriber's socket (SO_TIMESTAMPNS).
	arrived := make([][]time.Duration, n)
	var failed atomic.Int64
	var firstErr atomic.Value
	var done sync.WaitGroup
	for i, c := range conns {
		recv[i] = make([]time.Duration, 0, msgs)
		arrived[i] = make([]time.Duration, 0, msgs)
		done.Add(1)
		go func() {
			defer done.Done()
			ackSeen := false
			defer func() {
				if !ackSeen {
					acked.Done()
				}
			}()
			for len(recv[i]) < msgs {
				_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
				data, err := wsutil.ReadServerText(c.rw)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				at := time.Now()
				if !ackSeen && bytes.Contains(data, []byte(`"ack"`)) {
					ackSeen = true
					acked.Done()
					continue
				}
				sent, ok := dataField(data)
				if !ok {
					continue // the publisher's acks
				}
				recv[i] = append(recv[i], at.Sub(time.Unix(0, sent)))
				if c.rx != nil {
					if ts := c.rx.last.Load(); ts != 0 {
						arrived[i] = append(arrived[i], time.Duration(ts-sent))
					}
				}
			}
		}()
	}
	for i, c := range conns {
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := wsutil.WriteClientText(c, []byte(`{"type":"subscribe","channel":"bench","id":1}`)); err != nil {
			return fmt.Errorf("subscribe %d: %w", i, err)
		}
	}
	ackc := make(chan struct{})
	go func() { acked.Wait(); close(ackc) }()
	select {
	case <-ackc:
	case <-time.After(60 * time.Second):
		return errors.New("fan-out: not every subscribe was acknowledged within 60s")
	}
	time.Sleep(quiet)
	pub := conns[0]
	for range msgs {
		msg := fmt.Sprintf(`{"type":"publish","channel":"bench","id":2,"data":%d}`, time.Now().UnixNano())
		_ = pub.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := wsutil.WriteClientText(pub, []byte(msg)); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		time.Sleep(gap)
	}
	done.Wait()
	var all []time.Duration
	// worst[m] is the latest delivery of message m: the burst's length.
	worst := make([]time.Duration, msgs)
	for _, r := range recv {
		for m, d := range r {
			worst[m] = max(worst[m], d)
		}
		all = append(all, r...)
	}
	if len(all) == 0 {
		return fmt.Errorf("fan-out: no delivery (%d subscribers failed: %v)", failed.Load(), firstErr.Load())
	}
	slices.Sort(all)
	slices.Sort(worst)
	res.FanoutMessages = msgs
	res.Deliveries = len(all)
	res.FanoutMissing = n*msgs - len(all)
	if v, _ := firstErr.Load().(string); v != "" {
		res.FanoutFirstFail = v
	}
	res.P50Millis = ms(all[len(all)/2])
	res.P99Millis = ms(all[len(all)*99/100])
	res.MaxMillis = ms(all[len(all)-1])
	var at []time.Duration
	for _, r := range arrived {
		at = append(at, r...)
	}
	if len(at) > 0 {
		slices.Sort(at)
		res.SocketP50Millis = ms(at[len(at)/2])
		res.SocketP99Millis = ms(at[len(at)*99/100])
		res.SocketMaxMillis = ms(at[len(at)-1])
	}
	// Deliveries/s within one burst: subscribers over the time to the last
	// delivery of a message, median over the messages.
	if w := worst[len(worst)/2]; w > 0 {
		res.DeliveriesPerS = float64(n) / w.Seconds()
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// dataField returns the integer "data" of a "message" frame.
func dataField(b []byte) (int64, bool) {
	if !bytes.Contains(b, []byte(`"message"`)) {
		return 0, false
	}
	_, rest, ok := bytes.Cut(b, []byte(`"data":`))
	if !ok {
		return 0, false
	}
	end := bytes.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(rest)
	}
	v, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	return v, err == nil
}

// scrape reads the gauges it needs from a Prometheus text /metrics (both
// servers publish these names).
func scrape(u string) (map[string]float64, error) {
	resp, err := http.Get(u)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", u, resp.Status)
	}
	want := map[string]bool{
		"wsbroker_connections": true, "process_resident_memory_bytes": true,
		"go_memstats_heap_inuse_bytes": true, "go_memstats_stack_inuse_bytes": true, "go_goroutines": true,
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || !want[f[0]] {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			out[f[0]] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	return out, nil
}
