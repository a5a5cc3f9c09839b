package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/wsbroker/wsbroker/broker/eventlog"
	"github.com/wsbroker/wsbroker/internal/testkit"
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
	return &natsServer{t: t, port: testkit.FreePort(t), store: t.TempDir()}
}

func (s *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(s.port) }

func (s *natsServer) start() {
	s.t.Helper()
	s.ns = testkit.StartNATS(s.t, server.Options{ServerName: "faults-nats", Port: s.port, JetStream: true, StoreDir: s.store})
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
// (connection_opened, node_stopped, ...), read as a reader of the log
// would.
func (s *natsServer) counts() (map[string]uint64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := eventlog.Open(ctx, eventlog.Config{NATSURLs: []string{s.url()}, ReadOnly: true, Node: "faults-reader"})
	if err != nil {
		return nil, err
	}
	defer func() { _ = l.Close(ctx) }()
	return l.CountByType(ctx)
}

// wantCounts waits until the stream holds exactly want (types not named
// are not checked).
func (s *natsServer) wantCounts(t *testing.T, want map[string]uint64) {
	t.Helper()
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
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
	testkit.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
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

// TestNATSUnavailableAtStart: with --nats-url the broker starts while no
// NATS answers. It serves: clients connect, subscribe, publish and receive
// (channels local to the node); /readyz stays 200 and says why the event
// log is not ready; the admin API answers 503 instead of wrong presence;
// the events wait in the queue (wsbroker_event_queue_depth). When NATS
// starts on that URL the log catches up: every event observed before is in
// the stream exactly once, presence is right and the log is ready.
func TestNATSUnavailableAtStart(t *testing.T) {
	n := newNATS(t)
	b := startBroker(t, brokerOpts{args: []string{"--nats-url", n.url(), "--shutdown-drain", "5s"}})
	testkit.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if !strings.Contains(b.stderr.String(), "NATS unreachable, queuing events; will retry") {
			return fmt.Errorf("no start warning in:\n%s", b.stderr.String())
		}
		return nil
	})
	body, err := b.get("/readyz")
	if err != nil {
		t.Fatalf("readyz with NATS down: %v",
			err)
	}
	if want := "event log not ready: NATS unreachable at " + n.url(); !strings.Contains(string(body), want) {
		t.Fatalf("readyz %q, want the detail %q",
			body, want)
	}
	if body, err := b.get("/v1/presence"); err == nil || !strings.Contains(string(body), "NATS unreachable at "+n.url()) {
		t.Fatalf("presence with NATS down: %v %s, want 503 naming the URL",
			err, body)
	}

	conns := openN(t, b, "early", 5)
	sub, pub := conns[0], conns[1]
	if err := sub.send(map[string]any{"type": "subscribe", "channel": "news", "id": 1}); err != nil {
		t.Fatalf("subscribe: %v",
			err)
	}
	if m := sub.next(t, 10*time.Second); m["type"] != "ack" {
		t.Fatalf("subscribe answered %v, want an ack",
			m)
	}
	if err := pub.send(map[string]any{"type": "publish", "channel": "news", "data": "hello", "id": 2}); err != nil {
		t.Fatalf("publish: %v",
			err)
	}
	if m := pub.next(t, 10*time.Second); m["type"] != "ack" {
		t.Fatalf("publish answered %v, want an ack",
			m)
	}
	if m := sub.next(t, 10*time.Second); m["type"] != "message" || m["data"] != "hello" {
		t.Fatalf("subscriber got %v, want the message",
			m)
	}
	// Delivered here; never connected, the bus could not take it to the
	// other nodes, and says so.
	wantMetric(t, b, "wsbroker_messages_dropped_total", 1, `reason="bus"`)
	conns[3].Close()
	conns[4].Close()
	wantMetric(t, b, "wsbroker_connections", 3)
	// node.started, 5 opens, 1 subscription, 2 closes wait for NATS.
	wantMetric(t, b, "wsbroker_event_queue_depth", 9)

	n.start()
	n.wantCounts(t, map[string]uint64{
		"node_started":       1,
		"connection_opened":  5,
		"subscription_added": 1,
		"connection_closed":  2,
	})
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		body, err := b.get("/v1/presence")
		if err != nil {
			return err
		}
		var p struct {
			Connections int            `json:"connections"`
			Channels    map[string]int `json:"channels"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return err
		}
		if p.Connections != 3 || p.Channels["news"] != 1 {
			return fmt.Errorf("presence %s, want 3 connections, 1 in news", body)
		}
		return nil
	})
	// The event log and the cluster finish their set-up on their own
	// schedules: wait for both.
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		body, err := b.get("/readyz")
		if err != nil || strings.Contains(string(body), "not ready") {
			return fmt.Errorf("readyz once NATS is back: %v %q", err, body)
		}
		return nil
	})
	wantMetric(t, b, "wsbroker_event_queue_depth", 0)
	// Each event once, by id, through the query API.
	body, err = b.get("/v1/events?limit=1000")
	if err != nil {
		t.Fatalf("events: %v",
			err)
	}
	var evs []cloudEvent
	if err := json.Unmarshal(body, &evs); err != nil {
		t.Fatalf("events: %v in %s",
			err, body)
	}
	ids := map[string]bool{}
	for _, e := range evs {
		if ids[e.ID] {
			t.Fatalf("event %s (%s) listed twice",
				e.ID, e.Type)
		}
		ids[e.ID] = true
	}
	if len(evs) != 9 {
		t.Fatalf("%d events stored, want 9: %s",
			len(evs), body)
	}
	if v, err := b.metric("wsbroker_event_publish_errors_total"); err != nil || v != 0 {
		t.Fatalf("publish errors %v (%v), want 0",
			v, err)
	}

	b.stop()
	n.wantCounts(t, map[string]uint64{
		"node_started":      1,
		"connection_opened": 5,
		"connection_closed": 5,
		"node_stopped":      1,
	})
}

// TestNATSUnavailableAtStartHistory: with --history-messages and no NATS,
// a publish is answered at once with an error frame saying why (the
// message cannot be stored in the channel history); once NATS answers the
// history stream is set up and the same publish is stored.
func TestNATSUnavailableAtStartHistory(t *testing.T) {
	n := newNATS(t)
	b := startBroker(t, brokerOpts{args: []string{"--nats-url", n.url(), "--history-messages", "10"}})
	c := openN(t, b, "hist", 1)[0]
	publish := func(id int) map[string]any {
		t.Helper()
		if err := c.send(map[string]any{"type": "publish", "channel": "news", "data": id, "id": id}); err != nil {
			t.Fatalf("publish: %v",
				err)
		}
		return c.next(t, 10*time.Second)
	}
	begin := time.Now()
	m := publish(1)
	if m["type"] != "error" || m["reason"] != "unavailable" || !strings.Contains(fmt.Sprint(m["message"]), "NATS unreachable") {
		t.Fatalf("publish with NATS down answered %v, want an unavailable error naming NATS",
			m)
	}
	if took := time.Since(begin); took > 3*time.Second {
		t.Fatalf("publish with NATS down answered after %s",
			took)
	}
	n.start()
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		body, err := b.get("/readyz")
		if err != nil {
			return err
		}
		if strings.Contains(string(body), "not ready") {
			return fmt.Errorf("readyz %q", body)
		}
		return nil
	})
	if m := publish(2); m["type"] != "ack" || m["offset"] == nil {
		t.Fatalf("publish with NATS back answered %v, want an ack with an offset",
			m)
	}
}

// TestNATSNeverComes: the broker started without NATS is stopped before
// NATS ever answers. It exits 0 after its bounded flush and says how many
// events were lost.
func TestNATSNeverComes(t *testing.T) {
	n := newNATS(t)
	b := startBroker(t, brokerOpts{args: []string{"--nats-url", n.url(), "--shutdown-drain", "2s"}})
	conns := openN(t, b, "lost", 3)
	for _, c := range conns {
		c.Close()
	}
	wantMetric(t, b, "wsbroker_connections", 0)
	b.stop()
	// node.started, 3 opens, 3 closes, node.stopped.
	if want := "8 events lost at close"; !strings.Contains(b.stderr.String(), want) {
		t.Fatalf("stderr lacks %q:\n%s",
			want, b.stderr.String())
	}
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
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
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
