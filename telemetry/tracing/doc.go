// Package tracing builds the broker's OpenTelemetry tracer provider.
//
// Export is configured by the standard OTEL_* environment variables (see
// NewProvider). Without an OTLP endpoint (and without Config.Exporter) tracing
// is off: Provider.Enabled reports false and Provider.Tracer returns a no-op
// tracer, so instrumented code costs next to nothing.
//
// # Sampling: failures are kept, successes are sampled
//
// Whether an upgrade failed is only known when its span ends, so the decision
// cannot be made when the trace starts (head sampling). Instead every span is
// recorded and a local tail-sampling span processor buffers the ended spans of
// each trace until the trace's local root span (the first span of the trace in
// this process: no parent, or a remote parent taken from a traceparent header)
// ends. Then the whole buffered trace is
//
//   - exported if any of its spans has status Error;
//   - otherwise exported with probability Config.SuccessRatio, decided from the
//     trace id exactly as sdktrace.TraceIDRatioBased does, so every process
//     with the same ratio makes the same decision for the same trace.
//
// A remote parent's sampled flag can only lower the cost, never raise it:
//
//   - remote parent sampled: successes are still sampled at SuccessRatio (a
//     client of a public endpoint cannot force every trace to be exported);
//   - remote parent not sampled: the spans are recorded but not marked sampled
//     (the flag propagated downstream stays 0), successes are never exported,
//     and failures are exported all the same, marked sampled in the export.
//
// Spans with no parent, or whose remote parent is sampled, are marked sampled
// when they start (the propagated traceparent has flag 01) even though a
// success may later be dropped: that is inherent to tail sampling. Use
// Provider.Keeps to learn, when the outcome is known, whether a trace will be
// exported (for example to attach a trace id exemplar only when the trace
// will exist in the backend).
//
// The buffer is bounded: at most Config.MaxPendingTraces traces whose local
// root has not ended, and Config.MaxSpansPerTrace spans each besides the local
// root. A span over the per-trace bound is dropped (its failure status still
// counts for the decision). A new trace over the trace bound evicts the oldest pending trace,
// which is decided at once on what it has buffered. A span that ends after its
// trace was decided (a late child, or spans of an evicted trace) follows the
// decision remembered for that trace, or is exported on its own if it failed.
// Every drop is counted in Provider.Stats.
//
// Exported spans go through a BatchSpanProcessor to the exporter.
package tracing
