package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/gobwas/ws"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
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
	c         net.Conn
	remaining int
	swallow   bool
	tooLarge  bool
}

func (h *hsConn) Read(p []byte) (int, error) {
	if h.remaining <= 0 {
		h.tooLarge = true
		return 0, errHandshakeTooLarge
	}
	if len(p) > h.remaining {
		p = p[:h.remaining]
	}
	n, err := h.c.Read(p)
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
	ctx       context.Context
	span      trace.Span
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

func (h *handshake) reset(c net.Conn) {
	h.conn = c
	h.hc = hsConn{c: c, remaining: h.s.cfg.MaxHandshakeBytes}
	h.req.Reset()
	h.start = h.s.now()
	h.badPath = false
	h.remote = netip.Addr{}
	h.reason, h.source = authn.ReasonNone, authn.SourceNone
	h.principal, h.verdict = authn.Principal{}, authn.Verdict{}
	h.selected = false
	h.respHdr = h.respHdr[:0]
	h.ctx, h.span = nil, nil
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
	if h.reason != authn.ReasonNone && h.s.cfg.RejectMode == RejectHTTP {
		h.hc.swallow = true
		return nil, errRejected
	}
	// Accepted, or refused in close mode: the upgrade completes.
	h.selected = h.ext.ProtocolOffered
	if h.selected {
		h.respHdr = append(h.respHdr, "Sec-WebSocket-Protocol: "+authn.Protocol+"\r\n"...)
	}
	if h.span != nil && h.span.SpanContext().IsValid() {
		h.respHdr = append(h.respHdr, "X-Trace-Id: "...)
		var tid [32]byte
		h.respHdr = append(h.respHdr, hexTrace(tid[:], h.span.SpanContext().TraceID())...)
		h.respHdr = append(h.respHdr, "\r\n"...)
	}
	return ws.HandshakeHeaderBytes(h.respHdr), nil
}

func hexTrace(dst []byte, id trace.TraceID) []byte {
	const hexdigits = "0123456789abcdef"
	for i, b := range id {
		dst[i*2] = hexdigits[b>>4]
		dst[i*2+1] = hexdigits[b&0xf]
	}
	return dst
}

// authenticate runs extract → verify → policy and sets h.reason.
func (h *handshake) authenticate() {
	s := h.s
	h.remote = s.clientAddr(h.conn, h.req.ForwardedFor())
	h.ctx = context.Background()
	if s.tracing {
		h.startSpan()
	}
	if s.failures.limited(h.remote, h.start) {
		h.reason = authn.ReasonRateLimited
		return
	}

	s.ex.Extract(h.req, &h.ext)
	h.reason, h.source = h.ext.Reason, h.ext.Source
	if s.tracing {
		h.traceExtract()
	}
	if h.reason != authn.ReasonNone {
		return
	}

	vctx := h.ctx
	var vspan trace.Span
	if s.tracing {
		vctx, vspan = s.tracer.Start(h.ctx, "authn.verify")
	}
	t0 := s.now()
	h.principal, h.verdict = s.ver.Verify(vctx, h.ext.Token)
	s.metrics.VerifyDuration(h.verdict.Alg, s.now().Sub(t0))
	h.reason = h.verdict.Reason
	if vspan != nil {
		vspan.SetAttributes(
			attribute.String("jwt.alg", h.verdict.Alg),
			attribute.String("jwt.kid", h.verdict.Kid),
			attribute.String("jwt.iss", h.verdict.Iss),
			attribute.String("authn.reason", h.reason.String()),
		)
		if h.reason != authn.ReasonNone {
			vspan.SetStatus(codes.Error, h.reason.String())
			vspan.SetAttributes(attribute.String("error.type", h.reason.String()))
		}
		vspan.End()
	}
	if h.reason != authn.ReasonNone {
		return
	}

	// Policy.
	origin := h.req.Origin()
	switch {
	case !s.admit(h.principal.Subject):
		h.reason = authn.ReasonConnectionLimit
	case h.source == authn.SourceCookie && (len(origin) == 0 || !s.origins.Allowed(origin)):
		// A cookie rides along on any cross-site request: without an
		// allowed Origin it proves nothing (Cross-Site WebSocket Hijacking).
		h.reason = authn.ReasonOriginNotAllowed
	case len(origin) > 0 && !s.origins.Empty() && !s.origins.Allowed(origin):
		h.reason = authn.ReasonOriginNotAllowed
	}
}

func (h *handshake) startSpan() {
	s := h.s
	ctx := context.Background()
	if tp := h.req.Traceparent(); len(tp) > 0 {
		ctx = propagation.TraceContext{}.Extract(ctx, traceCarrier{tp: string(tp)})
	}
	h.ctx, h.span = s.tracer.Start(ctx, "ws.upgrade",
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(h.start),
		trace.WithAttributes(
			attribute.String("http.request.method", http.MethodGet),
			attribute.String("url.path", redact.Path(h.req.URI())),
			attribute.String("url.scheme", "ws"),
			attribute.String("server.address", string(h.req.Host())),
			attribute.String("client.address", h.remote.String()),
			attribute.String("user_agent.original", redact.Text(string(h.req.UserAgent()))),
			attribute.String("network.protocol.name", "websocket"),
		),
	)
	if q := bytes.IndexByte(h.req.URI(), '?'); q >= 0 {
		h.span.SetAttributes(attribute.String("url.query", s.redactor.URI(h.req.URI()[q:])[1:]))
	}
}

func (h *handshake) traceExtract() {
	_, span := h.s.tracer.Start(h.ctx, "authn.extract")
	for i := 0; i < h.ext.NChecks; i++ {
		c := h.ext.Checks[i]
		outcome := "absent"
		switch {
		case c.Reason != authn.ReasonNone:
			outcome = c.Reason.String()
		case c.Found && !c.Enabled:
			outcome = "ignored_disabled"
		case c.Found:
			outcome = "token"
		}
		span.AddEvent("source.checked", trace.WithAttributes(
			attribute.String("source", c.Source.String()),
			attribute.Bool("enabled", c.Enabled),
			attribute.Bool("found", c.Found),
			attribute.String("outcome", outcome),
		))
	}
	span.SetAttributes(
		attribute.String("authn.source", h.ext.Source.String()),
		attribute.String("authn.reason", h.ext.Reason.String()),
		attribute.Bool("websocket.protocol_offered", h.ext.ProtocolOffered),
	)
	if h.ext.Reason != authn.ReasonNone {
		span.SetStatus(codes.Error, h.ext.Reason.String())
		span.SetAttributes(attribute.String("error.type", h.ext.Reason.String()))
	}
	span.End()
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

// endSpan finishes ws.upgrade with the outcome.
func (h *handshake) endSpan(status int) {
	if h.span == nil {
		return
	}
	h.span.SetAttributes(
		attribute.Int("http.response.status_code", status),
		attribute.String("authn.source", h.source.String()),
		attribute.String("authn.reason", h.reason.String()),
	)
	if h.reason != authn.ReasonNone {
		h.span.SetStatus(codes.Error, h.reason.String())
		h.span.SetAttributes(attribute.String("error.type", h.reason.String()))
	}
	h.span.End()
}

// requestID names the attempt in responses, logs and events: the trace id
// when traced, so that the id a user reports finds the trace.
func (h *handshake) requestID() string {
	if h.span != nil && h.span.SpanContext().IsValid() {
		return h.span.SpanContext().TraceID().String()
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
	if h.span != nil && h.span.SpanContext().IsValid() {
		b.WriteString("X-Trace-Id: ")
		b.WriteString(h.span.SpanContext().TraceID().String())
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
	// Give the client a moment to answer the close so that it sees a clean
	// close rather than a reset; the handshake deadline still bounds it.
	_ = h.conn.SetReadDeadline(h.s.now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(h.conn, 1<<10))
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
		switch {
		case c.Reason != authn.ReasonNone:
			b = append(b, c.Reason.String()...)
		case c.Found:
			b = append(b, "token"...)
		default:
			b = append(b, "absent"...)
		}
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
