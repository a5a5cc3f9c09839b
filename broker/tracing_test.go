package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// keepAll is a Traces that keeps every trace and records what it was asked
// to turn into spans.
type keepAll struct {
	mu   sync.Mutex
	kept []event.Event
}

func (k *keepAll) Keeps(trace.SpanContext, bool) bool { return true }

func (k *keepAll) Observe(_ context.Context, e *event.Event) {
	if e.Sampled {
		k.mu.Lock()
		k.kept = append(k.kept, *e)
		k.mu.Unlock()
	}
}

// TestRejectionTracesCapped: a flood of one reason exports at most
// TraceFailureRate traces per second, while every attempt is counted and
// only exported traces are announced in X-Trace-Id.
func TestRejectionTracesCapped(t *testing.T) {
	tr := &keepAll{}
	b := newTestBroker(t, brokerOpts{
		cfg:    func(c *Config) { c.TraceFailureRate, c.FailureBurst = 3, 0 },
		traces: tr,
	})
	withID := 0
	for range 10 {
		r := b.doHandshake(handshakeReq{})
		if r.resp.Header.Get("X-Trace-Id") != "" {
			withID++
		}
	}
	labels := map[string]string{"result": "rejected", "reason": "missing_token", "source": "none"}
	// The answer is written before the event is emitted: wait for both.
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if got := testkit.Metric(t, b.reg, "wsbroker_upgrades_total", labels); got != 10 {
			return fmt.Errorf("counted %v rejections, want 10", got)
		}
		tr.mu.Lock()
		kept := len(tr.kept)
		tr.mu.Unlock()
		if kept < 3 || kept > 4 || withID != kept {
			return fmt.Errorf("%d traces kept, %d answers with X-Trace-Id; want 3 (4 if a second passed), equal", kept, withID)
		}
		return nil
	})
}
