package tracing

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Exporter kinds reported by Provider.Exporter.
const (
	ExporterNone             = "none"
	ExporterCustom           = "custom"
	ExporterOTLPHTTPProtobuf = "otlp/http/protobuf"
	ExporterOTLPHTTPJSON     = "otlp/http/json"
	ExporterOTLPGRPC         = "otlp/grpc"
)

// Environment variables read through Config.Env.
const (
	envSDKDisabled     = "OTEL_SDK_DISABLED"
	envTracesExporter  = "OTEL_TRACES_EXPORTER"
	envEndpoint        = "OTEL_EXPORTER_OTLP_ENDPOINT"
	envTracesEndpoint  = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	envProtocol        = "OTEL_EXPORTER_OTLP_PROTOCOL"
	envTracesProtocol  = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
	envHeaders         = "OTEL_EXPORTER_OTLP_HEADERS"
	envTracesHeaders   = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
	defaultTracesPath  = "/v1/traces"
	protocolHTTPProto  = "http/protobuf"
	protocolHTTPJSON   = "http/json"
	protocolGRPC       = "grpc"
	tracesExporterOTLP = "otlp"
	tracesExporterNone = "none"
)

// exportPlan is what the environment asks for.
type exportPlan struct {
	kind string
	// endpoint is the URL handed to the exporter: for OTLP/HTTP the full URL of
	// the traces resource, for gRPC scheme and host.
	endpoint string
	headers  map[string]string
}

// planFromEnv reads the OTEL_* variables. A plan of kind ExporterNone means
// tracing is off.
func planFromEnv(env func(string) string) (exportPlan, error) {
	if strings.EqualFold(strings.TrimSpace(env(envSDKDisabled)), "true") {
		return exportPlan{kind: ExporterNone}, nil
	}
	switch v := strings.TrimSpace(env(envTracesExporter)); v {
	case "", tracesExporterOTLP:
	case tracesExporterNone:
		return exportPlan{kind: ExporterNone}, nil
	default:
		return exportPlan{}, fmt.Errorf("%s=%q: only %q and %q are supported", envTracesExporter, v, tracesExporterOTLP, tracesExporterNone)
	}

	name, raw, perSignal := envTracesEndpoint, strings.TrimSpace(env(envTracesEndpoint)), true
	if raw == "" {
		name, raw, perSignal = envEndpoint, strings.TrimSpace(env(envEndpoint)), false
	}
	if raw == "" {
		return exportPlan{kind: ExporterNone}, nil
	}
	u, err := parseEndpoint(raw)
	if err != nil {
		return exportPlan{}, fmt.Errorf("%s: %w", name, err)
	}

	protoName, proto := envTracesProtocol, strings.TrimSpace(env(envTracesProtocol))
	if proto == "" {
		protoName, proto = envProtocol, strings.TrimSpace(env(envProtocol))
	}
	plan := exportPlan{}
	switch proto {
	case "", protocolHTTPProto:
		plan.kind = ExporterOTLPHTTPProtobuf
	case protocolHTTPJSON:
		plan.kind = ExporterOTLPHTTPJSON
	case protocolGRPC:
		plan.kind = ExporterOTLPGRPC
	default:
		return exportPlan{}, fmt.Errorf("%s=%q: want %q, %q or %q", protoName, proto, protocolHTTPProto, protocolHTTPJSON, protocolGRPC)
	}

	switch {
	case plan.kind == ExporterOTLPGRPC:
		plan.endpoint = (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
	case perSignal:
		// A per-signal URL is used as it is.
		plan.endpoint = u.String()
	default:
		// The generic URL is a base to which the signal path is appended.
		base := *u
		base.Path = path.Join("/", u.Path, defaultTracesPath)
		base.RawPath = ""
		plan.endpoint = base.String()
	}

	headersName, rawHeaders := envTracesHeaders, env(envTracesHeaders)
	if strings.TrimSpace(rawHeaders) == "" {
		headersName, rawHeaders = envHeaders, env(envHeaders)
	}
	plan.headers, err = parseHeaders(rawHeaders)
	if err != nil {
		return exportPlan{}, fmt.Errorf("%s: %w", headersName, err)
	}
	return plan, nil
}

func parseEndpoint(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parse endpoint URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("endpoint %q: want a URL such as http://collector:4318", raw)
	}
	return u, nil
}

// parseHeaders parses "k1=v1,k2=v2" with percent-encoded values, as the OTLP
// exporters do. Errors never quote a value: headers carry credentials.
func parseHeaders(raw string) (map[string]string, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, nil
	}
	headers := make(map[string]string)
	for i, pair := range strings.Split(raw, ",") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, fmt.Errorf("header %d: missing '='", i+1)
		}
		k = strings.TrimSpace(k)
		if !isHeaderToken(k) {
			return nil, fmt.Errorf("header %d: invalid name %q", i+1, k)
		}
		value, err := url.PathUnescape(v)
		if err != nil {
			return nil, fmt.Errorf("header %q: value is not percent-encoded correctly", k)
		}
		headers[k] = strings.TrimSpace(value)
	}
	return headers, nil
}

func isHeaderToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

var errNoExporter = errors.New("no exporter for this plan")

// newExporter builds the OTLP exporter of the plan. Settings the plan does not
// carry (TLS files, compression, timeout) the exporters read from the process
// environment themselves.
func newExporter(ctx context.Context, plan exportPlan) (sdktrace.SpanExporter, error) {
	switch plan.kind {
	case ExporterOTLPHTTPProtobuf, ExporterOTLPHTTPJSON:
		enc := otlptracehttp.EncodingProtobuf
		if plan.kind == ExporterOTLPHTTPJSON {
			enc = otlptracehttp.EncodingJSON
		}
		opts := []otlptracehttp.Option{
			otlptracehttp.WithEndpointURL(plan.endpoint),
			otlptracehttp.WithEncoding(enc),
		}
		if plan.headers != nil {
			opts = append(opts, otlptracehttp.WithHeaders(plan.headers))
		}
		exp, err := otlptracehttp.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("otlp/http exporter for %s: %w", plan.endpoint, err)
		}
		return exp, nil
	case ExporterOTLPGRPC:
		opts := []otlptracegrpc.Option{
			otlptracegrpc.WithEndpointURL(plan.endpoint),
		}
		if plan.headers != nil {
			opts = append(opts, otlptracegrpc.WithHeaders(plan.headers))
		}
		exp, err := otlptracegrpc.New(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("otlp/grpc exporter for %s: %w", plan.endpoint, err)
		}
		return exp, nil
	}
	return nil, fmt.Errorf("exporter %q: %w", plan.kind, errNoExporter)
}
