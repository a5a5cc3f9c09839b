package tracing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Defaults applied by NewProvider to zero Config fields.
const (
	DefaultServiceName      = "wsbroker"
	DefaultSuccessRatio     = 0.01
	DefaultMaxPendingTraces = 1024
	DefaultMaxSpansPerTrace = 64

	// NoSuccesses as Config.SuccessRatio exports failed traces only (a zero
	// ratio means the default).
	NoSuccesses = -1.0

	// InstrumentationName is the instrumentation scope of Provider.Tracer.
	InstrumentationName = "github.com/wsbroker/wsbroker"
)

// Config configures NewProvider.
type Config struct {
	// ServiceName is the resource's service.name; DefaultServiceName if empty.
	ServiceName string
	// ServiceVersion is the resource's service.version and the tracer's
	// instrumentation version.
	ServiceVersion string
	// NodeID is the resource's service.instance.id.
	NodeID string
	// SuccessRatio is the share of successful traces exported, decided from
	// the trace id. Zero means DefaultSuccessRatio; a negative value (use
	// NoSuccesses) exports none; 1 or more exports all. Failed traces are
	// always exported.
	SuccessRatio float64
	// MaxPendingTraces bounds the traces buffered while their local root is
	// open; DefaultMaxPendingTraces if zero.
	MaxPendingTraces int
	// MaxSpansPerTrace bounds the spans buffered per trace, not counting its
	// local root spans, which are always kept; DefaultMaxSpansPerTrace if zero.
	MaxSpansPerTrace int
	// Exporter, if set, receives the kept spans instead of an OTLP exporter
	// built from the environment, and tracing is on whatever the environment
	// says (tests use tracetest.NewInMemoryExporter).
	Exporter sdktrace.SpanExporter
	// Env looks up environment variables; os.Getenv if nil. It is the source of
	// OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER and
	// OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,PROTOCOL,HEADERS}.
	Env func(string) string
}

// Provider owns the tracer provider of one broker process. The zero value and
// a nil *Provider are disabled providers.
type Provider struct {
	sdk      *sdktrace.TracerProvider
	tracer   trace.Tracer
	tail     *tailSampler
	ratio    successRatio
	exporter string
}

// NewProvider builds the provider. Tracing is on when cfg.Exporter is set, or
// when the environment names an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and neither OTEL_TRACES_EXPORTER=none
// nor OTEL_SDK_DISABLED=true says otherwise. OTEL_EXPORTER_OTLP_PROTOCOL (or
// its TRACES_ form) picks the exporter: http/protobuf (the default),
// http/json or grpc. Endpoint, protocol and headers are read through cfg.Env;
// the exporters read the remaining OTEL_EXPORTER_OTLP_* settings (TLS files,
// compression, timeout) and OTEL_BSP_* from the process environment.
// OTEL_TRACES_SAMPLER is ignored: sampling is the tail sampling described in
// the package documentation.
func NewProvider(ctx context.Context, cfg Config) (*Provider, error) {
	if math.IsNaN(cfg.SuccessRatio) {
		return nil, errors.New("tracing: success ratio is NaN")
	}
	if cfg.MaxPendingTraces < 0 || cfg.MaxSpansPerTrace < 0 {
		return nil, fmt.Errorf("tracing: negative buffer bound (traces %d, spans per trace %d)", cfg.MaxPendingTraces, cfg.MaxSpansPerTrace)
	}
	cfg = withDefaults(cfg)

	exp, kind := cfg.Exporter, ExporterCustom
	if exp == nil {
		plan, err := planFromEnv(cfg.Env)
		if err != nil {
			return nil, fmt.Errorf("tracing: exporter from environment: %w", err)
		}
		if plan.kind == ExporterNone {
			return &Provider{exporter: ExporterNone}, nil
		}
		exp, err = newExporter(ctx, plan)
		if err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
		kind = plan.kind
	}

	attrs := []attribute.KeyValue{semconv.ServiceName(cfg.ServiceName)}
	if cfg.ServiceVersion != "" {
		attrs = append(attrs, semconv.ServiceVersion(cfg.ServiceVersion))
	}
	if cfg.NodeID != "" {
		attrs = append(attrs, semconv.ServiceInstanceID(cfg.NodeID))
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(attrs...),
	)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("tracing: build resource: %w", err), exp.Shutdown(ctx))
	}

	ratio := newSuccessRatio(cfg.SuccessRatio)
	tail := newTailSampler(sdktrace.NewBatchSpanProcessor(exp), ratio, cfg.MaxPendingTraces, cfg.MaxSpansPerTrace)
	sdk := sdktrace.NewTracerProvider(
		sdktrace.WithResource(res),
		sdktrace.WithSampler(recordAll{}),
		sdktrace.WithIDGenerator(presetIDs{}),
		sdktrace.WithSpanProcessor(tail),
	)
	return &Provider{
		sdk:      sdk,
		tracer:   sdk.Tracer(InstrumentationName, trace.WithInstrumentationVersion(cfg.ServiceVersion)),
		tail:     tail,
		ratio:    ratio,
		exporter: kind,
	}, nil
}

func withDefaults(cfg Config) Config {
	if cfg.ServiceName == "" {
		cfg.ServiceName = DefaultServiceName
	}
	if cfg.SuccessRatio == 0 {
		cfg.SuccessRatio = DefaultSuccessRatio
	}
	if cfg.MaxPendingTraces == 0 {
		cfg.MaxPendingTraces = DefaultMaxPendingTraces
	}
	if cfg.MaxSpansPerTrace == 0 {
		cfg.MaxSpansPerTrace = DefaultMaxSpansPerTrace
	}
	if cfg.Env == nil {
		cfg.Env = os.Getenv
	}
	return cfg
}

// Enabled reports whether spans are recorded and exported.
func (p *Provider) Enabled() bool { return p != nil && p.sdk != nil }

// Exporter names the exporter in use, one of the Exporter* constants, for
// the startup log line.
func (p *Provider) Exporter() string {
	if p == nil || p.exporter == "" {
		return ExporterNone
	}
	return p.exporter
}

// TracerProvider returns the OpenTelemetry tracer provider, a no-op one when
// tracing is off.
func (p *Provider) TracerProvider() trace.TracerProvider {
	if !p.Enabled() {
		return noop.NewTracerProvider()
	}
	return p.sdk
}

// Tracer returns the broker's tracer, a no-op tracer when tracing is off.
func (p *Provider) Tracer() trace.Tracer {
	if !p.Enabled() {
		return noop.NewTracerProvider().Tracer(InstrumentationName)
	}
	return p.tracer
}

// Propagator returns the propagator for the traceparent header (W3C Trace
// Context), to continue a client's trace.
func (p *Provider) Propagator() propagation.TextMapPropagator {
	return propagation.TraceContext{}
}

// Keeps reports whether the trace of sc will be exported, given whether it
// failed: true for every failure, for a success when sc is sampled and its
// trace id falls within the success ratio. Use it to attach trace id
// exemplars only to traces that will exist in the backend.
func (p *Provider) Keeps(sc trace.SpanContext, failed bool) bool {
	if !p.Enabled() || !sc.IsValid() {
		return false
	}
	return failed || (sc.IsSampled() && p.ratio.keeps(sc.TraceID()))
}

// Stats returns the tail sampler's counters; zero when tracing is off.
func (p *Provider) Stats() Stats {
	if !p.Enabled() {
		return Stats{}
	}
	return p.tail.snapshot()
}

// ForceFlush exports every span of the traces decided so far.
func (p *Provider) ForceFlush(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	if err := p.sdk.ForceFlush(ctx); err != nil {
		return fmt.Errorf("tracing: flush: %w", err)
	}
	return nil
}

// Shutdown decides the traces still buffered, exports what is kept and stops
// the exporter. Spans started afterwards are not recorded.
func (p *Provider) Shutdown(ctx context.Context) error {
	if !p.Enabled() {
		return nil
	}
	if err := p.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("tracing: shut down: %w", err)
	}
	return nil
}
