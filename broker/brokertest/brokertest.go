// Package brokertest runs an in-process broker for tests, wired like
// `wsbroker serve` (extractor, HS256 verifier, metrics on a fresh registry,
// event sinks) on a loopback listener, the way net/http/httptest runs an
// HTTP server. The test ends it: Start registers Close as a cleanup.
package brokertest

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// Options configures Start. Only Secret is required.
type Options struct {
	// Secret is the HS256 verification secret.
	Secret []byte
	// Sources is the extraction order (authn.ParseSources); default
	// "header,subprotocol".
	Sources string
	// Verify adjusts the verifier's configuration (keys, issuer, clock).
	Verify func(*authn.VerifyConfig)
	// Origins is the allowed-origins list.
	Origins []string
	// Config adjusts the broker's configuration after the test defaults
	// (broker.DefaultConfig, node "test", the per-address failure limiter
	// off: tests fail many handshakes from one address on purpose).
	Config func(*broker.Config)
	// Sinks receive every event after the metrics.
	Sinks []event.Sink
	// NoEventMetrics leaves the metrics out of the event sinks: nothing is
	// derived from events (the telemetry-tax benchmarks' baseline).
	NoEventMetrics bool
	// Traces and Logger are the broker's, when set.
	Traces broker.Traces
	Logger *slog.Logger
	// Addr is the listen address; default a free loopback port.
	Addr string
	// TLS, when set, serves wss.
	TLS *tls.Config
	// Registry receives the metrics; default a fresh prometheus.Registry.
	Registry *prometheus.Registry
}

// Broker is a running in-process broker.
type Broker struct {
	Server *broker.Server
	Addr   string
	// URL is the WebSocket URL of the upgrade path: ws://Addr/ws (wss with
	// TLS).
	URL      string
	Registry *prometheus.Registry
	Metrics  *telemetry.Metrics

	t     testing.TB
	done  chan error
	close sync.Once
}

// Start starts a broker and stops it when the test ends.
func Start(t testing.TB, o Options) *Broker {
	t.Helper()
	if o.Sources == "" {
		o.Sources = "header,subprotocol"
	}
	sources, err := authn.ParseSources(o.Sources)
	if err != nil {
		t.Fatalf("brokertest: sources: %v", err)
	}
	ecfg := authn.DefaultExtractConfig()
	ecfg.Sources = sources
	ex, err := authn.NewExtractor(ecfg)
	if err != nil {
		t.Fatalf("brokertest: extractor: %v", err)
	}
	vcfg := authn.VerifyConfig{HMACSecret: o.Secret}
	if o.Verify != nil {
		o.Verify(&vcfg)
	}
	vctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ver, err := authn.NewVerifier(vctx, vcfg)
	if err != nil {
		t.Fatalf("brokertest: verifier: %v", err)
	}
	origins, err := authn.ParseOrigins(o.Origins)
	if err != nil {
		t.Fatalf("brokertest: origins: %v", err)
	}
	reg := o.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := telemetry.NewMetrics(reg, "test")
	sinks := event.Sinks{m}
	if o.NoEventMetrics {
		sinks = nil
	}
	deps := broker.Deps{
		Extractor: ex,
		Verifier:  ver,
		Origins:   origins,
		Metrics:   m,
		Sink:      append(sinks, o.Sinks...),
		Traces:    o.Traces,
		Logger:    o.Logger,
	}
	cfg := broker.DefaultConfig()
	cfg.Node = "test"
	cfg.FailureBurst = 0
	if o.Config != nil {
		o.Config(&cfg)
	}
	srv, err := broker.New(cfg, deps)
	if err != nil {
		t.Fatalf("brokertest: broker: %v", err)
	}
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	// A TLS listener wraps net's: TLS connections are read by a goroutine
	// each (the fallback of package poller), through Go's network poller.
	var ln net.Listener
	if o.TLS != nil {
		ln, err = net.Listen("tcp", o.Addr)
	} else {
		ln, err = broker.Listen(context.Background(), o.Addr)
	}
	if err != nil {
		srv.Close()
		t.Fatalf("brokertest: listen: %v", err)
	}
	scheme := "ws"
	if o.TLS != nil {
		ln = tls.NewListener(ln, o.TLS)
		scheme = "wss"
	}
	b := &Broker{
		Server: srv, Addr: ln.Addr().String(), Registry: reg, Metrics: m,
		t: t, done: make(chan error, 1),
	}
	b.URL = scheme + "://" + b.Addr + cfg.WSPath
	go func() { b.done <- srv.Serve(ln) }()
	t.Cleanup(b.Close)
	return b
}

// Close stops the broker and reports, as test errors, what Close and Serve
// returned. It is safe to call more than once.
func (b *Broker) Close() {
	b.close.Do(func() {
		if err := b.Server.Close(); err != nil {
			b.t.Errorf("brokertest: close: %v", err)
		}
		if err := <-b.done; err != nil {
			b.t.Errorf("brokertest: serve: %v", err)
		}
	})
}
