package broker

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
	"github.com/wsbroker/wsbroker/telemetry/tracing"
)

var (
	errHandshakeTooLarge = errors.New("handshake larger than max-handshake-bytes")
	// errRejected tells the upgrader to refuse; the response it would write
	// is swallowed and ours is written instead (see hsConn).
	errRejected = ws.RejectConnectionError(ws.RejectionStatus(http.StatusUnauthorized))
	errNotFound = ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound), ws.RejectionReason("not found: WebSocket upgrades are served on the configured ws-path only"))
)

// hsConn is the connection as the upgrader sees it: reads are bounded by the
// handshake size budget, and writes are dropped once the handshake is
// refused by authentication so that the rejection we write ourselves (JSON
// body, WWW-Authenticate) is the only response on the wire.
type hsConn struct {
	h         *handshake
	c         net.Conn
	remaining int
	swallow   bool
	tooLarge  bool
}

// Read reads the request for the upgrader. A socket the broker accepted
// itself (fdConn) is read without waiting: when the request is not all
// there yet, the socket moves to Go's network poller (waitable) for the
// rest, so that a slow client holds a parked goroutine, not a thread
// blocked in poll(2).
func (h *hsConn) Read(p []byte) (int, error) {
	if h.remaining <= 0 {
		h.tooLarge = true
		return 0, errHandshakeTooLarge
	}
	if len(p) > h.remaining {
		p = p[:h.remaining]
	}
	n, err := readNow(h.c, p)
	if err == errWouldBlock {
		if err = h.h.waitable(); err == nil {
			n, err = h.c.Read(p)
		}
	}
	h.remaining -= n
	return n, err
}

func (h *hsConn) Write(p []byte) (int, error) {
	if h.swallow {
		return len(p), nil
	}
	return h.c.Write(p)
}

// handshake is the pooled state of one upgrade. Its upgrader's callbacks
// are bound to it once, so an upgrade allocates no closures.
type handshake struct {
	s     *Server
	conn  net.Conn
	peer  netip.Addr // from the accept, or conn's remote address
	hc    hsConn
	req   *authn.Request
	ext   authn.Extraction
	up    ws.Upgrader
	start time.Time

	badPath   bool
	remote    netip.Addr
	reason    authn.Reason
	source    authn.Source
	principal authn.Principal
	verdict   authn.Verdict
	selected  bool // wsbroker.v1 selected in the response
	respHdr   []byte
	// Trace of the upgrade: the ids are picked when the headers are read,
	// the spans are built from the event only if the trace is kept.
	rid        string // request id, once one is needed
	sc         trace.SpanContext
	parent     trace.SpanContext
	kept       bool
	authStart  time.Time
	extractEnd time.Time
	verifyEnd  time.Time
}

func newHandshake(s *Server) *handshake {
	h := &handshake{s: s, req: authn.NewRequest(s.cfg.MaxHandshakeBytes)}
	h.up = ws.Upgrader{
		OnRequest:       h.onRequest,
		OnHost:          h.onHost,
		OnHeader:        h.onHeader,
		ProtocolCustom:  h.onProtocol,
		OnBeforeUpgrade: h.onBeforeUpgrade,
	}
	return h
}

func (h *handshake) reset(a accepted) {
	h.conn, h.peer = a.c, a.peer
	if !h.peer.IsValid() {
		if ta, ok := a.c.RemoteAddr().(*net.TCPAddr); ok {
			h.peer = ta.AddrPort().Addr().Unmap()
		}
	}
	h.hc = hsConn{h: h, c: a.c, remaining: h.s.cfg.MaxHandshakeBytes}
	h.req.Reset()
	h.start = h.s.now()
	h.badPath = false
	h.remote = netip.Addr{}
	h.reason, h.source = authn.ReasonNone, authn.SourceNone
	h.principal, h.verdict = authn.Principal{}, authn.Verdict{}
	h.selected = false
	h.respHdr = h.respHdr[:0]
	h.rid = ""
	h.sc, h.parent, h.kept = trace.SpanContext{}, trace.SpanContext{}, false
	h.authStart, h.extractEnd, h.verifyEnd = time.Time{}, time.Time{}, time.Time{}
}

// deadline is when the handshake must be done.
func (h *handshake) deadline() time.Time { return h.start.Add(h.s.cfg.HandshakeTimeout) }

// waitable moves the handshake's socket to a connection that waits on Go's
// network poller (see hsConn.Read), keeping the handshake's deadline.
func (h *handshake) waitable() error {
	nc, err := waitable(h.conn)
	if err != nil {
		return err
	}
	if nc != h.conn {
		h.s.waited.Add(1)
		_ = nc.SetDeadline(h.deadline())
		h.conn, h.hc.c = nc, nc
	}
	return nil
}

func (h *handshake) onRequest(uri []byte) error {
	h.req.SetURI(uri)
	path := uri
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		path = uri[:i]
	}
	if string(path) != h.s.cfg.WSPath {
		h.badPath = true
		return errNotFound
	}
	return nil
}

func (h *handshake) onHost(host []byte) error {
	h.req.SetHost(host)
	return nil
}

func (h *handshake) onHeader(key, value []byte) error {
	h.req.AddHeader(key, value)
	return nil
}

// onProtocol captures every Sec-WebSocket-Protocol line and selects none:
// selection waits for authentication, and the response header is written
// by onBeforeUpgrade, so a token entry can never be echoed.
func (h *handshake) onProtocol(v []byte) (string, bool) {
	h.req.AddProtocols(v)
	return "", true
}

func (h *handshake) onBeforeUpgrade() (ws.HandshakeHeader, error) {
	if h.req.Full() {
		h.hc.tooLarge = true
		return nil, errHandshakeTooLarge
	}
	h.authenticate()
	h.kept = h.sc.IsValid() && h.s.keepTrace(h.sc, h.reason)
	if h.reason != authn.ReasonNone && h.s.cfg.RejectMode == RejectHTTP {
		h.hc.swallow = true
		return nil, errRejected
	}
	// Accepted, or refused in close mode: the upgrade completes.
	if h.reason != authn.ReasonNone {
		// Close mode: the close frame carries the reason for a browser;
		// the headers carry it, and the id to search for, for the rest.
		h.rid = h.requestID()
		h.respHdr = append(h.respHdr, "X-Request-Id: "...)
		h.respHdr = append(h.respHdr, h.rid...)
		h.respHdr = append(h.respHdr, "\r\nX-Wsbroker-Reason: "...)
		h.respHdr = append(h.respHdr, h.reason.String()...)
		h.respHdr = append(h.respHdr, "\r\n"...)
	}
	h.selected = h.ext.ProtocolOffered
	if h.selected {
		h.respHdr = append(h.respHdr, "Sec-WebSocket-Protocol: "+authn.Protocol+"\r\n"...)
	}
	if h.kept {
		h.respHdr = append(h.respHdr, "X-Trace-Id: "...)
		var tid [32]byte
		h.respHdr = append(h.respHdr, hexTrace(tid[:], h.sc.TraceID())...)
		h.respHdr = append(h.respHdr, "\r\n"...)
	}
	return ws.HandshakeHeaderBytes(h.respHdr), nil
}

func hexTrace(dst []byte, id trace.TraceID) []byte {
	hex.Encode(dst, id[:])
	return dst
}

// authenticate runs extract → verify → policy and sets h.reason.
func (h *handshake) authenticate() {
	s := h.s
	h.remote = s.clientAddr(h.peer, h.req.ForwardedFor())
	if s.traces != nil {
		h.authStart = s.now()
		if tp := h.req.Traceparent(); len(tp) > 0 {
			h.parent = trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), traceCarrier{tp: string(tp)}))
		}
		h.sc = tracing.NewIDs(h.parent)
	}
	if s.failures.limited(h.remote, h.start) {
		h.reason = authn.ReasonRateLimited
		return
	}

	s.ex.Extract(h.req, &h.ext)
	h.reason, h.source = h.ext.Reason, h.ext.Source
	t0 := s.now()
	h.extractEnd = t0
	if h.reason != authn.ReasonNone {
		return
	}

	h.principal, h.verdict = s.ver.Verify(context.Background(), h.ext.Token)
	h.verifyEnd = s.now()
	s.metrics.VerifyDuration(h.verdict.Alg, h.verifyEnd.Sub(t0))
	h.reason = h.verdict.Reason
	if h.reason != authn.ReasonNone {
		return
	}

	// Policy.
	if full := s.admit(h.principal.Subject); full != "" {
		h.reason, h.verdict.Detail = authn.ReasonConnectionLimit, full
		return
	}
	origin := h.req.Origin()
	switch {
	case h.source == authn.SourceCookie && (len(origin) == 0 || !s.origins.Allowed(origin)):
		// A cookie rides along on any cross-site request: without an
		// allowed Origin it proves nothing (Cross-Site WebSocket Hijacking).
		h.reason = authn.ReasonOriginNotAllowed
	case len(origin) > 0 && !s.origins.Empty() && !s.origins.Allowed(origin):
		h.reason = authn.ReasonOriginNotAllowed
	}
}

type traceCarrier struct{ tp string }

func (c traceCarrier) Get(key string) string {
	if key == "traceparent" {
		return c.tp
	}
	return ""
}
func (c traceCarrier) Set(string, string) {}
func (c traceCarrier) Keys() []string     { return []string{"traceparent"} }

// traceEvent stamps e with the upgrade's trace ids and, when the trace is
// kept, with what its spans are built from.
func (h *handshake) traceEvent(e *event.Event) {
	if !h.sc.IsValid() {
		return
	}
	e.TraceID, e.SpanID = h.sc.TraceID(), h.sc.SpanID()
	failed := e.Type == event.TypeUpgradeRejected
	e.Sampled = h.kept
	if !e.Sampled {
		return
	}
	t := &e.Trace
	t.Parent = h.parent
	t.Start, t.AuthStart, t.ExtractEnd, t.VerifyEnd = h.start, h.authStart, h.extractEnd, h.verifyEnd
	t.Host = string(h.req.Host())
	if q := bytes.IndexByte(h.req.URI(), '?'); q >= 0 {
		t.Query = h.s.redactor.URI(h.req.URI()[q:])[1:]
	}
	t.Checks, t.NChecks = h.ext.Checks, uint8(h.ext.NChecks)
	t.ProtocolOffered = h.ext.ProtocolOffered
	t.ExtractSource, t.ExtractReason = h.ext.Source, h.ext.Reason
	t.VerifyReason = h.verdict.Reason
	if !failed {
		e.Path = h.s.redactor.URI(h.req.URI())
		e.UserAgent = redact.Text(string(h.req.UserAgent()))
	}
}

// requestID names the attempt in responses, logs and events: the trace id
// when traced, so that the id a user reports finds the trace.
func (h *handshake) requestID() string {
	if h.sc.IsValid() {
		return h.sc.TraceID().String()
	}
	return strconv.FormatUint(h.s.seq.Add(1), 36) + "-" + h.s.cfg.Node
}

// rejectionBody is the JSON body of a refused handshake.
type rejectionBody struct {
	Error     string `json:"error"`
	Reason    string `json:"reason"`
	Hint      string `json:"hint,omitempty"`
	RequestID string `json:"request_id"`
}

// writeRejection writes the HTTP answer of a refused handshake.
func (h *handshake) writeRejection(requestID string) {
	r := h.reason
	status := r.Status()
	body, _ := json.Marshal(rejectionBody{
		Error:     "authentication failed: " + r.Description() + ". Fix: " + r.Hint(),
		Reason:    r.String(),
		Hint:      r.Hint(),
		RequestID: requestID,
	})
	var b bytes.Buffer
	b.Grow(512 + len(body))
	b.WriteString("HTTP/1.1 ")
	b.WriteString(strconv.Itoa(status))
	b.WriteByte(' ')
	b.WriteString(http.StatusText(status))
	b.WriteString("\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: ")
	b.WriteString(strconv.Itoa(len(body)))
	b.WriteString("\r\nX-Request-Id: ")
	b.WriteString(requestID)
	b.WriteString("\r\nX-Wsbroker-Reason: ")
	b.WriteString(r.String())
	b.WriteString("\r\n")
	if h.kept {
		b.WriteString("X-Trace-Id: ")
		b.WriteString(h.sc.TraceID().String())
		b.WriteString("\r\n")
	}
	if status == http.StatusUnauthorized || r.BearerError() != "" {
		b.WriteString(`WWW-Authenticate: Bearer realm="`)
		b.WriteString(h.s.cfg.Realm)
		b.WriteByte('"')
		if e := r.BearerError(); e != "" {
			b.WriteString(`, error="`)
			b.WriteString(e)
			b.WriteString(`", error_description="`)
			b.WriteString(r.String())
			b.WriteString(": ")
			b.WriteString(quoteSafe(r.Description()))
			b.WriteByte('"')
		}
		b.WriteString("\r\n")
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		b.WriteString("Retry-After: 5\r\n")
	}
	b.WriteString("\r\n")
	b.Write(body)
	_, _ = h.conn.Write(b.Bytes())
}

// quoteSafe drops characters RFC 6750 forbids in error_description
// (%x20-21 / %x23-5B / %x5D-7E: no quote, no backslash).
func quoteSafe(s string) string {
	b := []byte(s)
	n := 0
	for _, c := range b {
		if c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' && c != '`' {
			b[n] = c
			n++
		}
	}
	return string(b[:n])
}

// CloseCode is the close code of a rejection in close mode: 4000 + the
// HTTP status the HTTP mode would have sent (4401, 4400, 4403, 4429, 4431,
// 4503).
func CloseCode(r authn.Reason) ws.StatusCode { return ws.StatusCode(4000 + r.Status()) }

// writeRejectionClose closes an upgraded connection at once with the
// reason (reject mode close).
func (h *handshake) writeRejectionClose() {
	body := ws.NewCloseFrameBody(CloseCode(h.reason), h.reason.String())
	_ = ws.WriteFrame(h.conn, ws.NewCloseFrame(body))
	// Wait (a second at most) for the client's close frame so that it sees a
	// clean close rather than a reset, and no longer than that frame.
	if h.waitable() != nil {
		return
	}
	_ = h.conn.SetReadDeadline(h.s.now().Add(time.Second))
	for range 4 {
		hdr, err := ws.ReadHeader(h.conn)
		if err != nil || hdr.Length > 125 {
			return
		}
		if _, err := io.CopyN(io.Discard, h.conn, hdr.Length); err != nil || hdr.OpCode == ws.OpClose {
			return
		}
	}
}

// rejectionEvent fills e for a refused upgrade.
func (h *handshake) rejectionEvent(e *event.Event, status int, requestID string) {
	e.Type = event.TypeUpgradeRejected
	e.Reason, e.Source, e.Status = h.reason, h.source, status
	e.RemoteIP = h.remote
	e.Origin = redact.Text(string(h.req.Origin()))
	e.UserAgent = redact.Text(string(h.req.UserAgent()))
	e.Path = h.s.redactor.URI(h.req.URI())
	e.RequestID = requestID
	e.Alg, e.Kid = h.verdict.Alg, h.verdict.Kid
	e.ClaimedIss, e.ClaimedSub = redact.Text(h.verdict.Iss), redact.Text(h.verdict.Sub)
	e.Detail = redact.Text(h.verdict.Detail)
	if e.Detail == "" && h.ext.NChecks > 0 {
		e.Detail = h.extractionDetail()
	}
}

// extractionDetail says where the extraction looked, e.g. "checked header
// (absent), subprotocol (absent); seen in query (disabled)". It is the line
// the incident's server could not write.
func (h *handshake) extractionDetail() string {
	var b []byte
	b = append(b, "checked "...)
	first := true
	for i := 0; i < h.ext.NChecks; i++ {
		c := h.ext.Checks[i]
		if !c.Enabled {
			continue
		}
		if !first {
			b = append(b, ", "...)
		}
		first = false
		b = append(b, c.Source.String()...)
		b = append(b, " ("...)
		b = append(b, c.Outcome()...)
		b = append(b, ')')
	}
	for i := 0; i < h.ext.NChecks; i++ {
		c := h.ext.Checks[i]
		if c.Enabled || !c.Found {
			continue
		}
		b = append(b, "; found in disabled source "...)
		b = append(b, c.Source.String()...)
	}
	if !h.ext.ProtocolOffered && h.req.HasProtocols() {
		b = append(b, "; "+authn.Protocol+" not offered"...)
	}
	return string(b)
}
