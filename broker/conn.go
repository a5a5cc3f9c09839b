package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker/poller"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// Close codes of the broker beyond RFC 6455's (4000-4999 is private use).
const (
	// CloseTokenExpired closes a connection whose token expired unrefreshed.
	CloseTokenExpired ws.StatusCode = 4001
	// CloseSlowConsumer closes a connection whose send queue overflowed.
	CloseSlowConsumer ws.StatusCode = 4008
	// CloseIdle closes a connection silent for longer than the idle timeout.
	CloseIdle ws.StatusCode = 4000
)

// Conn is one accepted WebSocket connection. While idle it holds no
// goroutine and no read buffer: the poller calls onReadable when bytes
// arrive, and frames are written by the shared writer pool.
type Conn struct {
	s    *Server
	id   uint64
	nc   net.Conn
	desc *poller.Desc
	// opened is the accept time in Unix nanoseconds (a time.Time is 24
	// bytes; the Conn is kept small, see docs/benchmarks.md).
	opened  int64
	subject string

	// mu guards the fields below it, up to wmu.
	mu sync.Mutex
	// expDue (Unix nanoseconds) and expIdx are the connection's place in the
	// server's expiry heap (guarded by its lock); expIdx is -1 outside it.
	expDue int64
	expIdx int32
	pinged atomic.Bool

	source   authn.Source
	protocol bool
	// blocking is set when the connection has a reader goroutine of its own
	// (not an epoll socket: TLS, in-memory); its reads then wait for data.
	blocking bool
	writing  bool
	closed   bool

	// perms is shared by connections with the same claims; nil grants
	// nothing.
	perms *permissions
	subs  map[string]struct{}
	queue [][]byte
	// frag collects a fragmented message (reader only); nil between
	// messages.
	frag     *fragment
	lastRead atomic.Int64 // unix nanoseconds

	// wmu serializes writes to nc (flushes and control frames).
	wmu     sync.Mutex
	hdr     [14]byte // frame header being read (reader only)
	ping    [2]byte  // server ping frame (sweep only)
	msgsIn  atomic.Uint64
	msgsOut atomic.Uint64
}

// fragment is a message whose frames are still arriving.
type fragment struct {
	b  []byte
	op ws.OpCode
}

// openedAt returns the accept time.
func (c *Conn) openedAt() time.Time { return time.Unix(0, c.opened) }

// open registers the connection of an accepted handshake and starts
// watching it.
func (s *Server) open(h *handshake) {
	c := &Conn{
		s:        s,
		expIdx:   -1,
		id:       s.connSeq.Add(1),
		nc:       h.conn,
		opened:   s.now().UnixNano(),
		subject:  h.principal.Subject,
		source:   h.source,
		protocol: h.selected,
	}
	c.lastRead.Store(c.opened)
	if s.cfg.SocketSendBuffer > 0 {
		setSendBuffer(c.nc, s.cfg.SocketSendBuffer)
	}
	// Keep the socket, not the net.Conn (see fdConn).
	c.nc = detachConn(c.nc)
	c.perms = s.permissionsOf(&h.principal)
	e := s.getEvent()
	e.Type = event.TypeConnectionOpened
	e.Reason, e.Source, e.Status = authn.ReasonNone, h.source, 101
	e.RemoteIP = h.remote
	e.ConnID, e.Subject = c.id, c.subject
	if c.protocol {
		e.Subprotocol = authn.Protocol
	}
	e.TokenExpiry = eventExpiry(h.principal.ExpiresAt)
	e.Duration = s.now().Sub(h.start)
	h.traceEvent(e)

	if s.testHookOpen != nil {
		s.testHookOpen()
	}
	s.mu.Lock()
	full := s.limitLocked(c.subject)
	if s.closing || full != "" {
		// Lost a race with shutdown or a limit between authentication and
		// registration: refuse after the fact. The client saw the 101.
		closing := s.closing
		s.mu.Unlock()
		if !closing {
			// Recorded as the refusal it is, with the close code and text
			// of reject mode close (4429 connection_limit), so that
			// metrics, events and traces count it with the other
			// connection_limit refusals instead of losing it.
			s.putEvent(e)
			h.reason, h.verdict.Detail = authn.ReasonConnectionLimit, full+" (reached after authentication)"
			h.conn = c.nc // the socket detached above
			h.writeRejectionClose()
			h.conn.Close() // it may have moved (waitable)
			e = s.getEvent()
			h.rejectionEvent(e, int(CloseCode(h.reason)), h.requestID())
			e.Duration = s.now().Sub(h.start)
			h.traceEvent(e)
			s.emit(context.Background(), e)
			s.putEvent(e)
			return
		}
		// The client saw the 101: record the connection and its shutdown
		// close, like those the drain closed (handle runs under s.wg, so
		// this precedes node.stopped).
		code := ws.StatusGoingAway
		s.emit(context.Background(), e)
		e.Type = event.TypeConnectionClosed
		e.CloseReason, e.CloseCode = event.CloseServerShutdown, uint16(code)
		e.Duration, e.Time = s.now().Sub(c.openedAt()), time.Time{}
		s.emit(context.Background(), e)
		s.putEvent(e)
		_ = ws.WriteFrame(c.nc, ws.NewCloseFrame(ws.NewCloseFrameBody(code, "server shutting down")))
		c.nc.Close()
		return
	}
	s.conns[c.id] = c
	s.bySubject[c.subject]++
	s.connWG.Add(1)
	s.mu.Unlock()

	s.emit(context.Background(), e)
	s.putEvent(e)
	c.armExpiry(h.principal.ExpiresAt)
	d, err := s.poller.Add(c.nc, c.onReadable)
	if errors.Is(err, poller.ErrUnsupportedConn) {
		// Not a socket epoll can watch (e.g. a TLS or in-memory conn).
		c.blocking = true
		d, err = s.poller.AddBlocking(c.nc, c.onReadable)
	}
	if err != nil {
		c.close(event.CloseServerShutdown, ws.StatusGoingAway, "server shutting down")
		return
	}
	c.mu.Lock()
	c.desc = d
	closed := c.closed
	c.mu.Unlock()
	if closed {
		_ = s.poller.Remove(d)
	}
}

// admit checks the connection limits before the upgrade completes: "" when
// subject may connect, else which limit is reached (the rejection's detail).
func (s *Server) admit(subject string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limitLocked(subject)
}

// limitLocked is admit with s.mu held.
func (s *Server) limitLocked(subject string) string {
	if len(s.conns) >= s.cfg.MaxConns {
		return "max-conns " + strconv.Itoa(s.cfg.MaxConns) + " connections open on this node"
	}
	if s.cfg.MaxConnsPerSubject > 0 && s.bySubject[subject] >= s.cfg.MaxConnsPerSubject {
		return "max-conns-per-subject " + strconv.Itoa(s.cfg.MaxConnsPerSubject) + " connections open for this subject"
	}
	return ""
}

// armExpiry schedules the token_expired close at exp + leeway.
func (c *Conn) armExpiry(exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if exp.IsZero() || c.closed {
		return
	}
	c.s.expiries.set(c, unixNanoSat(exp.Add(c.s.cfg.ExpiryLeeway)))
}

// payloadPool holds read buffers; a buffer is only held while a frame is
// being handled.
var payloadPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// onReadable reads and handles one frame (poller handler).
func (c *Conn) onReadable(_ *poller.Desc, _ poller.Event) bool {
	if c.blocking {
		// Wait for the next frame as long as the idle timeout allows; the
		// sweep closes the connection when it passes.
		_ = c.nc.SetReadDeadline(time.Time{})
	} else {
		_ = c.nc.SetReadDeadline(c.s.now().Add(c.s.cfg.FrameTimeout))
	}
	hdr, err := c.readHeader()
	if c.blocking {
		_ = c.nc.SetReadDeadline(c.s.now().Add(c.s.cfg.FrameTimeout))
	}
	if err != nil {
		c.readFailed(err)
		return false
	}
	c.lastRead.Store(c.s.now().UnixNano())
	c.pinged.Store(false)
	if hdr.Length > int64(c.s.cfg.MaxMessageSize) || c.fragLen()+hdr.Length > int64(c.s.cfg.MaxMessageSize) {
		c.close(event.CloseMessageTooLarge, ws.StatusMessageTooBig, "message_too_large")
		return false
	}
	if !hdr.Masked || hdr.Rsv != 0 {
		c.close(event.CloseProtocolError, ws.StatusProtocolError, "protocol_error: unmasked or reserved bits")
		return false
	}
	bp := payloadPool.Get().(*[]byte)
	defer payloadPool.Put(bp)
	// Two bytes of room before the payload let a pong reuse the buffer.
	if int64(cap(*bp)) < hdr.Length+2 {
		*bp = make([]byte, 0, hdr.Length+2)
	}
	buf := (*bp)[:hdr.Length+2]
	if _, err := io.ReadFull(c.nc, buf[2:]); err != nil {
		c.readFailed(err)
		return false
	}
	ws.Cipher(buf[2:], hdr.Mask, 0)
	return c.handleFrame(hdr, buf)
}

// readHeader parses a frame header straight from the socket into c.hdr
// (gobwas/ws's ReadHeader allocates its buffer per call).
// fragLen is the length of the fragmented message collected so far.
func (c *Conn) fragLen() int64 {
	if c.frag == nil {
		return 0
	}
	return int64(len(c.frag.b))
}

func (c *Conn) readHeader() (ws.Header, error) {
	var h ws.Header
	b := c.hdr[:2]
	if _, err := io.ReadFull(c.nc, b); err != nil {
		return h, err
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	n := int64(b[1] & 0x7f)
	extra := 0
	switch n {
	case 126:
		extra = 2
	case 127:
		extra = 8
	}
	if h.Masked {
		extra += 4
	}
	if extra > 0 {
		x := c.hdr[2 : 2+extra]
		if _, err := io.ReadFull(c.nc, x); err != nil {
			return h, err
		}
		switch n {
		case 126:
			n = int64(binary.BigEndian.Uint16(x))
			x = x[2:]
		case 127:
			u := binary.BigEndian.Uint64(x)
			if u > 1<<62 {
				return h, ws.ErrHeaderLengthUnexpected
			}
			n = int64(u)
			x = x[8:]
		}
		if h.Masked {
			copy(h.Mask[:], x)
		}
	}
	h.Length = n
	return h, nil
}

func (c *Conn) readFailed(err error) {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		c.close(event.CloseClientClosed, ws.StatusNoStatusRcvd, "")
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.close(event.CloseReadError, ws.StatusPolicyViolation, "read_error: frame not completed in time")
	case errors.Is(err, ws.ErrHeaderLengthUnexpected):
		c.close(event.CloseProtocolError, ws.StatusProtocolError, "protocol_error")
	default:
		c.close(event.CloseReadError, ws.StatusAbnormalClosure, "")
	}
}

// handleFrame acts on one unmasked frame whose payload is buf[2:]; it
// returns whether to keep reading.
func (c *Conn) handleFrame(h ws.Header, buf []byte) bool {
	p := buf[2:]
	switch h.OpCode {
	case ws.OpPing:
		if !h.Fin || len(p) > 125 {
			c.close(event.CloseProtocolError, ws.StatusProtocolError, "protocol_error")
			return false
		}
		c.writeControl(ws.OpPong, buf)
		return true
	case ws.OpPong:
		return true
	case ws.OpClose:
		code, _ := ws.ParseCloseFrameData(p)
		if code == 0 {
			code = ws.StatusNormalClosure
		}
		c.close(event.CloseClientClosed, code, "")
		return false
	case ws.OpText, ws.OpBinary:
		if c.frag != nil {
			c.close(event.CloseProtocolError, ws.StatusProtocolError, "protocol_error: new message inside a fragmented one")
			return false
		}
		if !h.Fin {
			c.frag = &fragment{b: append(make([]byte, 0, len(p)*2), p...), op: h.OpCode}
			return true
		}
		c.message(h.OpCode, p)
	case ws.OpContinuation:
		if c.frag == nil {
			c.close(event.CloseProtocolError, ws.StatusProtocolError, "protocol_error: continuation without a message")
			return false
		}
		c.frag.b = append(c.frag.b, p...)
		if !h.Fin {
			return true
		}
		msg, op := c.frag.b, c.frag.op
		c.frag = nil
		c.message(op, msg)
	default:
		c.close(event.CloseProtocolError, ws.StatusProtocolError, "protocol_error: unknown opcode")
		return false
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	return !closed
}

// message handles a complete data message.
func (c *Conn) message(op ws.OpCode, p []byte) {
	c.msgsIn.Add(1)
	c.s.metrics.Message(telemetry.In, len(p))
	if op != ws.OpText {
		c.sendError(nil, 400, "bad_request", "wsbroker.v1 messages are JSON text frames")
		return
	}
	c.s.handleMessage(c, p)
}

// writeControl writes a control frame at once (pongs and pings skip the
// data queue). frame holds two free bytes for the header followed by the
// payload (at most 125 bytes), so the frame goes out in one write without
// allocating.
func (c *Conn) writeControl(op ws.OpCode, frame []byte) {
	frame[0], frame[1] = 0x80|byte(op), byte(len(frame)-2)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.nc.SetWriteDeadline(c.s.now().Add(c.s.cfg.WriteTimeout))
	if _, err := c.nc.Write(frame); err != nil {
		go c.close(event.CloseWriteError, ws.StatusAbnormalClosure, "")
	}
}

// send queues an encoded frame; a full queue closes the connection as a
// slow consumer. It never blocks.
func (c *Conn) send(frame []byte) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) >= c.s.cfg.SendQueue {
		c.mu.Unlock()
		c.s.metrics.Dropped(telemetry.DropSlowConsumer)
		go c.close(event.CloseSlowConsumer, CloseSlowConsumer, "slow_consumer")
		return false
	}
	c.queue = append(c.queue, frame)
	schedule := !c.writing
	c.writing = true
	c.mu.Unlock()
	if schedule {
		c.s.writers.schedule(c)
	}
	return true
}

// flush writes the queued frames (writer pool).
func (c *Conn) flush() {
	for {
		c.mu.Lock()
		batch := c.queue
		c.queue = nil
		if len(batch) == 0 || c.closed {
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.wmu.Lock()
		_ = c.nc.SetWriteDeadline(c.s.now().Add(c.s.cfg.WriteTimeout))
		n := 0
		for _, f := range batch {
			n += len(f)
		}
		var err error
		if bw, ok := c.nc.(buffersWriter); ok {
			_, err = bw.writeBuffers(batch)
		} else {
			bufs := net.Buffers(batch)
			_, err = bufs.WriteTo(c.nc)
		}
		c.wmu.Unlock()
		if err != nil {
			c.mu.Lock()
			c.writing = false
			c.mu.Unlock()
			c.close(event.CloseWriteError, ws.StatusAbnormalClosure, "")
			return
		}
		c.msgsOut.Add(uint64(len(batch)))
	}
}

// buffersWriter writes several frames with one system call (fdConn).
type buffersWriter interface {
	writeBuffers(bufs [][]byte) (int64, error)
}

// close ends the connection once: it stops watching the socket, leaves every
// channel, writes a close frame (best effort), closes the socket and emits
// connection.closed.
func (c *Conn) close(reason event.CloseReason, code ws.StatusCode, text string) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.queue = nil
	subs := c.subs
	c.subs = nil
	d := c.desc
	c.mu.Unlock()
	c.s.expiries.remove(c)
	if d != nil {
		if soleDescriptor(c.nc) {
			_ = c.s.poller.RemoveClosing(d) // closed below
		} else {
			_ = c.s.poller.Remove(d)
		}
	}
	for ch := range subs {
		c.s.hub.unsubscribe(c, ch, false)
	}
	// Abort a flush stuck on a slow peer, then write the close frame,
	// unless the connection is already gone: 1005 (the peer shut its side
	// without a close frame) and 1006 (a read or write failed: reset,
	// broken pipe, timeout) mean there is no one to read it, and the write
	// would be one more system call for every client that vanishes.
	_ = c.nc.SetWriteDeadline(c.s.now())
	c.wmu.Lock()
	if code != ws.StatusNoStatusRcvd && code != ws.StatusAbnormalClosure {
		_ = c.nc.SetWriteDeadline(closeFrameDeadline(c.nc, c.s.now()))
		_ = ws.WriteFrame(c.nc, ws.NewCloseFrame(ws.NewCloseFrameBody(code, text)))
	}
	c.wmu.Unlock()
	c.nc.Close()

	s := c.s
	s.mu.Lock()
	delete(s.conns, c.id)
	if n := s.bySubject[c.subject] - 1; n > 0 {
		s.bySubject[c.subject] = n
	} else {
		delete(s.bySubject, c.subject)
	}
	s.mu.Unlock()

	e := s.getEvent()
	e.Type = event.TypeConnectionClosed
	e.ConnID, e.Subject, e.Source = c.id, c.subject, c.source
	e.CloseReason, e.CloseCode = reason, uint16(code)
	e.Duration = s.now().Sub(c.openedAt())
	e.MsgsIn, e.MsgsOut = c.msgsIn.Load(), c.msgsOut.Load()
	s.emit(context.Background(), e)
	s.putEvent(e)
	s.connWG.Done()
}

// sweep pings quiet connections and closes idle ones.
func (s *Server) sweep() {
	defer s.wg.Done()
	tick := min(s.cfg.PingInterval/2, time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	var batch []*Conn
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		now := s.now()
		batch = batch[:0]
		s.mu.Lock()
		for _, c := range s.conns {
			batch = append(batch, c)
		}
		s.mu.Unlock()
		for _, c := range batch {
			quiet := now.Sub(time.Unix(0, c.lastRead.Load()))
			switch {
			case quiet >= s.cfg.IdleTimeout:
				c.close(event.CloseIdleTimeout, CloseIdle, "idle_timeout")
			case quiet >= s.cfg.PingInterval && !c.pinged.Load():
				c.pinged.Store(true)
				c.writeControl(ws.OpPing, c.ping[:])
			}
		}
	}
}

// writerPool runs flushes on a bounded set of goroutines.
type writerPool struct {
	tasks chan *Conn
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

func newWriterPool(n int) *writerPool {
	if n <= 0 {
		n = 8
	}
	p := &writerPool{tasks: make(chan *Conn, 4096), done: make(chan struct{})}
	for range n {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for {
				select {
				case c := <-p.tasks:
					c.flush()
				case <-p.done:
					return
				}
			}
		}()
	}
	return p
}

func (p *writerPool) schedule(c *Conn) {
	select {
	case p.tasks <- c:
	case <-p.done:
	}
}

func (p *writerPool) close() {
	p.once.Do(func() { close(p.done) })
	p.wg.Wait()
}

// maxEventTime is the latest time an event can carry: RFC 3339 has four
// digits for the year.
var maxEventTime = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// eventExpiry is a token's expiry as events carry it: a token may say it
// expires after the year 9999 (exp is any number), which no event could
// encode; it is recorded as the last second of 9999.
func eventExpiry(t time.Time) time.Time {
	if t.After(maxEventTime) {
		return maxEventTime
	}
	return t
}
