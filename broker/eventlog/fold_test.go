package eventlog

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// TestSharedNATSFoldsEveryNode: two nodes append to one shared NATS at the
// same time. Each folds its own events at their ack and the other's through
// the consumer; folding its own must not move the projection past another
// node's event the consumer has not delivered yet (an earlier version did,
// and each node missed some of the other's connections).
func TestSharedNATSFoldsEveryNode(t *testing.T) {
	url := testkit.StartNATS(t, server.Options{JetStream: true}).ClientURL()
	const n = 400
	var logs []*Log
	for _, node := range []string{"node-a", "node-b"} {
		logs = append(logs, openLog(t, Config{NATSURLs: []string{url}, Node: node}))
	}
	ctx := testContext(t)
	var wg sync.WaitGroup
	for i, node := range []string{"node-a", "node-b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := NodeEvent(event.TypeNodeStarted, node, 1, time.Now())
			logs[i].Observe(ctx, &start)
			for c := range uint64(n) {
				logs[i].Observe(ctx, opened(node, 1, c+2, c+1, "u"))
			}
		}()
	}
	wg.Wait()
	for _, l := range logs {
		flush(t, l)
	}
	for i, l := range logs {
		testkit.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
			if got := l.Projection().Presence().Connections; got != 2*n {
				return fmt.Errorf("log %d: presence %d connections, want %d", i, got, 2*n)
			}
			return nil
		})
	}
}

// TestUnencodableEventInBatch: an event no JSON can carry (a time past the
// year 9999) is counted as lost, still folded into this node's projection,
// and does not shift the acks of the events behind it in its batch (an
// earlier version then waited out the publish timeout and retried them).
func TestUnencodableEventInBatch(t *testing.T) {
	var logs testkit.SyncBuffer
	m := &fakeMetrics{}
	l := openLog(t, Config{
		DataDir: t.TempDir(), Node: "node-1", Metrics: m, PublishTimeout: time.Minute,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	ctx := testContext(t)
	bad := opened("node-1", 1, 3, 2, "bob")
	bad.TokenExpiry = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	l.Observe(ctx, opened("node-1", 1, 2, 1, "alice"))
	l.Observe(ctx, bad)
	l.Observe(ctx, opened("node-1", 1, 4, 3, "carol"))
	l.Observe(ctx, opened("node-1", 1, 5, 4, "dave"))
	flush(t, l)
	if got := m.errors.Load(); got != 1 {
		t.Errorf("publish errors %d, want 1 (the unencodable event)", got)
	}
	if out := logs.String(); strings.Contains(out, "retrying") || !strings.Contains(out, "not encodable") {
		t.Errorf("log: %s\nwant the unencodable event named and no retry", out)
	}
	if got := countBySubject(t, l)["wsbroker.events.node-1.connection_opened"]; got != 3 {
		t.Errorf("stored %d opens, want 3", got)
	}
	if got := l.Projection().Presence().Connections; got != 4 {
		t.Errorf("presence %d connections, want 4 (the lost open folded in too)", got)
	}
}
