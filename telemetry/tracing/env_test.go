package tracing

import (
	"context"
	"maps"
	"math"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestNewProviderChoosesExporterFromEnv(t *testing.T) {
	tests := []struct {
		name         string
		env          map[string]string
		wantExporter string
		wantEndpoint string
		wantErr      string
	}{
		{
			name:         "no endpoint means off",
			env:          map[string]string{},
			wantExporter: ExporterNone,
		},
		{
			name: "protocol without endpoint is still off",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			},
			wantExporter: ExporterNone,
		},
		{
			name: "endpoint defaults to http/protobuf with the traces path",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			},
			wantExporter: ExporterOTLPHTTPProtobuf,
			wantEndpoint: "http://collector:4318/v1/traces",
		},
		{
			name: "generic endpoint path is a base",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector/otlp/",
				"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
			},
			wantExporter: ExporterOTLPHTTPProtobuf,
			wantEndpoint: "https://collector/otlp/v1/traces",
		},
		{
			name: "traces endpoint is used as it is and wins",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT":        "http://other:4318",
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/custom",
			},
			wantExporter: ExporterOTLPHTTPProtobuf,
			wantEndpoint: "http://collector:4318/custom",
		},
		{
			name: "http/json",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
				"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
			},
			wantExporter: ExporterOTLPHTTPJSON,
			wantEndpoint: "http://collector:4318/v1/traces",
		},
		{
			name: "grpc",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
				"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
			},
			wantExporter: ExporterOTLPGRPC,
			wantEndpoint: "http://collector:4317",
		},
		{
			name: "traces protocol wins over the generic one",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector:4317/ignored",
				"OTEL_EXPORTER_OTLP_PROTOCOL":        "http/protobuf",
				"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
			},
			wantExporter: ExporterOTLPGRPC,
			wantEndpoint: "https://collector:4317",
		},
		{
			name: "explicit otlp exporter",
			env: map[string]string{
				"OTEL_TRACES_EXPORTER":        "otlp",
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			},
			wantExporter: ExporterOTLPHTTPProtobuf,
			wantEndpoint: "http://collector:4318/v1/traces",
		},
		{
			name: "traces exporter none",
			env: map[string]string{
				"OTEL_TRACES_EXPORTER":        "none",
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			},
			wantExporter: ExporterNone,
		},
		{
			name: "sdk disabled",
			env: map[string]string{
				"OTEL_SDK_DISABLED":           "true",
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			},
			wantExporter: ExporterNone,
		},
		{
			name: "unsupported traces exporter",
			env: map[string]string{
				"OTEL_TRACES_EXPORTER":        "zipkin",
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
			},
			wantErr: "OTEL_TRACES_EXPORTER",
		},
		{
			name: "unsupported protocol",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
				"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift",
			},
			wantErr: "OTEL_EXPORTER_OTLP_PROTOCOL",
		},
		{
			name: "endpoint without scheme",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
			},
			wantErr: "OTEL_EXPORTER_OTLP_ENDPOINT",
		},
		{
			name: "malformed headers",
			env: map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
				"OTEL_EXPORTER_OTLP_HEADERS":  "authorization",
			},
			wantErr: "OTEL_EXPORTER_OTLP_HEADERS",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan, planErr := planFromEnv(mapEnv(tt.env))
			p, err := NewProvider(t.Context(), Config{Env: mapEnv(tt.env)})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewProvider error %v, want one naming %s",
						err, tt.wantErr)
				}
				if planErr == nil {
					t.Fatalf("planFromEnv accepted what NewProvider rejects: %+v",
						plan)
				}
				return
			}
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
			if got := p.Exporter(); got != tt.wantExporter {
				t.Errorf("Exporter() = %q, want %q",
					got, tt.wantExporter)
			}
			if got, want := p.Enabled(), tt.wantExporter != ExporterNone; got != want {
				t.Errorf("Enabled() = %v, want %v",
					got, want)
			}
			if planErr != nil || plan.endpoint != tt.wantEndpoint {
				t.Errorf("plan endpoint %q (error %v), want %q",
					plan.endpoint, planErr, tt.wantEndpoint)
			}
		})
	}
}

func TestParseHeaders(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		want    map[string]string
		wantErr bool
	}{
		{
			name: "empty",
			raw:  " ",
			want: nil,
		},
		{
			name: "pairs with spaces and percent-encoding",
			raw:  "authorization=Bearer%20abc, x-tenant = blue ",
			want: map[string]string{
				"authorization": "Bearer abc",
				"x-tenant":      "blue",
			},
		},
		{
			name: "value may contain '='",
			raw:  "k=a=b",
			want: map[string]string{
				"k": "a=b",
			},
		},
		{
			name:    "missing '='",
			raw:     "k=v,oops",
			wantErr: true,
		},
		{
			name:    "invalid name",
			raw:     "bad key=v",
			wantErr: true,
		},
		{
			name:    "bad escape",
			raw:     "k=%zz",
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseHeaders(tt.raw)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseHeaders(%q) error %v, want error %v",
					tt.raw, err, tt.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "zz") {
				t.Errorf("error %q quotes a header value",
					err)
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("parseHeaders(%q) = %v, want %v",
					tt.raw, got, tt.want)
			}
		})
	}
}

func TestDisabledProviderIsNoop(t *testing.T) {
	tests := []struct {
		name     string
		provider func(t *testing.T) *Provider
	}{
		{
			name: "no endpoint",
			provider: func(t *testing.T) *Provider {
				p, err := NewProvider(t.Context(), Config{Env: mapEnv(nil)})
				if err != nil {
					t.Fatalf("NewProvider: %v",
						err)
				}
				return p
			},
		},
		{
			name: "nil provider",
			provider: func(*testing.T) *Provider {
				return nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.provider(t)
			if p.Enabled() {
				t.Fatalf("Enabled() = true, want false")
			}
			_, span := p.Tracer().Start(t.Context(), "ws.upgrade")
			span.End()
			if span.IsRecording() || span.SpanContext().IsValid() {
				t.Errorf("span recording %v valid %v, want a no-op span",
					span.IsRecording(), span.SpanContext().IsValid())
			}
			if p.Keeps(span.SpanContext(), true) {
				t.Errorf("Keeps = true on a disabled provider")
			}
			if err := p.ForceFlush(t.Context()); err != nil {
				t.Errorf("ForceFlush: %v",
					err)
			}
			if err := p.Shutdown(t.Context()); err != nil {
				t.Errorf("Shutdown: %v",
					err)
			}
		})
	}
}

func TestCustomExporterWinsOverEnv(t *testing.T) {
	p, err := NewProvider(t.Context(), Config{
		Exporter: tracetest.NewInMemoryExporter(),
		Env: mapEnv(map[string]string{
			"OTEL_TRACES_EXPORTER": "none",
		}),
	})
	if err != nil {
		t.Fatalf("NewProvider: %v",
			err)
	}
	defer func() {
		if err := p.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v",
				err)
		}
	}()
	if !p.Enabled() || p.Exporter() != ExporterCustom {
		t.Fatalf("Enabled %v exporter %q, want enabled %q",
			p.Enabled(), p.Exporter(), ExporterCustom)
	}
	_, span := p.Tracer().Start(t.Context(), "ws.upgrade")
	defer span.End()
	if !span.IsRecording() || span.SpanContext().TraceFlags() != trace.FlagsSampled {
		t.Errorf("root span recording %v flags %v, want recording and sampled",
			span.IsRecording(), span.SpanContext().TraceFlags())
	}
}

func TestNewProviderRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{
			name: "NaN ratio",
			cfg: Config{
				SuccessRatio: math.NaN(),
			},
		},
		{
			name: "negative trace bound",
			cfg: Config{
				MaxPendingTraces: -1,
			},
		},
		{
			name: "negative span bound",
			cfg: Config{
				MaxSpansPerTrace: -1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Env = mapEnv(nil)
			if _, err := NewProvider(t.Context(), tt.cfg); err == nil {
				t.Fatalf("NewProvider(%+v) succeeded, want an error",
					tt.cfg)
			}
		})
	}
}
