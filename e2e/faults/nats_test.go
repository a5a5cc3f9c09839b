package faults

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsServer is a nats-server with JetStream on a fixed loopback port and
// store, so that it can be stopped and started again as the same server.
type natsServer struct {
	t     *testing.T
	port  int
	store string
	ns    *server.Server
}

func newNATS(t *testing.T) *natsServer {
	return &natsServer{t: t, port: freePort(t), store: t.TempDir()}
}

func (s *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *natsServer) start() {
	s.t.Helper()
	ns, err := server.NewServer(&server.Options{
		ServerName: "faults-nats",
		Host:       "127.0.0.1",
		Port:       s.port,
		JetStream:  true,
		StoreDir:   s.store,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		s.t.Fatalf("nats server: %v",
			err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		s.t.Fatalf("nats server on %d not ready",
			s.port)
	}
	s.ns = ns
	s.t.Cleanup(s.stop)
}

func (s *natsServer) stop() {
	if s.ns == nil {
		return
	}
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.ns = nil
}

// counts returns the stored events per type short name
// (connection_opened, node_stopped, ...).
func (s *natsServer) counts() (map[string]uint64, error) {
	nc, err := nats.Connect(s.url())
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, "WSBROKER_EVENTS")
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter("wsbroker.events.>"))
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for subj, n := range info.State.Subjects {
		out[subj[strings.LastIndexByte(subj, '.')+1:]] += n
	}
	return out, nil
}

// wantCounts waits until the stream holds exactly want (types not named
// are not checked).
func (s *natsServer) wantCounts(t *testing.T, want map[string]uint64) {
	t.Helper()
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		got, err := s.counts()
		if err != nil {
			return err
		}
		for k, n := range want {
			if got[k] != n {
				return fmt.Errorf("stored events %v, want %s = %d", got, k, n)
			}
		}
		return nil
	})
}

// openN upgrades n connections as prefix-i and fails the test on any other
// answer than 101.
func openN(t *testing.T, b *broker, prefix string, n int) []*wsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []*wsConn
	for i := range n {
		a, err := upgrade(ctx, b.wsAddr, hsToken(t, fmt.Sprintf("%s-%d", prefix, i)))
		if err != nil {
			t.Fatalf("upgrade %s-%d: %v",
				prefix, i, err)
		}
		if a.status != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade %s-%d: %d %s",
				prefix, i, a.status, a.reason)
		}
		out = append(out, a.conn)
	}
	t.Cleanup(func() {
		for _, c := range out {
			c.Close()
		}
	})
	return out
}

// wantMetric waits until the broker's metric (summed over labels) is want.
func wantMetric(t *testing.T, b *broker, name string, want float64, labels ...string) {
	t.Helper()
	checkFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		v, err := b.metric(name, labels...)
		if err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("%s%v = %v, want %v", name, labels, v, want)
		}
		return nil
	})
}

// TestNATSUnavailableAtStart: with --nats-url the broker is a cluster
// member; started while no NATS answers, it exits at once (code 1) saying
// which URL is unreachable, rather than serving a partitioned node (channel
// messages local only, presence partial). The restart a supervisor makes
// once NATS is up starts it, and its events reach the stream.
func TestNATSUnavailableAtStart(t *testing.T) {
	n := newNATS(t)
	dataDir := t.TempDir()
	early := launch(t, brokerOpts{dataDir: dataDir, args: []string{"--nats-url", n.url()}})
	if code := early.wait(15 * time.Second); code != 1 {
		t.Fatalf("exit code %d with NATS down, want 1:\n%s",
			code, early.stderr.String())
	}
	for _, w := range []string{"nats-url", n.url(), "no NATS server reachable"} {
		if !strings.Contains(early.stderr.String(), w) {
			t.Fatalf("stderr lacks %q:\n%s",
				w, early.stderr.String())
		}
	}

	n.start()
	b := startBroker(t, brokerOpts{dataDir: dataDir, args: []string{"--nats-url", n.url()}})
	openN(t, b, "after", 20)
	wantMetric(t, b, "wsbroker_connections", 20)
	b.stop()
	n.wantCounts(t, map[string]uint64{
		"connection_opened": 20,
		"connection_closed": 20,
		"node_started":      1,
		"node_stopped":      1,
	})
}

// TestNATSDroppedMidRun: NATS goes away under a running broker. Upgrades
// keep being accepted and served; the backlog shows in
// wsbroker_event_queue_depth; when NATS is back the log catches up with
// every event exactly once (the stream's counts by type equal the upgrades
// and closes made), and the backlog returns to 0.
func TestNATSDroppedMidRun(t *testing.T) {
	n := newNATS(t)
	n.start()
	b := startBroker(t, brokerOpts{args: []string{"--nats-url", n.url(), "--shutdown-drain", "5s"}})
	before := openN(t, b, "before", 20)
	n.wantCounts(t, map[string]uint64{"connection_opened": 20, "node_started": 1})

	n.stop()
	during := openN(t, b, "during", 50)
	for _, c := range during[:10] {
		c.Close()
	}
	wantMetric(t, b, "wsbroker_connections", float64(len(before)+40))
	wantMetric(t, b, "wsbroker_upgrades_total", 70, `result="accepted"`)
	// The 50 opens and 10 closes wait for NATS (the retry loop reports
	// the depth once an append has timed out).
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		d, err := b.metric("wsbroker_event_queue_depth")
		if err != nil {
			return err
		}
		if d < 60 {
			return fmt.Errorf("wsbroker_event_queue_depth = %v with NATS down, want >= 60", d)
		}
		return nil
	})
	if _, err := b.get("/readyz"); err != nil {
		t.Fatalf("readyz with NATS down: %v",
			err)
	}

	n.start()
	n.wantCounts(t, map[string]uint64{
		"connection_opened": 70,
		"connection_closed": 10,
		"node_started":      1,
	})
	wantMetric(t, b, "wsbroker_event_queue_depth", 0)
	b.stop()
	n.wantCounts(t, map[string]uint64{
		"connection_opened": 70,
		"connection_closed": 70,
		"node_started":      1,
		"node_stopped":      1,
	})
}
