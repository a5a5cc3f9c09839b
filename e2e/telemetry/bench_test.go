package telemetrye2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/broker/brokertest"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/tracing"
)

// telemetryLevel is how much of the broker's telemetry a benchmark runs.
type telemetryLevel int

const (
	// telemetryOff: no sink, no tracer, logs discarded. The Metrics
	// collectors still exist (the broker requires them; verify durations
	// and handshake errors are observed on them directly) but nothing
	// derives metrics from events.
	telemetryOff telemetryLevel = iota
	// telemetryMetrics: the metrics sink only.
	telemetryMetrics
	// telemetryLogs: metrics and the event logger (JSON to io.Discard).
	telemetryLogs
	// telemetryFull: metrics, the event logger (JSON to io.Discard) and
	// tracing with an in-memory exporter, successes kept at 1% as in
	// production (failures are always kept).
	telemetryFull
)

// BenchmarkUpgrade measures accepted upgrades per second (dial, handshake
// with an HS256 bearer token, 101, close) against an in-process broker,
// with the telemetry off, metrics only, and fully on; the observability
// tax is the ratio of the ns/op, or of the cpu-ns/op on a busy machine.
// Run:
//
//	go test -run '^$' -bench BenchmarkUpgrade -benchtime 3s -count 5 ./e2e/telemetry
func BenchmarkUpgrade(b *testing.B) {
	for _, bc := range []struct {
		name  string
		level telemetryLevel
	}{
		{
			name:  "telemetry=off",
			level: telemetryOff,
		},
		{
			name:  "telemetry=metrics",
			level: telemetryMetrics,
		},
		{
			name:  "telemetry=metrics+log",
			level: telemetryLogs,
		},
		{
			name:  "telemetry=full",
			level: telemetryFull,
		},
	} {
		b.Run(bc.name, func(b *testing.B) {
			addr := benchBroker(b, bc.level)
			tok := token(b, claims("bench"), nil)
			req := []byte(fmt.Sprintf("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsbroker.v1\r\nAuthorization: Bearer %s\r\n\r\n", addr, tok))
			// Warm the pools and check the setup once.
			if err := upgradeOnce(addr, req); err != nil {
				b.Fatalf("upgrade: %v",
					err)
			}
			b.ReportAllocs()
			cpu0 := testkit.ProcessCPU(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := upgradeOnce(addr, req); err != nil {
						b.Errorf("upgrade: %v",
							err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "upgrades/s")
			// CPU time (user+system, client and server: the client's share
			// is the same at every level) is steadier than wall time on a
			// busy machine.
			b.ReportMetric(float64(testkit.ProcessCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// upgradeOnce dials, upgrades, and resets the connection (no TIME_WAIT on
// the client side, so long runs do not run out of ports).
func upgradeOnce(addr string, req []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer func() {
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return fmt.Errorf("status %d (%s)", resp.StatusCode, resp.Header.Get("X-Wsbroker-Reason"))
	}
	return nil
}

// benchBroker starts an in-process broker on a loopback port with the given
// telemetry and returns its address; it is closed when the benchmark ends.
func benchBroker(b *testing.B, level telemetryLevel) string {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	logger, err := telemetry.NewLogger(io.Discard, "json", slog.LevelInfo)
	if err != nil {
		b.Fatalf("logger: %v",
			err)
	}
	o := brokertest.Options{
		Secret:   testSecret,
		Registry: telemetry.NewRegistry(),
		Config: func(c *broker.Config) {
			c.Node = "bench"
			c.MaxConnsPerSubject = 0
		},
	}
	switch level {
	case telemetryOff:
		o.NoEventMetrics = true
	case telemetryLogs:
		o.Sinks, o.Logger = []event.Sink{telemetry.NewEventLogger(logger)}, logger
	case telemetryFull:
		tp, err := tracing.NewProvider(ctx, tracing.Config{
			ServiceVersion: "bench",
			NodeID:         "bench",
			SuccessRatio:   0.01,
			Exporter:       tracetest.NewInMemoryExporter(),
		})
		if err != nil {
			b.Fatalf("tracing: %v",
				err)
		}
		b.Cleanup(func() {
			if err := tp.Shutdown(context.Background()); err != nil {
				b.Errorf("tracing shutdown: %v",
					err)
			}
		})
		o.Sinks, o.Logger, o.Traces = []event.Sink{telemetry.NewEventLogger(logger)}, logger, tp
	}
	return brokertest.Start(b, o).Addr
}
