package eventlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// getStatus returns the status and body of an admin API GET.
func getStatus(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

// TestOpenNATSUnreachable: NATS is not there when the log opens. Open
// succeeds at once, the log is not ready, events queue (the depth shows),
// the admin API answers 503 saying why; when a NATS server starts on that
// URL the log sets the stream up, appends the queue in order, every event
// exactly once, and presence is right.
func TestOpenNATSUnreachable(t *testing.T) {
	port := testkit.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	m := &fakeMetrics{}
	l := openLog(t, Config{NATSURLs: []string{url}, Metrics: m, PublishTimeout: time.Second})
	if l.Ready() {
		t.Fatalf("Ready with no NATS")
	}
	if l.Stream() != nil {
		t.Fatalf("Stream set with no NATS")
	}
	ctx := testContext(t)
	start := NodeEvent(event.TypeNodeStarted, "node-1", 7, time.Now())
	l.Observe(ctx, &start)
	const n = 50
	for i := range uint64(n) {
		l.Observe(ctx, opened("node-1", 7, 2*i+1, i+1, "alice"))
		l.Observe(ctx, withConn(opened("node-1", 7, 0, i+1, "alice"), 2*i+2, event.TypeSubscriptionAdded, "news"))
	}
	for i := range uint64(10) {
		l.Observe(ctx, withConn(opened("node-1", 7, 0, i+1, "alice"), 2*n+i+1, event.TypeConnectionClosed, ""))
	}
	const total = 1 + 2*n + 10
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if d := m.depth.Load(); d != total {
			return fmt.Errorf("queue depth %d with NATS down, want %d", d, total)
		}
		return nil
	})
	h := l.Handler()
	for _, path := range []string{"/v1/presence", "/v1/connections", "/v1/events", "/v1/rejections"} {
		code, body := getStatus(t, h, path)
		want := fmt.Sprintf("event log not ready: NATS unreachable at %s, %d events queued", url, total)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
			t.Fatalf("GET %s with NATS down: %d %s, want 503 with %q",
				path, code, body, want)
		}
	}
	if _, err := l.Events(ctx, Query{}); !errors.Is(err, ErrNotReady) {
		t.Fatalf("Events with NATS down: %v, want ErrNotReady",
			err)
	}
	fctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err := l.Flush(fctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush with NATS down: %v, want a deadline error",
			err)
	}

	startNATS(t, port, t.TempDir())
	testkit.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if !l.Ready() {
			return errors.New(l.Status())
		}
		return nil
	})
	flush(t, l)
	if d := m.depth.Load(); d != 0 {
		t.Fatalf("queue depth %d once ready, want 0",
			d)
	}
	if e := m.errors.Load(); e != 0 {
		t.Fatalf("%d publish errors, want 0",
			e)
	}
	got := countBySubject(t, l)
	want := map[string]uint64{
		"wsbroker.events.node-1.node_started":       1,
		"wsbroker.events.node-1.connection_opened":  n,
		"wsbroker.events.node-1.subscription_added": n,
		"wsbroker.events.node-1.connection_closed":  10,
	}
	for subj, c := range want {
		if got[subj] != c {
			t.Fatalf("stored %v, want %s = %d",
				got, subj, c)
		}
	}
	ids, recs := storedIDs(t, l)
	if len(ids) != total {
		t.Fatalf("distinct ids %d, want %d",
			len(ids), total)
	}
	for id, c := range ids {
		if c != 1 {
			t.Fatalf("event %s stored %d times",
				id, c)
		}
	}
	// In the order observed: node.started first, each type's and each
	// connection's events in order.
	if recs[0].Event.Type != event.TypeNodeStarted {
		t.Fatalf("first stored %s, want node.started",
			recs[0].Event.Type)
	}
	checkOrder(t, recs[1:])
	p := l.Projection().Presence()
	if p.Connections != n-10 || p.Subjects["alice"] != n-10 || p.Channels["news"] != n-10 {
		t.Fatalf("presence %+v, want %d connections of alice in news",
			p, n-10)
	}
	code, body := getStatus(t, h, "/v1/presence")
	var pr Presence
	if code != http.StatusOK || json.Unmarshal([]byte(body), &pr) != nil || pr.Connections != n-10 {
		t.Fatalf("GET /v1/presence once ready: %d %s",
			code, body)
	}
}

// TestOpenNATSNeverComes: NATS never answers. Close returns within its
// deadline, counts the queued events as lost (error and publish errors),
// and leaves no goroutine behind (goleak in TestMain).
func TestOpenNATSNeverComes(t *testing.T) {
	url := fmt.Sprintf("nats://127.0.0.1:%d", testkit.FreePort(t))
	m := &fakeMetrics{}
	l, err := Open(testContext(t), Config{NATSURLs: []string{url}, Node: "node-1", Metrics: m})
	if err != nil {
		t.Fatalf("Open with NATS down: %v",
			err)
	}
	ctx := testContext(t)
	for i := range uint64(5) {
		l.Observe(ctx, opened("node-1", 1, i+1, i+1, "alice"))
	}
	cctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	begin := time.Now()
	err = l.Close(cctx)
	if took := time.Since(begin); took > 5*time.Second {
		t.Fatalf("Close took %s with a 300ms deadline",
			took)
	}
	if err == nil || !strings.Contains(err.Error(), "5 events lost") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close: %v, want 5 events lost and a deadline error",
			err)
	}
	if e := m.errors.Load(); e != 5 {
		t.Fatalf("%d publish errors, want 5",
			e)
	}
	// Observed after Close: dropped and counted.
	l.Observe(ctx, opened("node-1", 1, 6, 6, "alice"))
	if e := m.errors.Load(); e != 6 {
		t.Fatalf("%d publish errors after an Observe past Close, want 6",
			e)
	}
}

// TestOpenNATSMisconfigured: a NATS that answers but is not usable as
// configured stops Open at once, naming the problem.
func TestOpenNATSMisconfigured(t *testing.T) {
	withOpts := func(t *testing.T, o server.Options) string {
		t.Helper()
		return testkit.StartNATS(t, o).ClientURL()
	}
	tests := []struct {
		name string
		url  func(t *testing.T) string
		opts []nats.Option
		want string
	}{
		{
			name: "authorization",
			url: func(t *testing.T) string {
				return withOpts(t, server.Options{JetStream: true, Authorization: "s3cr3t"})
			},
			want: "Authorization Violation",
		},
		{
			name: "JetStream disabled",
			url:  func(t *testing.T) string { return withOpts(t, server.Options{}) },
			want: "JetStream is not enabled",
		},
		{
			name: "conflicting stream",
			url: func(t *testing.T) string {
				u := withOpts(t, server.Options{JetStream: true})
				nc, err := nats.Connect(u)
				if err != nil {
					t.Fatalf("connect: %v",
						err)
				}
				defer nc.Close()
				js, _ := jetstream.New(nc)
				if _, err := js.CreateStream(testContext(t), jetstream.StreamConfig{
					Name: StreamName, Subjects: []string{SubjectPrefix + ">"}, Storage: jetstream.MemoryStorage,
				}); err != nil {
					t.Fatalf("create stream: %v",
						err)
				}
				return u
			},
			want: "create stream WSBROKER_EVENTS",
		},
		{
			name: "CA file",
			url:  func(t *testing.T) string { return "nats://127.0.0.1:1" },
			opts: []nats.Option{nats.RootCAs(t.TempDir() + "/missing.pem")},
			want: "rootCA file",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			openFails(t, Config{NATSURLs: []string{tt.url(t)}, NATSOptions: tt.opts}, tt.want)
		})
	}
}
