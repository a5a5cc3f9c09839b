package clustere2e

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"testing"
	"time"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// exchange has every client publish one message and checks that every
// client receives all of them, each once, with the offsets the publishers
// were told, in the same order on every node.
func exchange(t *testing.T, channel string, clients []*client, history bool) {
	t.Helper()
	var offs []uint64
	for i, c := range clients {
		offs = append(offs, c.publish(channel, map[string]any{"from": i}))
	}
	for i, c := range clients {
		var got []message
		for range clients {
			m, err := c.nextMessage(10 * time.Second)
			if err != nil {
				t.Fatalf("client %d got %d of %d messages: %v",
					i, len(got), len(clients), err)
			}
			got = append(got, m)
		}
		seen := map[float64]bool{}
		for k, m := range got {
			from := m.Data.(map[string]any)["from"].(float64)
			if seen[from] {
				t.Fatalf("client %d got the message of %v twice: %v",
					i, from, got)
			}
			seen[from] = true
			if history {
				if m.Offset != offs[int(from)] {
					t.Fatalf("client %d: message of %v has offset %d, its publisher was told %d",
						i, from, m.Offset, offs[int(from)])
				}
				if k > 0 && m.Offset <= got[k-1].Offset {
					t.Fatalf("client %d: offsets out of order: %v",
						i, got)
				}
			}
		}
		if _, err := c.nextMessage(200 * time.Millisecond); err == nil {
			t.Fatalf("client %d got a message more than the %d published",
				i, len(clients))
		}
	}
}

// crossed publishes on from until to receives the message: once a message
// has crossed, the path between the nodes is up.
func crossed(t *testing.T, channel string, from, to *client) {
	t.Helper()
	testkit.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		from.publish(channel, "probe")
		if _, err := to.nextMessage(500 * time.Millisecond); err != nil {
			return fmt.Errorf("no probe crossed: %w", err)
		}
		return nil
	})
	for {
		// Drain the probes still in flight on both sides.
		if _, err := to.nextMessage(500 * time.Millisecond); err != nil {
			break
		}
	}
	for {
		if _, err := from.nextMessage(200 * time.Millisecond); err != nil {
			break
		}
	}
}

func TestClusterHistory(t *testing.T) {
	const lease = 3 * time.Second
	nc := startNATSCluster(t, 3)
	o := nodeOpts{
		history: 10,
		lease:   lease,
	}
	nodes := []*node{
		startNode(t, nc, "node-a", o),
		startNode(t, nc, "node-b", o),
		startNode(t, nc, "node-c", o),
	}

	t.Run("exchange", func(t *testing.T) {
		var clients []*client
		for i, n := range nodes {
			c := dial(t, n.addr, fmt.Sprintf("user-%d", i))
			c.subscribe("room.1", nil)
			clients = append(clients, c)
		}
		exchange(t, "room.1", clients, true)
		for _, c := range clients {
			c.close()
		}
	})

	t.Run("recover on another node", func(t *testing.T) {
		pub := dial(t, nodes[0].addr, "publisher")
		sub := dial(t, nodes[1].addr, "reader")
		sub.subscribe("room:2", nil)
		var last uint64
		for i := range 3 {
			off := pub.publish("room:2", i)
			m, err := sub.nextMessage(10 * time.Second)
			if err != nil {
				t.Fatalf("live message %d: %v",
					i, err)
			}
			if m.Offset != off {
				t.Fatalf("live message %d has offset %d, want %d",
					i, m.Offset, off)
			}
			last = m.Offset
		}
		sub.close()
		var missed []uint64
		for i := range 5 {
			missed = append(missed, pub.publish("room:2", 100+i))
		}
		back := dial(t, nodes[2].addr, "reader")
		a := back.subscribe("room:2", &last)
		if a["recovered"] != true {
			t.Fatalf("subscribe since %d: %v, want recovered:true",
				last, a)
		}
		for i, want := range missed {
			m, err := back.nextMessage(10 * time.Second)
			if err != nil {
				t.Fatalf("missed message %d: %v",
					i, err)
			}
			if m.Offset != want || m.Data != float64(100+i) {
				t.Fatalf("missed message %d = %+v, want offset %d data %d",
					i, m, want, 100+i)
			}
		}
		live := pub.publish("room:2", "live")
		m, err := back.nextMessage(10 * time.Second)
		if err != nil {
			t.Fatalf("live message after recovery: %v",
				err)
		}
		if m.Offset != live {
			t.Fatalf("after recovery got %+v, want offset %d (no gap, no duplicate)",
				m, live)
		}
		if m, err := back.nextMessage(300 * time.Millisecond); err == nil {
			t.Fatalf("unexpected message after recovery: %+v",
				m)
		}
		pub.close()
		back.close()
	})

	t.Run("since older than the history", func(t *testing.T) {
		pub := dial(t, nodes[0].addr, "publisher")
		first := pub.publish("room-3", "first")
		var offs []uint64
		for i := range 15 {
			offs = append(offs, pub.publish("room-3", i))
		}
		back := dial(t, nodes[1].addr, "reader")
		a := back.subscribe("room-3", &first)
		if a["recovered"] != false {
			t.Fatalf("subscribe since %d after 15 messages with history 10: %v, want recovered:false",
				first, a)
		}
		// The oldest kept messages follow: the last 10, plus the one
		// that anchors the recovery check.
		kept := offs[len(offs)-11:]
		for i, want := range kept {
			m, err := back.nextMessage(10 * time.Second)
			if err != nil {
				t.Fatalf("kept message %d: %v",
					i, err)
			}
			if m.Offset != want {
				t.Fatalf("kept message %d has offset %d, want %d",
					i, m.Offset, want)
			}
		}
		pub.close()
		back.close()
	})

	t.Run("a killed node leaves presence within the lease", func(t *testing.T) {
		victim := nodes[1]
		c := dial(t, victim.addr, "doomed")
		c.subscribe("room.5", nil)
		// Both survivors' projections are live (the stopped NATS server
		// may have held their consumers).
		testkit.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
			for _, n := range []*node{nodes[0], nodes[2]} {
				if n.openConns(victim.name) == 0 {
					return fmt.Errorf("the victim's connection is not in %s's presence yet", n.name)
				}
			}
			return nil
		})
		victim.stop(t, false)
		killed := time.Now()
		// The lease lapses at most one lease after the last renewal; a
		// survivor reaps at its next tick (lease/3).
		var storedAt time.Duration
		testkit.CheckFor(t, lease+lease/3+2*time.Second, 20*time.Millisecond, func() error {
			if storedAt == 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				info, err := nodes[0].log.Stream().Info(ctx, jetstream.WithSubjectFilter("wsbroker.events."+victim.name+".node_stopped"))
				cancel()
				if err == nil && len(info.State.Subjects) > 0 {
					storedAt = time.Since(killed)
					t.Logf("node.stopped stored %s after the kill; stream last seq %d", storedAt, info.State.LastSeq)
				}
			}
			for _, n := range []*node{nodes[0], nodes[2]} {
				if k := n.openConns(victim.name); k != 0 {
					return fmt.Errorf("%s still lists %d connections of %s (projection at seq %d)",
						n.name, k, victim.name, n.log.Projection().Seq())
				}
			}
			return nil
		})
		t.Logf("the killed node's connections left presence %s after the kill (lease %s)",
			time.Since(killed).Round(10*time.Millisecond), lease)
		// The survivors still exchange messages.
		a := dial(t, nodes[0].addr, "user-0")
		b := dial(t, nodes[2].addr, "user-2")
		a.subscribe("room.6", nil)
		b.subscribe("room.6", nil)
		exchange(t, "room.6", []*client{a, b}, true)
	})
	t.Run("a NATS server stops", func(t *testing.T) {
		// node-b was killed above; node-a and node-c remain.
		a := dial(t, nodes[0].addr, "user-0")
		c := dial(t, nodes[2].addr, "user-2")
		a.subscribe("room.4", nil)
		c.subscribe("room.4", nil)
		nc.stop(0)
		crossed(t, "room.4", a, c)
		crossed(t, "room.4", c, a)
		exchange(t, "room.4", []*client{a, c}, true)
		// Recovery still works on the two remaining NATS servers.
		last := c.publish("room.4", "before")
		for _, cl := range []*client{a, c} {
			if _, err := cl.nextMessage(10 * time.Second); err != nil {
				t.Fatalf("message before the reconnect: %v",
					err)
			}
		}
		c.close()
		missed := a.publish("room.4", "missed")
		back := dial(t, nodes[0].addr, "user-2")
		ack := back.subscribe("room.4", &last)
		if ack["recovered"] != true {
			t.Fatalf("subscribe since %d with a NATS server down: %v, want recovered:true",
				last, ack)
		}
		m, err := back.nextMessage(10 * time.Second)
		if err != nil || m.Offset != missed {
			t.Fatalf("recovered %+v, %v; want offset %d",
				m, err, missed)
		}
	})
}

func TestClusterLive(t *testing.T) {
	nc := startNATSCluster(t, 3)
	nodes := []*node{
		startNode(t, nc, "live-a", nodeOpts{}),
		startNode(t, nc, "live-b", nodeOpts{}),
		startNode(t, nc, "live-c", nodeOpts{}),
	}
	var clients []*client
	for i, n := range nodes {
		c := dial(t, n.addr, fmt.Sprintf("user-%d", i))
		c.subscribe("chat.room@1/x+y=z", nil)
		clients = append(clients, c)
	}
	// Interest crosses the routes asynchronously: wait for paths in both
	// directions first.
	crossed(t, "chat.room@1/x+y=z", clients[0], clients[1])
	crossed(t, "chat.room@1/x+y=z", clients[1], clients[2])
	crossed(t, "chat.room@1/x+y=z", clients[2], clients[0])
	for _, c := range clients {
		for {
			if _, err := c.nextMessage(300 * time.Millisecond); err != nil {
				break
			}
		}
	}
	exchange(t, "chat.room@1/x+y=z", clients, false)

	// A node listens to a channel only while it has local subscribers.
	subs := func(n *node) int { return n.cl.Conn().NumSubscriptions() }
	before := subs(nodes[1])
	clients[1].request(map[string]any{"type": "unsubscribe", "channel": "chat.room@1/x+y=z"})
	if got := subs(nodes[1]); got != before-1 {
		t.Fatalf("node-b NATS subscriptions after its last local subscriber left: %d, want %d",
			got, before-1)
	}
	clients[1].subscribe("chat.room@1/x+y=z", nil)
	if got := subs(nodes[1]); got != before {
		t.Fatalf("node-b NATS subscriptions after a new local subscriber: %d, want %d",
			got, before)
	}
}
