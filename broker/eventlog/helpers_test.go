package eventlog

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeMetrics counts what the log reports.
type fakeMetrics struct {
	errors atomic.Int64
	depth  atomic.Int64
}

func (m *fakeMetrics) EventPublishError()    { m.errors.Add(1) }
func (m *fakeMetrics) EventQueueDepth(n int) { m.depth.Store(int64(n)) }

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// openLog opens a log and closes it at the end of the test.
func openLog(t *testing.T, cfg Config) *Log {
	t.Helper()
	if cfg.Node == "" {
		cfg.Node = "node-1"
	}
	l, err := Open(testContext(t), cfg)
	if err != nil {
		t.Fatalf("Open: %v",
			err)
	}
	t.Cleanup(func() { closeLog(t, l) })
	return l
}

// openFails opens a log that must not open, and checks that the error
// names want; it returns the error.
func openFails(t *testing.T, cfg Config, want string) error {
	t.Helper()
	l, err := Open(testContext(t), cfg)
	if err == nil {
		closeLog(t, l)
		t.Fatalf("Open succeeded, want an error with %q",
			want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("Open: %v, want an error with %q",
			err, want)
	}
	return err
}

func closeLog(t *testing.T, l *Log) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Errorf("Close: %v",
			err)
	}
}

func flush(t *testing.T, l *Log) {
	t.Helper()
	if err := l.Flush(testContext(t)); err != nil {
		t.Fatalf("Flush: %v",
			err)
	}
}

// countBySubject returns the number of stored events per subject (a
// message holds a batch of them).
func countBySubject(t *testing.T, l *Log) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	if err := l.Replay(testContext(t), Query{}, func(r *Record) error {
		out[Subject(r.Event.Node, r.Event.Type)]++
		return nil
	}); err != nil {
		t.Fatalf("Replay: %v",
			err)
	}
	return out
}

// checkOrder fails t unless the events of each type, and of each
// connection, are stored in the order of their node sequence (the order
// observed).
func checkOrder(t *testing.T, recs []Record) {
	t.Helper()
	byType := map[event.Type]uint64{}
	byConn := map[connKey]uint64{}
	for _, r := range recs {
		e := &r.Event
		if prev, ok := byType[e.Type]; ok && e.Seq <= prev {
			t.Fatalf("%s %d stored after %d", e.Type, e.Seq, prev)
		}
		byType[e.Type] = e.Seq
		if e.ConnID == 0 {
			continue
		}
		k := connKey{e.Node, e.Epoch, e.ConnID}
		if prev, ok := byConn[k]; ok && e.Seq <= prev {
			t.Fatalf("connection %d: %s %d stored after its event %d", e.ConnID, e.Type, e.Seq, prev)
		}
		byConn[k] = e.Seq
	}
}

// lastSeq returns the stream's last sequence.
func lastSeq(t *testing.T, l *Log) uint64 {
	t.Helper()
	info, err := l.Stream().Info(testContext(t))
	if err != nil {
		t.Fatalf("stream info: %v",
			err)
	}
	return info.State.LastSeq
}

// storedIDs returns how many times each event id is stored.
func storedIDs(t *testing.T, l *Log) (map[string]int, []Record) {
	t.Helper()
	ids := map[string]int{}
	var recs []Record
	err := l.Replay(testContext(t), Query{}, func(r *Record) error {
		ids[r.Event.ID()]++
		recs = append(recs, *r)
		return nil
	})
	if err != nil {
		t.Fatalf("Replay: %v",
			err)
	}
	return ids, recs
}

func opened(node string, epoch, seq, conn uint64, sub string) *event.Event {
	return &event.Event{
		Type:        event.TypeConnectionOpened,
		Node:        node,
		Epoch:       epoch,
		Seq:         seq,
		Time:        time.Date(2026, 1, 2, 3, 4, 5, int(seq), time.UTC),
		Source:      authn.SourceHeader,
		ConnID:      conn,
		Subject:     sub,
		Subprotocol: "wsbroker.v1",
		TokenExpiry: time.Date(2026, 1, 2, 4, 4, 5, 0, time.UTC),
	}
}

func rejected(node string, epoch, seq uint64, r authn.Reason) *event.Event {
	return &event.Event{
		Type:   event.TypeUpgradeRejected,
		Node:   node,
		Epoch:  epoch,
		Seq:    seq,
		Time:   time.Date(2026, 1, 2, 3, 4, 5, int(seq), time.UTC),
		Reason: r,
		Source: authn.SourceHeader,
		Status: r.Status(),
		Path:   "/ws",
		Detail: "test",
	}
}

// withConn returns an event of type t on e's connection, numbered seq.
func withConn(e *event.Event, seq uint64, t event.Type, channel string) *event.Event {
	c := *e
	c.Type, c.Channel, c.Seq = t, channel, seq
	return &c
}

// natsServer is an external NATS server with JetStream for the tests of
// the URL mode.
type natsServer struct {
	ns   *server.Server
	port int
	dir  string
}

func startNATS(t *testing.T, port int, dir string) *natsServer {
	t.Helper()
	ns := testkit.StartNATS(t, server.Options{Port: port, JetStream: true, StoreDir: dir})
	return &natsServer{ns: ns, port: ns.Addr().(*net.TCPAddr).Port, dir: dir}
}

func (s *natsServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

func (s *natsServer) stop() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// unwritableDir is a path that cannot be created even by root: its parent
// is a regular file.
func unwritableDir(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatalf("write %s: %v",
			f, err)
	}
	return filepath.Join(f, "sub")
}
