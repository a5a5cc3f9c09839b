package eventlog

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

func TestSubject(t *testing.T) {
	tests := []struct {
		node string
		typ  event.Type
		want string
	}{
		{
			node: "node-1",
			typ:  event.TypeUpgradeRejected,
			want: "wsbroker.events.node-1.upgrade_rejected",
		},
		{
			node: "node-1",
			typ:  event.TypeConnectionOpened,
			want: "wsbroker.events.node-1.connection_opened",
		},
		{
			node: "a.b*c>d e",
			typ:  event.TypeNodeStarted,
			want: "wsbroker.events.a_b_c_d_e.node_started",
		},
		{
			node: "",
			typ:  event.TypeTokenRefreshed,
			want: "wsbroker.events._.token_refreshed",
		},
	}
	for _, tt := range tests {
		if got := Subject(tt.node, tt.typ); got != tt.want {
			t.Errorf("Subject(%q, %s) = %q, want %q",
				tt.node, tt.typ, got, tt.want)
		}
	}
}

// N opened and M rejected events are stored exactly once each, batched
// into a few messages per type.
func TestAppendExactlyOnce(t *testing.T) {
	const n, m = 300, 40
	l := openLog(t, Config{DataDir: t.TempDir()})
	ctx := testContext(t)
	for i := range uint64(n) {
		l.Observe(ctx, opened("node-1", 1, i+1, i+1, fmt.Sprintf("user-%d", i%7)))
	}
	for i := range uint64(m) {
		// Spread over reasons so that no sampling applies.
		l.Observe(ctx, rejected("node-1", 1, n+i+1, authn.Reason(1+i%uint64(authn.NumReasons-1))))
	}
	flush(t, l)

	counts := countBySubject(t, l)
	info, err := l.Stream().Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v",
			err)
	}
	// At most two appender batches (maxBatch 256) of two types each.
	if msgs := info.State.Msgs; msgs < 2 || msgs > 4 {
		t.Errorf("%d events stored in %d messages, want 2-4 batches",
			n+m, msgs)
	}
	if got := counts["wsbroker.events.node-1.connection_opened"]; got != n {
		t.Errorf("connection_opened stored %d, want %d",
			got, n)
	}
	if got := counts["wsbroker.events.node-1.upgrade_rejected"]; got != m {
		t.Errorf("upgrade_rejected stored %d, want %d",
			got, m)
	}
	ids, _ := storedIDs(t, l)
	if len(ids) != n+m {
		t.Errorf("distinct ids %d, want %d",
			len(ids), n+m)
	}
	for id, c := range ids {
		if c != 1 {
			t.Errorf("event %s stored %d times",
				id, c)
		}
	}

	// The latest opens lie before every rejection: the backward windows
	// have to grow to reach them.
	recs, err := l.Events(ctx, Query{Type: event.TypeConnectionOpened, Limit: 5})
	if err != nil {
		t.Fatalf("Events: %v",
			err)
	}
	var seqs []uint64
	for _, r := range recs {
		seqs = append(seqs, r.Event.Seq)
	}
	if fmt.Sprint(seqs) != "[296 297 298 299 300]" {
		t.Errorf("latest 5 opens have seqs %v, want [296 297 298 299 300]",
			seqs)
	}
}

// A retry below the log (the same message published again by the appender
// after a lost ack) is de-duplicated by the stream.
func TestRetryDeduplicated(t *testing.T) {
	l := openLog(t, Config{DataDir: t.TempDir()})
	e := opened("node-1", 7, 1, 1, "alice")
	for range 3 {
		l.publish([]event.Event{*e})
	}
	if got := countBySubject(t, l)["wsbroker.events.node-1.connection_opened"]; got != 1 {
		t.Fatalf("stored %d copies, want 1",
			got)
	}
}

func TestProjectionReplayedOnOpen(t *testing.T) {
	dir := t.TempDir()
	ctx := testContext(t)
	l1, err := Open(ctx, Config{DataDir: dir, Node: "node-1"})
	if err != nil {
		t.Fatalf("Open: %v",
			err)
	}
	a1 := opened("node-1", 1, 1, 1, "alice")
	a2 := opened("node-1", 1, 2, 2, "alice")
	b := opened("node-1", 1, 3, 3, "bob")
	for _, e := range []*event.Event{
		a1,
		a2,
		b,
		withConn(a1, 4, event.TypeSubscriptionAdded, "news"),
		withConn(b, 5, event.TypeSubscriptionAdded, "news"),
		withConn(b, 6, event.TypeSubscriptionAdded, "sport"),
		{Type: event.TypeConnectionClosed, Node: "node-1", Epoch: 1, Seq: 9, ConnID: 2, Subject: "alice", CloseReason: event.CloseClientClosed},
	} {
		l1.Observe(ctx, e)
	}
	closeLog(t, l1)

	l2 := openLog(t, Config{DataDir: dir, Node: "node-1"})
	p := l2.Projection().Presence()
	if p.Connections != 2 || p.Subjects["alice"] != 1 || p.Subjects["bob"] != 1 {
		t.Errorf("presence after replay = %+v, want alice 1, bob 1",
			p)
	}
	if p.Channels["news"] != 2 || p.Channels["sport"] != 1 {
		t.Errorf("channels after replay = %v, want news 2, sport 1",
			p.Channels)
	}
	cs := l2.Projection().Connections("bob")
	if len(cs) != 1 || cs[0].ID != 3 || strings.Join(cs[0].Channels, ",") != "news,sport" || cs[0].Source != "header" {
		t.Errorf("connections of bob = %+v",
			cs)
	}
	if got := l2.Projection().ChannelPresence("news").Subjects; got["alice"] != 1 || got["bob"] != 1 {
		t.Errorf("presence in news = %v",
			got)
	}
}

// A node that starts again closes, in the projection, every connection of
// its earlier epochs: presence is right after a crash.
func TestNodeStartedClosesEarlierEpochs(t *testing.T) {
	l := openLog(t, Config{DataDir: t.TempDir()})
	ctx := testContext(t)
	old := opened("node-1", 1, 1, 1, "alice")
	l.Observe(ctx, old)
	l.Observe(ctx, withConn(old, 10, event.TypeSubscriptionAdded, "news"))
	l.Observe(ctx, opened("node-1", 1, 2, 2, "bob"))
	l.Observe(ctx, opened("node-2", 1, 1, 1, "carol"))
	flush(t, l)
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if p := l.Projection().Presence(); p.Connections != 3 {
			return fmt.Errorf("presence %+v, want 3 connections", p)
		}
		return nil
	})

	started := NodeEvent(event.TypeNodeStarted, "node-1", 2, time.Now())
	l.Observe(ctx, &started)
	// Conn id 1 again, in the new epoch: a different connection.
	l.Observe(ctx, opened("node-1", 2, 1, 1, "dave"))
	flush(t, l)
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		p := l.Projection().Presence()
		if p.Connections != 2 || p.Subjects["carol"] != 1 || p.Subjects["dave"] != 1 || len(p.Channels) != 0 {
			return fmt.Errorf("presence %+v, want carol and dave, no channels", p)
		}
		return nil
	})

	// A late open from the dead epoch must not resurrect it.
	l.Observe(ctx, opened("node-1", 1, 3, 3, "eve"))
	stopped := NodeEvent(event.TypeNodeStopped, "node-2", 1, time.Now())
	l.Observe(ctx, &stopped)
	flush(t, l)
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		p := l.Projection().Presence()
		if p.Connections != 1 || p.Subjects["dave"] != 1 {
			return fmt.Errorf("presence %+v, want dave alone", p)
		}
		return nil
	})
}

func TestRejectionSampling(t *testing.T) {
	const limit, burst = 50, 1000
	// The clock is read by the appender's ticker too: atomic.
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	m := &fakeMetrics{}
	l := openLog(t, Config{
		DataDir:     t.TempDir(),
		RejectLimit: limit,
		Metrics:     m,
		Now:         func() time.Time { return time.Unix(0, now.Load()) },
	})
	ctx := testContext(t)
	for i := range uint64(burst) {
		l.Observe(ctx, rejected("node-1", 1, i+1, authn.ReasonExpired))
	}
	// Another reason has its own budget.
	l.Observe(ctx, rejected("node-1", 1, burst+1, authn.ReasonBadSignature))
	flush(t, l)

	_, recs := storedIDs(t, l)
	var stored, sum uint64
	for _, r := range recs {
		if r.Event.Reason != authn.ReasonExpired {
			continue
		}
		stored++
		sum += 1 + r.Event.Suppressed
	}
	if stored > limit {
		t.Errorf("stored %d expired rejections, want at most %d",
			stored, limit)
	}
	if sum != burst {
		t.Errorf("sum of 1+suppressed = %d, want %d",
			sum, burst)
	}
	if got := countBySubject(t, l)["wsbroker.events.node-1.upgrade_rejected"]; got != stored+1 {
		t.Errorf("upgrade_rejected stored %d, want %d",
			got, stored+1)
	}
	if got := m.errors.Load(); got != 0 {
		t.Errorf("publish errors %d, want 0 (sampling is not an error)",
			got)
	}
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		rj := l.Projection().Rejections()
		if rj.ByReason["expired"] != burst || rj.ByReason["bad_signature"] != 1 {
			return fmt.Errorf("rejections by reason %v, want expired %d, bad_signature 1", rj.ByReason, burst)
		}
		return nil
	})

	// A new window lets events through again.
	now.Add(int64(time.Second))
	l.Observe(ctx, rejected("node-1", 1, burst+2, authn.ReasonExpired))
	flush(t, l)
	if got := countBySubject(t, l)["wsbroker.events.node-1.upgrade_rejected"]; got != stored+2 {
		t.Errorf("after a second, upgrade_rejected stored %d, want %d",
			got, stored+2)
	}
}

func TestOpenErrors(t *testing.T) {
	busy := t.TempDir()
	openLog(t, Config{DataDir: busy})
	tests := []struct {
		name   string
		cfg    Config
		want   string
		wantIs error
	}{
		{
			name: "data dir not writable",
			cfg:  Config{DataDir: unwritableDir(t)},
			want: "is not writable",
		},
		{
			name: "data dir empty",
			cfg:  Config{},
			want: "data-dir is empty",
		},
		{
			name:   "data dir in use",
			cfg:    Config{DataDir: busy},
			want:   "in use by another process",
			wantIs: ErrDataDirInUse,
		},
		{
			name: "reader on a missing data dir",
			cfg:  Config{DataDir: t.TempDir() + "/missing", ReadOnly: true},
			want: "no such directory",
		},
		{
			name: "reader on a data dir without a log",
			cfg:  Config{DataDir: t.TempDir(), ReadOnly: true},
			want: "no event log there yet",
		},
		{
			name: "replicas without a cluster",
			cfg:  Config{DataDir: t.TempDir(), Replicas: 3},
			want: "Replicas 3 needs an external NATS cluster",
		},
		{
			name: "negative max age",
			cfg:  Config{DataDir: t.TempDir(), MaxAge: -time.Hour},
			want: "events-max-age -1h0m0s is negative",
		},
		{
			name: "negative max bytes",
			cfg:  Config{DataDir: t.TempDir(), MaxBytes: -1},
			want: "events-max-bytes -1 is negative",
		},
		{
			// A writer queues and retries (TestOpenNATSUnreachable);
			// a reader has nothing to queue.
			name: "reader on unreachable NATS",
			cfg:  Config{NATSURLs: []string{"nats://127.0.0.1:1"}, ReadOnly: true},
			want: "nats-url",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := openFails(t, tt.cfg, tt.want)
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("Open: %v, want errors.Is %v",
					err, tt.wantIs)
			}
		})
	}
}

func TestObserveAfterCloseCounted(t *testing.T) {
	m := &fakeMetrics{}
	l, err := Open(testContext(t), Config{DataDir: t.TempDir(), Metrics: m})
	if err != nil {
		t.Fatalf("Open: %v",
			err)
	}
	closeLog(t, l)
	l.Observe(context.Background(), opened("node-1", 1, 1, 1, "alice"))
	if got := m.errors.Load(); got != 1 {
		t.Fatalf("publish errors %d, want 1",
			got)
	}
}

// The NATS connection drops mid-run: events observed meanwhile wait in the
// queue and reach the stream, exactly once each, after the reconnect.
func TestReconnectExactlyOnce(t *testing.T) {
	store := t.TempDir()
	s := startNATS(t, 0, store)
	m := &fakeMetrics{}
	l := openLog(t, Config{NATSURLs: []string{s.url()}, Metrics: m, PublishTimeout: time.Second})
	ctx := testContext(t)
	const before, during = 100, 100
	for i := range uint64(before) {
		l.Observe(ctx, opened("node-1", 1, i+1, i+1, "alice"))
	}
	flush(t, l)

	s.stop()
	for i := range uint64(during) {
		l.Observe(ctx, opened("node-1", 1, before+i+1, before+i+1, "bob"))
	}
	fctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := l.Flush(fctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush with NATS down: %v, want a deadline error",
			err)
	}
	// The backlog shows while the appender retries.
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if d := m.depth.Load(); d != during {
			return fmt.Errorf("queue depth %d with NATS down, want %d", d, during)
		}
		return nil
	})

	startNATS(t, s.port, store)
	flush(t, l)
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if d := m.depth.Load(); d != 0 {
			return fmt.Errorf("queue depth %d after the reconnect, want 0", d)
		}
		return nil
	})
	if got := countBySubject(t, l)["wsbroker.events.node-1.connection_opened"]; got != before+during {
		t.Errorf("stored %d, want %d",
			got, before+during)
	}
	ids, _ := storedIDs(t, l)
	for id, c := range ids {
		if c != 1 {
			t.Errorf("event %s stored %d times",
				id, c)
		}
	}
	if len(ids) != before+during {
		t.Errorf("distinct ids %d, want %d",
			len(ids), before+during)
	}
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if p := l.Projection().Presence(); p.Subjects["bob"] != during {
			return fmt.Errorf("presence %+v, want bob %d", p, during)
		}
		return nil
	})
}

// This node's events of this run are folded in when their append is
// acknowledged and skipped, undecoded, by the projection consumer: each is
// applied once. Other nodes' events still come through the stream.
func TestOwnEventsFoldedOnce(t *testing.T) {
	l := openLog(t, Config{DataDir: t.TempDir(), Node: "node-1"})
	ctx := testContext(t)
	start := NodeEvent(event.TypeNodeStarted, "node-1", 5, time.Now())
	l.Observe(ctx, &start)
	for i := range uint64(3) {
		l.Observe(ctx, opened("node-1", 5, i+1, i+1, "alice"))
	}
	l.Observe(ctx, rejected("node-1", 5, 10, authn.ReasonExpired))
	l.Observe(ctx, rejected("node-1", 5, 11, authn.ReasonMissingToken))
	l.Observe(ctx, opened("node-2", 9, 1, 1, "bob"))
	flush(t, l)
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		p := l.Projection()
		if got := p.Presence().Connections; got != 4 {
			return fmt.Errorf("presence %d connections, want 4", got)
		}
		var n uint64
		for _, c := range p.Rejections().ByReason {
			n += c
		}
		if n != 2 {
			return fmt.Errorf("%d rejections folded, want 2 (each once)", n)
		}
		if want := lastSeq(t, l); p.Seq() != want {
			return fmt.Errorf("projection at stream sequence %d, want %d", p.Seq(), want)
		}
		return nil
	})
}
