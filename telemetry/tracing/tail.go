package tracing

import (
	"container/list"
	"context"
	"encoding/binary"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Stats counts what the tail sampler did since the provider was built.
type Stats struct {
	// PendingTraces is the number of traces buffered now, waiting for their
	// local root span to end.
	PendingTraces int
	// KeptTraces counts traces handed to the exporter, failed or sampled.
	KeptTraces uint64
	// KeptFailedTraces counts the kept traces that had a span with status Error.
	KeptFailedTraces uint64
	// SampledOutTraces counts successful traces not exported (ratio, or a remote
	// parent that was not sampled).
	SampledOutTraces uint64
	// EvictedTraces counts pending traces decided early because the buffer held
	// MaxPendingTraces traces when a new one started.
	EvictedTraces uint64
	// DroppedSpans counts spans dropped because their trace already buffered
	// MaxSpansPerTrace spans.
	DroppedSpans uint64
	// LateSpans counts spans that ended after their trace had been decided.
	LateSpans uint64
}

// successRatio decides from a trace id whether a successful trace is kept,
// exactly as sdktrace.TraceIDRatioBased decides whether to sample it.
type successRatio struct {
	all   bool
	bound uint64
}

func newSuccessRatio(r float64) successRatio {
	switch {
	case r >= 1:
		return successRatio{all: true}
	case r <= 0:
		return successRatio{}
	}
	return successRatio{bound: uint64(r * (1 << 63))}
}

func (s successRatio) keeps(id trace.TraceID) bool {
	if s.all {
		return true
	}
	return binary.BigEndian.Uint64(id[8:16])>>1 < s.bound
}

// isLocalRoot reports whether a span with this parent is the first span of its
// trace in this process.
func isLocalRoot(parent trace.SpanContext) bool {
	return !parent.IsValid() || parent.IsRemote()
}

type pendingTrace struct {
	id        trace.TraceID
	spans     []sdktrace.ReadOnlySpan
	openRoots int
	failed    bool
	sampled   bool
	elem      *list.Element
}

// decisionCache remembers the last decisions, bounded, so that spans ending
// after their trace was decided follow that decision.
type decisionCache struct {
	ring []trace.TraceID
	next int
	keep map[trace.TraceID]bool
}

func newDecisionCache(n int) decisionCache {
	return decisionCache{
		ring: make([]trace.TraceID, 0, n),
		keep: make(map[trace.TraceID]bool, n),
	}
}

func (d *decisionCache) get(id trace.TraceID) (keep, known bool) {
	keep, known = d.keep[id]
	return keep, known
}

func (d *decisionCache) put(id trace.TraceID, keep bool) {
	if _, ok := d.keep[id]; ok {
		d.keep[id] = keep
		return
	}
	if len(d.ring) < cap(d.ring) {
		d.ring = append(d.ring, id)
	} else {
		delete(d.keep, d.ring[d.next])
		d.ring[d.next] = id
		d.next = (d.next + 1) % len(d.ring)
	}
	d.keep[id] = keep
}

// tailSampler is the span processor described in the package documentation.
// It forwards the spans of kept traces to next.
type tailSampler struct {
	next      sdktrace.SpanProcessor
	ratio     successRatio
	maxTraces int
	maxSpans  int

	mu      sync.Mutex
	pending map[trace.TraceID]*pendingTrace
	order   list.List // of *pendingTrace, oldest first
	decided decisionCache
	stats   Stats
}

var _ sdktrace.SpanProcessor = (*tailSampler)(nil)

func newTailSampler(next sdktrace.SpanProcessor, ratio successRatio, maxTraces, maxSpans int) *tailSampler {
	return &tailSampler{
		next:      next,
		ratio:     ratio,
		maxTraces: maxTraces,
		maxSpans:  maxSpans,
		pending:   make(map[trace.TraceID]*pendingTrace),
		decided:   newDecisionCache(maxTraces),
	}
}

// OnStart registers a local root so that the trace is buffered until it ends.
func (t *tailSampler) OnStart(_ context.Context, s sdktrace.ReadWriteSpan) {
	if !isLocalRoot(s.Parent()) {
		return
	}
	sc := s.SpanContext()
	var evicted []sdktrace.ReadOnlySpan
	t.mu.Lock()
	p := t.pending[sc.TraceID()]
	if p == nil {
		if len(t.pending) >= t.maxTraces {
			if front := t.order.Front(); front != nil {
				t.stats.EvictedTraces++
				evicted = t.decideLocked(front.Value.(*pendingTrace))
			}
		}
		p = &pendingTrace{id: sc.TraceID()}
		p.elem = t.order.PushBack(p)
		t.pending[p.id] = p
	}
	p.openRoots++
	if sc.IsSampled() {
		p.sampled = true
	}
	t.mu.Unlock()
	t.export(evicted)
}

// OnEnd buffers the span; when the last open local root of its trace ends,
// the trace is decided.
func (t *tailSampler) OnEnd(s sdktrace.ReadOnlySpan) {
	sc := s.SpanContext()
	failed := s.Status().Code == codes.Error
	var out []sdktrace.ReadOnlySpan
	t.mu.Lock()
	p := t.pending[sc.TraceID()]
	if p == nil {
		keep := t.lateLocked(sc, failed)
		t.mu.Unlock()
		if keep {
			t.next.OnEnd(markSampled(s))
		}
		return
	}
	if failed {
		p.failed = true
	}
	root := isLocalRoot(s.Parent())
	// A local root is always buffered: a kept trace must not lose its root.
	if len(p.spans) < t.maxSpans || root {
		p.spans = append(p.spans, s)
	} else {
		t.stats.DroppedSpans++
	}
	if root {
		p.openRoots--
		if p.openRoots <= 0 {
			out = t.decideLocked(p)
		}
	}
	t.mu.Unlock()
	t.export(out)
}

// lateLocked decides a span that ended after its trace was decided.
func (t *tailSampler) lateLocked(sc trace.SpanContext, failed bool) bool {
	t.stats.LateSpans++
	keep, known := t.decided.get(sc.TraceID())
	switch {
	case failed:
		if !keep {
			t.decided.put(sc.TraceID(), true)
		}
		return true
	case known:
		return keep
	default:
		return sc.IsSampled() && t.ratio.keeps(sc.TraceID())
	}
}

// decideLocked removes p from the buffer and returns its spans if the trace
// is kept.
func (t *tailSampler) decideLocked(p *pendingTrace) []sdktrace.ReadOnlySpan {
	delete(t.pending, p.id)
	t.order.Remove(p.elem)
	keep := p.failed || (p.sampled && t.ratio.keeps(p.id))
	t.decided.put(p.id, keep)
	if !keep {
		t.stats.SampledOutTraces++
		return nil
	}
	t.stats.KeptTraces++
	if p.failed {
		t.stats.KeptFailedTraces++
	}
	return p.spans
}

func (t *tailSampler) export(spans []sdktrace.ReadOnlySpan) {
	for _, s := range spans {
		t.next.OnEnd(markSampled(s))
	}
}

// Shutdown decides every pending trace on what it has buffered, then shuts
// the next processor down.
func (t *tailSampler) Shutdown(ctx context.Context) error {
	var out []sdktrace.ReadOnlySpan
	t.mu.Lock()
	for t.order.Len() > 0 {
		out = append(out, t.decideLocked(t.order.Front().Value.(*pendingTrace))...)
	}
	t.mu.Unlock()
	t.export(out)
	if err := t.next.Shutdown(ctx); err != nil {
		return fmt.Errorf("tail sampler: shut down batch processor: %w", err)
	}
	return nil
}

// ForceFlush exports what has been decided. Traces whose local root has not
// ended stay buffered.
func (t *tailSampler) ForceFlush(ctx context.Context) error {
	if err := t.next.ForceFlush(ctx); err != nil {
		return fmt.Errorf("tail sampler: flush batch processor: %w", err)
	}
	return nil
}

func (t *tailSampler) snapshot() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.PendingTraces = len(t.pending)
	return s
}

// sampledSpan presents a span recorded under an unsampled remote parent as
// sampled, so that the batch processor and the exporter take it.
type sampledSpan struct {
	sdktrace.ReadOnlySpan
	sc trace.SpanContext
}

func (s sampledSpan) SpanContext() trace.SpanContext { return s.sc }

func markSampled(s sdktrace.ReadOnlySpan) sdktrace.ReadOnlySpan {
	sc := s.SpanContext()
	if sc.IsSampled() {
		return s
	}
	return sampledSpan{
		ReadOnlySpan: s,
		sc:           sc.WithTraceFlags(sc.TraceFlags().WithSampled(true)),
	}
}

// recordAll is the head sampler: every span is recorded so that the tail
// sampler can see it. A span is marked sampled unless its parent is not.
type recordAll struct{}

func (recordAll) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	psc := trace.SpanContextFromContext(p.ParentContext)
	decision := sdktrace.RecordAndSample
	if psc.IsValid() && !psc.IsSampled() {
		decision = sdktrace.RecordOnly
	}
	return sdktrace.SamplingResult{
		Decision:   decision,
		Tracestate: psc.TraceState(),
	}
}

func (recordAll) Description() string {
	return "RecordAll{tail sampling: failures kept, successes by trace id ratio}"
}
