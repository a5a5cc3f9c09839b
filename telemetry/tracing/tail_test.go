package tracing

import (
	"context"
	"crypto/sha256"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// newTestProvider returns a provider exporting to memory. The exporter keeps
// its spans until the test ends (the provider is shut down first).
func newTestProvider(t *testing.T, cfg Config) (*Provider, *tracetest.InMemoryExporter) {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	cfg.Exporter = exp
	cfg.Env = mapEnv(nil)
	p, err := NewProvider(t.Context(), cfg)
	if err != nil {
		t.Fatalf("NewProvider: %v",
			err)
	}
	t.Cleanup(func() {
		if err := p.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v",
				err)
		}
	})
	return p, exp
}

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func flush(t *testing.T, p *Provider) {
	t.Helper()
	if err := p.ForceFlush(t.Context()); err != nil {
		t.Fatalf("ForceFlush: %v",
			err)
	}
}

// upgradeTrace records ws.upgrade with children authn.extract and
// authn.verify under ctx and returns the root's span context.
func upgradeTrace(ctx context.Context, tr trace.Tracer, failRoot, failChild bool) trace.SpanContext {
	ctx, root := tr.Start(ctx, "ws.upgrade", trace.WithSpanKind(trace.SpanKindServer))
	_, extract := tr.Start(ctx, "authn.extract")
	extract.AddEvent("source.checked", trace.WithAttributes(
		attribute.String("source", "header"),
		attribute.Bool("found", true),
	))
	extract.End()
	_, verify := tr.Start(ctx, "authn.verify")
	if failChild {
		verify.SetStatus(codes.Error, "expired")
	}
	verify.End()
	if failRoot {
		root.SetAttributes(attribute.String("error.type", "expired"))
		root.SetStatus(codes.Error, "expired")
	}
	root.End()
	return root.SpanContext()
}

func spanNames(spans tracetest.SpanStubs) map[string]int {
	names := make(map[string]int)
	for _, s := range spans {
		names[s.Name]++
	}
	return names
}

func TestTailSamplingKeepsFailures(t *testing.T) {
	tests := []struct {
		name      string
		ratio     float64
		failRoot  bool
		failChild bool
		wantSpans int
	}{
		{
			name:      "failed root kept at ratio 0",
			ratio:     NoSuccesses,
			failRoot:  true,
			failChild: true,
			wantSpans: 3,
		},
		{
			name:      "failed child alone keeps the trace",
			ratio:     NoSuccesses,
			failRoot:  false,
			failChild: true,
			wantSpans: 3,
		},
		{
			name:      "success dropped at ratio 0",
			ratio:     NoSuccesses,
			failRoot:  false,
			failChild: false,
			wantSpans: 0,
		},
		{
			name:      "success kept at ratio 1",
			ratio:     1,
			failRoot:  false,
			failChild: false,
			wantSpans: 3,
		},
		{
			name:      "failure kept at ratio 1",
			ratio:     1,
			failRoot:  true,
			failChild: false,
			wantSpans: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, exp := newTestProvider(t, Config{SuccessRatio: tt.ratio})
			sc := upgradeTrace(t.Context(), p.Tracer(), tt.failRoot, tt.failChild)
			flush(t, p)

			spans := exp.GetSpans()
			if len(spans) != tt.wantSpans {
				t.Fatalf("exported %d spans %v, want %d",
					len(spans), spanNames(spans), tt.wantSpans)
			}
			for _, s := range spans {
				if s.SpanContext.TraceID() != sc.TraceID() {
					t.Errorf("span %s in trace %s, want %s",
						s.Name, s.SpanContext.TraceID(), sc.TraceID())
				}
			}
			if tt.wantSpans > 0 {
				names := spanNames(spans)
				for _, n := range []string{"ws.upgrade", "authn.extract", "authn.verify"} {
					if names[n] != 1 {
						t.Errorf("span %s exported %d times, want 1",
							n, names[n])
					}
				}
			}
			failed := tt.failRoot || tt.failChild
			if got, want := p.Keeps(sc, failed), tt.wantSpans > 0; got != want {
				t.Errorf("Keeps(failed=%v) = %v, want %v (what was exported)",
					failed, got, want)
			}
			st := p.Stats()
			if st.PendingTraces != 0 {
				t.Errorf("PendingTraces = %d after the root ended, want 0",
					st.PendingTraces)
			}
		})
	}
}

// traceIDs returns n trace ids that do not depend on any random source.
func traceIDs(n int) []trace.TraceID {
	ids := make([]trace.TraceID, n)
	for i := range ids {
		sum := sha256.Sum256([]byte{byte(i >> 8), byte(i)})
		copy(ids[i][:], sum[:16])
	}
	return ids
}

// remoteParent returns a context carrying a sampled remote parent of the
// trace, as an upgrade with a traceparent header has.
func remoteParent(ctx context.Context, id trace.TraceID, sampled bool) context.Context {
	var flags trace.TraceFlags
	if sampled {
		flags = trace.FlagsSampled
	}
	return trace.ContextWithRemoteSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    id,
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: flags,
		Remote:     true,
	}))
}

func TestTailSamplingRatioIsDecidedByTraceID(t *testing.T) {
	const ratio = 0.5
	p, exp := newTestProvider(t, Config{SuccessRatio: ratio})
	oracle := sdktrace.TraceIDRatioBased(ratio)

	ids := traceIDs(1000)
	want := make(map[trace.TraceID]bool)
	for _, id := range ids {
		res := oracle.ShouldSample(sdktrace.SamplingParameters{TraceID: id})
		if res.Decision == sdktrace.RecordAndSample {
			want[id] = true
		}
		upgradeTrace(remoteParent(t.Context(), id, true), p.Tracer(), false, false)
	}
	flush(t, p)

	if len(want) < 400 || len(want) > 600 {
		t.Fatalf("the oracle keeps %d of %d ids, want about half: the ids are not spread",
			len(want), len(ids))
	}
	got := make(map[trace.TraceID]int)
	for _, s := range exp.GetSpans() {
		got[s.SpanContext.TraceID()]++
	}
	if len(got) != len(want) {
		t.Fatalf("exported %d traces, want exactly %d (TraceIDRatioBased(%v) on the same ids)",
			len(got), len(want), ratio)
	}
	for id, n := range got {
		if !want[id] {
			t.Errorf("trace %s exported, TraceIDRatioBased drops it",
				id)
		}
		if n != 3 {
			t.Errorf("trace %s exported with %d spans, want 3",
				id, n)
		}
	}
	st := p.Stats()
	if st.KeptTraces != uint64(len(want)) || st.SampledOutTraces != uint64(len(ids)-len(want)) {
		t.Errorf("stats kept %d sampled out %d, want %d and %d",
			st.KeptTraces, st.SampledOutTraces, len(want), len(ids)-len(want))
	}
}

func TestTailSamplingRemoteParent(t *testing.T) {
	id := trace.TraceID{0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	tests := []struct {
		name          string
		ratio         float64
		remoteSampled bool
		fail          bool
		wantSpans     int
		wantPropagate bool
	}{
		{
			name:          "unsampled parent, success dropped even at ratio 1",
			ratio:         1,
			remoteSampled: false,
			fail:          false,
			wantSpans:     0,
			wantPropagate: false,
		},
		{
			name:          "unsampled parent, failure kept",
			ratio:         NoSuccesses,
			remoteSampled: false,
			fail:          true,
			wantSpans:     3,
			wantPropagate: false,
		},
		{
			name:          "sampled parent, success still subject to ratio",
			ratio:         NoSuccesses,
			remoteSampled: true,
			fail:          false,
			wantSpans:     0,
			wantPropagate: true,
		},
		{
			name:          "sampled parent, failure kept",
			ratio:         NoSuccesses,
			remoteSampled: true,
			fail:          true,
			wantSpans:     3,
			wantPropagate: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, exp := newTestProvider(t, Config{SuccessRatio: tt.ratio})
			sc := upgradeTrace(remoteParent(t.Context(), id, tt.remoteSampled), p.Tracer(), tt.fail, false)
			flush(t, p)

			if sc.TraceID() != id {
				t.Fatalf("trace id %s, want the remote parent's %s",
					sc.TraceID(), id)
			}
			if sc.IsSampled() != tt.wantPropagate {
				t.Errorf("propagated sampled flag %v, want %v",
					sc.IsSampled(), tt.wantPropagate)
			}
			spans := exp.GetSpans()
			if len(spans) != tt.wantSpans {
				t.Fatalf("exported %d spans, want %d",
					len(spans), tt.wantSpans)
			}
			for _, s := range spans {
				if !s.SpanContext.IsSampled() {
					t.Errorf("exported span %s not marked sampled",
						s.Name)
				}
			}
			if got, want := p.Keeps(sc, tt.fail), tt.wantSpans > 0; got != want {
				t.Errorf("Keeps = %v, want %v",
					got, want)
			}
		})
	}
}

func TestTailSamplingLateSpans(t *testing.T) {
	tests := []struct {
		name      string
		ratio     float64
		failRoot  bool
		failLate  bool
		wantNames []string
	}{
		{
			name:      "late child of a kept failure is kept",
			ratio:     NoSuccesses,
			failRoot:  true,
			failLate:  false,
			wantNames: []string{"ws.upgrade", "late"},
		},
		{
			name:      "late child of a dropped success is dropped",
			ratio:     NoSuccesses,
			failRoot:  false,
			failLate:  false,
			wantNames: nil,
		},
		{
			name:      "late failed child is kept on its own",
			ratio:     NoSuccesses,
			failRoot:  false,
			failLate:  true,
			wantNames: []string{"late"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, exp := newTestProvider(t, Config{SuccessRatio: tt.ratio})
			tr := p.Tracer()
			ctx, root := tr.Start(t.Context(), "ws.upgrade")
			_, late := tr.Start(ctx, "late")
			if tt.failRoot {
				root.SetStatus(codes.Error, "expired")
			}
			root.End()
			if tt.failLate {
				late.SetStatus(codes.Error, "write_error")
			}
			late.End()
			flush(t, p)

			names := spanNames(exp.GetSpans())
			if len(names) != len(tt.wantNames) {
				t.Fatalf("exported %v, want %v",
					names, tt.wantNames)
			}
			for _, n := range tt.wantNames {
				if names[n] != 1 {
					t.Errorf("exported %v, want %v",
						names, tt.wantNames)
				}
			}
			if got := p.Stats().LateSpans; got != 1 {
				t.Errorf("LateSpans = %d, want 1",
					got)
			}
		})
	}
}

func TestTailSamplingBuffersAreBounded(t *testing.T) {
	const (
		maxTraces = 8
		maxSpans  = 4
		roots     = 100
		children  = 10
	)
	p, exp := newTestProvider(t, Config{
		SuccessRatio:     NoSuccesses,
		MaxPendingTraces: maxTraces,
		MaxSpansPerTrace: maxSpans,
	})
	tr := p.Tracer()
	for i := range roots {
		// The roots never end: a leak the buffer must survive.
		ctx, _ := tr.Start(t.Context(), "ws.connection")
		for c := range children {
			_, child := tr.Start(ctx, "child")
			if i%10 == 0 && c == 0 {
				child.SetStatus(codes.Error, "failed")
			}
			child.End()
		}
		if n := len(p.tail.pending); n > maxTraces {
			t.Fatalf("after %d roots %d traces pending, want at most %d",
				i+1, n, maxTraces)
		}
		if n := len(p.tail.decided.keep); n > maxTraces {
			t.Fatalf("after %d roots %d decisions remembered, want at most %d",
				i+1, n, maxTraces)
		}
		for _, pt := range p.tail.pending {
			if len(pt.spans) > maxSpans {
				t.Fatalf("a pending trace buffers %d spans, want at most %d",
					len(pt.spans), maxSpans)
			}
		}
	}
	flush(t, p)

	st := p.Stats()
	if st.PendingTraces != maxTraces {
		t.Errorf("PendingTraces = %d, want %d",
			st.PendingTraces, maxTraces)
	}
	if want := uint64(roots - maxTraces); st.EvictedTraces != want {
		t.Errorf("EvictedTraces = %d, want %d",
			st.EvictedTraces, want)
	}
	if want := uint64(roots * (children - maxSpans)); st.DroppedSpans != want {
		t.Errorf("DroppedSpans = %d, want %d",
			st.DroppedSpans, want)
	}
	// Evicted traces 0, 10, ..., 80 had a failure: their buffered spans are
	// exported. Traces 92..99 are still pending, 90 was evicted.
	const failedEvicted = 10
	if st.KeptFailedTraces != failedEvicted {
		t.Errorf("KeptFailedTraces = %d, want %d",
			st.KeptFailedTraces, failedEvicted)
	}
	if got, want := len(exp.GetSpans()), failedEvicted*maxSpans; got != want {
		t.Errorf("exported %d spans, want %d",
			got, want)
	}
}

func TestShutdownDecidesPendingTraces(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	p, err := NewProvider(t.Context(), Config{
		SuccessRatio: NoSuccesses,
		Exporter:     &keepOnShutdown{InMemoryExporter: exp},
		Env:          mapEnv(nil),
	})
	if err != nil {
		t.Fatalf("NewProvider: %v",
			err)
	}
	tr := p.Tracer()
	ctx, _ := tr.Start(t.Context(), "ws.upgrade")
	_, child := tr.Start(ctx, "authn.verify")
	child.SetStatus(codes.Error, "expired")
	child.End()
	ctx2, _ := tr.Start(t.Context(), "ws.upgrade")
	_, ok := tr.Start(ctx2, "authn.verify")
	ok.End()

	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v",
			err)
	}
	names := spanNames(exp.GetSpans())
	if len(names) != 1 || names["authn.verify"] != 1 {
		t.Errorf("exported %v at shutdown, want the failed authn.verify only",
			names)
	}
	if st := p.Stats(); st.PendingTraces != 0 {
		t.Errorf("PendingTraces = %d after shutdown, want 0",
			st.PendingTraces)
	}
}

// keepOnShutdown keeps the in-memory exporter's spans across Shutdown, which
// would reset them.
type keepOnShutdown struct {
	*tracetest.InMemoryExporter
}

func (keepOnShutdown) Shutdown(context.Context) error { return nil }

func TestDecisionCacheIsBounded(t *testing.T) {
	d := newDecisionCache(3)
	ids := traceIDs(10)
	for i, id := range ids {
		d.put(id, i%2 == 0)
		d.put(id, i%2 == 0)
	}
	if len(d.keep) != 3 {
		t.Fatalf("cache holds %d decisions, want 3",
			len(d.keep))
	}
	for i, id := range ids {
		keep, known := d.get(id)
		if wantKnown := i >= len(ids)-3; known != wantKnown {
			t.Errorf("id %d known = %v, want %v",
				i, known, wantKnown)
		}
		if known && keep != (i%2 == 0) {
			t.Errorf("id %d keep = %v, want %v",
				i, keep, i%2 == 0)
		}
	}
}
