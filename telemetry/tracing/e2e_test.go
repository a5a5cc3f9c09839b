package tracing_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/telemetry/tracing"
	"github.com/wsbroker/wsbroker/telemetry/tracing/jaegertest"
)

// TestEndToEndJaeger exports through OTLP, configured by the environment, to
// a real Jaeger and reads the trace back from its query API. It fails when
// the Jaeger binary is missing: build it with tools/jaeger/build.sh.
func TestEndToEndJaeger(t *testing.T) {
	j := jaegertest.Start(t)
	tests := []struct {
		name     string
		protocol string
		endpoint string
	}{
		{
			name:     "otlp http",
			protocol: "http/protobuf",
			endpoint: j.OTLPHTTPEndpoint(),
		},
		{
			name:     "otlp grpc",
			protocol: "grpc",
			endpoint: j.OTLPGRPCEndpoint(),
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			service := fmt.Sprintf("wsbroker-e2e-%d", i)
			env := map[string]string{
				"OTEL_EXPORTER_OTLP_ENDPOINT": tt.endpoint,
				"OTEL_EXPORTER_OTLP_PROTOCOL": tt.protocol,
			}
			p, err := tracing.NewProvider(t.Context(), tracing.Config{
				ServiceName:    service,
				ServiceVersion: "v0.0.0-test",
				NodeID:         "node-1",
				SuccessRatio:   tracing.NoSuccesses,
				Env:            func(k string) string { return env[k] },
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
			if p.Exporter() == tracing.ExporterNone {
				t.Fatalf("tracing is off with %v",
					env)
			}

			ok := upgrade(t.Context(), p.Tracer(), "")
			failed := upgrade(t.Context(), p.Tracer(), "expired")
			if err := p.ForceFlush(t.Context()); err != nil {
				t.Fatalf("ForceFlush: %v",
					err)
			}

			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			want := failed.TraceID().String()
			tr, err := j.WaitForTrace(ctx, service, func(tr jaegertest.Trace) bool {
				return tr.TraceID == want && len(tr.Spans) == 3
			})
			if err != nil {
				t.Fatalf("failed upgrade trace %s never reached Jaeger: %v\njaeger logs:\n%s",
					want, err, j.Logs())
			}
			checkFailedUpgrade(t, tr, failed)

			// The success was sampled out (ratio 0) and exported nothing: it
			// was decided before the failure, so it would have arrived with it.
			traces, err := j.Traces(t.Context(), service)
			if err != nil {
				t.Fatalf("Traces: %v",
					err)
			}
			for _, tr := range traces {
				if tr.TraceID == ok.TraceID().String() {
					t.Errorf("successful trace %s exported at ratio 0",
						tr.TraceID)
				}
			}
		})
	}
}

// upgrade records a ws.upgrade trace as the broker does; reason "" is a
// success.
func upgrade(ctx context.Context, tr trace.Tracer, reason string) trace.SpanContext {
	ctx, root := tr.Start(ctx, "ws.upgrade", trace.WithSpanKind(trace.SpanKindServer))
	_, extract := tr.Start(ctx, "authn.extract")
	extract.AddEvent("source.checked", trace.WithAttributes(
		attribute.String("source", "subprotocol"),
		attribute.Bool("found", false),
		attribute.String("outcome", "absent"),
	))
	extract.AddEvent("source.checked", trace.WithAttributes(
		attribute.String("source", "header"),
		attribute.Bool("found", true),
		attribute.String("outcome", "found"),
	))
	extract.End()
	_, verify := tr.Start(ctx, "authn.verify")
	verify.SetAttributes(attribute.String("alg", "RS256"))
	if reason != "" {
		verify.SetAttributes(attribute.String("reason", reason))
		verify.SetStatus(codes.Error, reason)
		root.SetAttributes(attribute.String("error.type", reason))
		root.SetStatus(codes.Error, reason)
	}
	verify.End()
	root.End()
	return root.SpanContext()
}

func checkFailedUpgrade(t *testing.T, tr jaegertest.Trace, sc trace.SpanContext) {
	t.Helper()
	root, ok := tr.Span("ws.upgrade")
	if !ok {
		t.Fatalf("trace %s has no ws.upgrade span: %+v",
			tr.TraceID, tr.Spans)
	}
	if root.SpanID != sc.SpanID().String() || root.ParentSpanID() != "" {
		t.Errorf("ws.upgrade span %s parent %q, want span %s without parent",
			root.SpanID, root.ParentSpanID(), sc.SpanID())
	}
	wantTags := map[string]string{
		"error.type":       "expired",
		"otel.status_code": "ERROR",
		"span.kind":        "server",
	}
	for k, v := range wantTags {
		if got := root.TagString(k); got != v {
			t.Errorf("ws.upgrade tag %s = %q, want %q",
				k, got, v)
		}
	}
	if got := tr.ServiceName(root); got == "" {
		t.Errorf("ws.upgrade has no service name")
	}

	for _, name := range []string{"authn.extract", "authn.verify"} {
		s, ok := tr.Span(name)
		if !ok {
			t.Errorf("trace %s has no %s span",
				tr.TraceID, name)
			continue
		}
		if s.ParentSpanID() != root.SpanID {
			t.Errorf("%s parent %q, want ws.upgrade %s",
				name, s.ParentSpanID(), root.SpanID)
		}
	}
	extract, _ := tr.Span("authn.extract")
	events := extract.Events("source.checked")
	if len(events) != 2 {
		t.Fatalf("authn.extract has %d source.checked events, want 2: %+v",
			len(events), extract.Logs)
	}
	if src, _ := events[1].Field("source"); src != "header" {
		t.Errorf("second source.checked event source = %v, want header",
			src)
	}
	verify, _ := tr.Span("authn.verify")
	if got := verify.TagString("reason"); got != "expired" {
		t.Errorf("authn.verify reason = %q, want expired",
			got)
	}
}
