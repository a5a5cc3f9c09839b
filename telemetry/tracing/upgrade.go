package tracing

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// Upgrade traces are built from the event after the fact (DESIGN.md §1):
// the broker picks the trace and span ids when the handshake's headers are
// read (so the answer can carry X-Trace-Id), decides at the end whether the
// trace is kept (Keeps), and only a kept upgrade becomes spans, with the
// timestamps it recorded. An upgrade whose trace is dropped (99% of
// successes at the default ratio) costs two random numbers, no span.

// NewIDs returns ids for a new upgrade trace: the parent's trace id when the
// client sent a traceparent, a random one otherwise, and a random span id.
// The context is sampled unless the parent was explicitly not.
func NewIDs(parent trace.SpanContext) trace.SpanContext {
	var tid trace.TraceID
	var sid trace.SpanID
	flags := trace.FlagsSampled
	if parent.IsValid() {
		tid = parent.TraceID()
		if !parent.IsSampled() {
			flags = 0
		}
	} else {
		binary.BigEndian.PutUint64(tid[:8], rand.Uint64())
		binary.BigEndian.PutUint64(tid[8:], rand.Uint64())
	}
	for !sid.IsValid() {
		binary.BigEndian.PutUint64(sid[:], rand.Uint64())
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: flags})
}

// presetKey carries the ids the next root span must use.
type presetKey struct{}

type preset struct {
	sc   trace.SpanContext
	used bool
}

// presetIDs lets the span built for an upgrade keep the ids the broker
// already sent to the client and wrote into the event; every other span
// gets random ids.
type presetIDs struct{}

func (presetIDs) NewIDs(ctx context.Context) (trace.TraceID, trace.SpanID) {
	if p, ok := ctx.Value(presetKey{}).(*preset); ok && !p.used {
		p.used = true
		return p.sc.TraceID(), p.sc.SpanID()
	}
	sc := NewIDs(trace.SpanContext{})
	return sc.TraceID(), sc.SpanID()
}

func (presetIDs) NewSpanID(ctx context.Context, tid trace.TraceID) trace.SpanID {
	if p, ok := ctx.Value(presetKey{}).(*preset); ok && !p.used && p.sc.TraceID() == tid {
		p.used = true
		return p.sc.SpanID()
	}
	return NewIDs(trace.SpanContext{}).SpanID()
}

// Observe builds the spans of a kept upgrade from its event (a Sink).
func (p *Provider) Observe(_ context.Context, e *event.Event) {
	if !p.Enabled() || !e.Sampled || !e.TraceID.IsValid() {
		return
	}
	if e.Type != event.TypeUpgradeRejected && e.Type != event.TypeConnectionOpened {
		return
	}
	t := &e.Trace
	// A new root, not the caller's context: the spans describe the upgrade,
	// whatever goroutine reports it.
	ctx := context.Background()
	if t.Parent.IsValid() {
		ctx = trace.ContextWithRemoteSpanContext(ctx, t.Parent)
	}
	ctx = context.WithValue(ctx, presetKey{}, &preset{sc: trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: e.TraceID, SpanID: e.SpanID, TraceFlags: trace.FlagsSampled,
	})})
	end := t.Start.Add(e.Duration)
	reason := e.Reason
	if e.Type == event.TypeConnectionOpened {
		reason = authn.ReasonNone
	}
	status := e.Status
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", "GET"),
		attribute.String("url.path", urlPath(e.Path)),
		attribute.String("url.scheme", "ws"),
		attribute.String("server.address", t.Host),
		attribute.String("network.protocol.name", "websocket"),
		attribute.Int("http.response.status_code", status),
		attribute.String("authn.source", e.Source.String()),
		attribute.String("authn.reason", reason.String()),
	}
	if e.RemoteIP.IsValid() {
		attrs = append(attrs, attribute.String("client.address", e.RemoteIP.String()))
	}
	if e.UserAgent != "" {
		attrs = append(attrs, attribute.String("user_agent.original", e.UserAgent))
	}
	if t.Query != "" {
		attrs = append(attrs, attribute.String("url.query", t.Query))
	}
	if e.RequestID != "" {
		attrs = append(attrs, attribute.String("wsbroker.request_id", e.RequestID))
	}
	if e.ConnID != 0 {
		attrs = append(attrs, attribute.Int64("wsbroker.conn_id", int64(e.ConnID)))
	}
	ctx, root := p.tracer.Start(ctx, "ws.upgrade",
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithTimestamp(t.Start),
		trace.WithAttributes(attrs...),
	)
	if !t.AuthStart.IsZero() && t.NChecks > 0 {
		_, x := p.tracer.Start(ctx, "authn.extract", trace.WithTimestamp(t.AuthStart))
		for i := 0; i < int(t.NChecks); i++ {
			c := t.Checks[i]
			x.AddEvent("source.checked", trace.WithTimestamp(t.ExtractEnd), trace.WithAttributes(
				attribute.String("source", c.Source.String()),
				attribute.Bool("enabled", c.Enabled),
				attribute.Bool("found", c.Found),
				attribute.String("outcome", c.Outcome()),
			))
		}
		x.SetAttributes(
			attribute.String("authn.source", t.ExtractSource.String()),
			attribute.String("authn.reason", t.ExtractReason.String()),
			attribute.Bool("websocket.protocol_offered", t.ProtocolOffered),
		)
		failSpan(x, t.ExtractReason)
		x.End(trace.WithTimestamp(t.ExtractEnd))
	}
	if !t.VerifyEnd.IsZero() {
		_, v := p.tracer.Start(ctx, "authn.verify", trace.WithTimestamp(t.ExtractEnd))
		v.SetAttributes(
			attribute.String("jwt.alg", e.Alg),
			attribute.String("jwt.kid", e.Kid),
			attribute.String("jwt.iss", e.ClaimedIss),
			attribute.String("authn.reason", t.VerifyReason.String()),
		)
		failSpan(v, t.VerifyReason)
		v.End(trace.WithTimestamp(t.VerifyEnd))
	}
	failSpan(root, reason)
	root.End(trace.WithTimestamp(end))
}

func failSpan(s trace.Span, r authn.Reason) {
	if r == authn.ReasonNone {
		return
	}
	s.SetStatus(codes.Error, r.String())
	s.SetAttributes(attribute.String("error.type", r.String()))
}

// urlPath is the request-target without its query.
func urlPath(uri string) string {
	path, _, _ := strings.Cut(uri, "?")
	return path
}
