package eventlog

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// A full queue drops and counts; Observe never waits for room.
func TestObserveFullQueueDrops(t *testing.T) {
	m := &fakeMetrics{}
	// No appender drains this queue, so it stays full.
	l := &Log{cfg: Config{Metrics: m, RejectLimit: -1}, queue: newQueue(2)}
	for i := range uint64(5) {
		l.Observe(context.Background(), opened("node-1", 1, i+1, i+1, "alice"))
	}
	if got := m.errors.Load(); got != 3 {
		t.Errorf("publish errors %d, want 3",
			got)
	}
	if got := l.enqueued.Load(); got != 2 {
		t.Errorf("enqueued %d, want 2",
			got)
	}
}

// The accepted path does not allocate (DESIGN.md §1).
func TestObserveDoesNotAllocate(t *testing.T) {
	l := &Log{cfg: Config{RejectLimit: DefaultRejectLimit}, queue: newQueue(1)}
	e := opened("node-1", 1, 1, 1, "alice")
	buf := make([]event.Event, 0, 1)
	allocs := testing.AllocsPerRun(100, func() {
		l.Observe(context.Background(), e)
		buf = l.queue.pop(buf[:0], 1)
	})
	if allocs != 0 {
		t.Fatalf("Observe allocates %.1f times per event",
			allocs)
	}
}

func TestTail(t *testing.T) {
	l := openLog(t, Config{DataDir: t.TempDir()})
	ctx := testContext(t)
	l.Observe(ctx, rejected("node-1", 1, 1, authn.ReasonBadSignature))
	flush(t, l)

	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	var got []event.Event
	done := make(chan error, 1)
	go func() {
		done <- l.Tail(tctx, Query{Type: event.TypeUpgradeRejected}, func(r *Record) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, r.Event)
			return nil
		})
	}()
	// Tail starts at "now": keep appending until one arrives, so the test
	// does not depend on when the consumer became ready.
	seq := uint64(1)
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		seq++
		l.Observe(ctx, rejected("node-1", 1, seq, authn.ReasonExpired))
		l.Observe(ctx, opened("node-1", 1, 1000+seq, 1000+seq, "not-a-rejection"))
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			return fmt.Errorf("nothing tailed yet")
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Tail: %v",
			err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, e := range got {
		if e.Seq == 1 {
			t.Errorf("tail delivered %s, appended before it started",
				e.ID())
		}
		if e.Type != event.TypeUpgradeRejected {
			t.Errorf("tail of rejections delivered a %s",
				e.Type)
		}
	}
}

// BenchmarkObserve measures the producers' side of an append: copying the
// event into the queue.
func BenchmarkObserve(b *testing.B) {
	l := &Log{cfg: Config{RejectLimit: DefaultRejectLimit}, queue: newQueue(1)}
	e := opened("node-1", 1, 1, 1, "alice")
	buf := make([]event.Event, 0, 1)
	b.ReportAllocs()
	for b.Loop() {
		l.Observe(context.Background(), e)
		buf = l.queue.pop(buf[:0], 1)
	}
}

// BenchmarkObserveRejectedFlood measures a flood of one reason, mostly
// folded into a suppressed count.
func BenchmarkObserveRejectedFlood(b *testing.B) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l := &Log{
		cfg:     Config{RejectLimit: DefaultRejectLimit, Now: func() time.Time { return now }},
		queue:   newQueue(2 * DefaultRejectLimit),
		sampler: newSampler(DefaultRejectLimit),
	}
	e := rejected("node-1", 1, 1, authn.ReasonExpired)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Observe(context.Background(), e)
		}
	})
}

// BenchmarkAppend measures appends through the embedded JetStream as the
// broker makes them: after this node's node.started (so its own events are
// folded into the projection at their ack, as in production), each op is
// one accepted connection's connection.opened and connection.closed, observed
// and appended, waiting for the acks every half queue. Besides wall time
// per op (latency-bound: the appender waits for a batch's acks) it reports
// the process's CPU per op (the appender, the embedded server's stream and
// consumer, the acks, the projection) and the allocations of all of them.
func BenchmarkAppend(b *testing.B) {
	l, err := Open(context.Background(), Config{DataDir: b.TempDir(), Node: "bench"})
	if err != nil {
		b.Fatalf("Open: %v",
			err)
	}
	defer l.Close(context.Background())
	start := NodeEvent(event.TypeNodeStarted, "bench", 1, time.Now())
	l.Observe(context.Background(), &start)
	if err := l.Flush(context.Background()); err != nil {
		b.Fatalf("Flush: %v",
			err)
	}
	e := opened("bench", 1, 0, 0, "alice")
	e.RemoteIP = netip.MustParseAddr("127.0.0.2")
	e.UserAgent = "loadclient"
	e.Path = "/ws"
	e.Alg = "HS256"
	closed := *e
	closed.Type = event.TypeConnectionClosed
	closed.CloseReason = event.CloseReadError
	closed.Duration = 3 * time.Millisecond
	b.ReportAllocs()
	cpu0 := testkit.ProcessCPU(b)
	b.ResetTimer()
	i := uint64(0)
	for b.Loop() {
		i++
		e.Seq, e.ConnID = 2*i, i
		l.Observe(context.Background(), e)
		closed.Seq, closed.ConnID = 2*i+1, i
		l.Observe(context.Background(), &closed)
		if i%(DefaultQueueSize/4) == 0 {
			// Stay under the queue bound: a benchmark that drops measures
			// nothing.
			if err := l.Flush(context.Background()); err != nil {
				b.Fatalf("Flush: %v",
					err)
			}
		}
	}
	if err := l.Flush(context.Background()); err != nil {
		b.Fatalf("Flush: %v",
			err)
	}
	b.StopTimer()
	b.ReportMetric(float64(testkit.ProcessCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	if p := l.Projection().Presence(); p.Connections != 0 {
		b.Fatalf("presence %+v, want every connection closed",
			p)
	}
}

// An event the stream refuses for its size is counted and dropped rather
// than retried forever (which would wedge every later append).
func TestOversizedEventDropped(t *testing.T) {
	m := &fakeMetrics{}
	l := openLog(t, Config{DataDir: t.TempDir(), Metrics: m})
	ctx := testContext(t)
	info, err := l.Stream().Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v",
			err)
	}
	cfg := info.Config
	cfg.MaxMsgSize = 512
	if _, err := l.js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("update stream: %v",
			err)
	}
	big := opened("node-1", 1, 1, 1, "alice")
	big.UserAgent = strings.Repeat("x", 1024)
	l.Observe(ctx, big)
	l.Observe(ctx, opened("node-1", 1, 2, 2, "bob"))
	flush(t, l)
	if got := m.errors.Load(); got != 1 {
		t.Errorf("publish errors %d, want 1",
			got)
	}
	if got := countBySubject(t, l)["wsbroker.events.node-1.connection_opened"]; got != 1 {
		t.Errorf("stored %d, want the small event alone",
			got)
	}
}

// A close the full queue drops still reaches this node's projection, and
// the open that follows it through the stream does not bring it back.
func TestDroppedCloseLeavesNoGhost(t *testing.T) {
	m := &fakeMetrics{}
	l := &Log{cfg: Config{Metrics: m, RejectLimit: -1}, queue: newQueue(1), proj: NewProjection()}
	open := opened("node-1", 1, 1, 1, "alice")
	l.Observe(context.Background(), open) // queued
	closed := *open
	closed.Type = event.TypeConnectionClosed
	closed.Seq = 2
	l.Observe(context.Background(), &closed) // dropped: applied locally
	if got := m.errors.Load(); got != 1 {
		t.Fatalf("publish errors %d, want 1",
			got)
	}
	// The queued open is appended and comes back through the stream.
	l.proj.Apply(7, 0, open)
	if p := l.proj.Presence(); p.Connections != 0 {
		t.Fatalf("presence %+v after the dropped close, want no connection",
			p)
	}
}
