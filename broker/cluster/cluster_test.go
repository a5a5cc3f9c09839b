package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestToken(t *testing.T) {
	cases := []struct {
		channel string
		token   string
	}{
		{
			channel: "news",
			token:   "news",
		},
		{
			channel: "room.1",
			token:   "room%2E1",
		},
		{
			channel: "a.b.c:_-@/+=",
			token:   "a%2Eb%2Ec:_-@/+=",
		},
	}
	for _, tc := range cases {
		if got := Token(tc.channel); got != tc.token {
			t.Fatalf("Token(%q) = %q, want %q",
				tc.channel, got, tc.token)
		}
		if got := Channel(tc.token); got != tc.channel {
			t.Fatalf("Channel(%q) = %q, want %q",
				tc.token, got, tc.channel)
		}
	}
}

func TestKey(t *testing.T) {
	cases := []struct {
		node string
		key  string
	}{
		{
			node: "node-1",
			key:  "node-1",
		},
		{
			node: "host.example.com",
			key:  "host_example_com",
		},
	}
	for _, tc := range cases {
		if got := Key(tc.node); got != tc.key {
			t.Fatalf("Key(%q) = %q, want %q",
				tc.node, got, tc.key)
		}
	}
}

// startNATS runs one NATS server with JetStream on a loopback port.
func startNATS(t *testing.T) string {
	t.Helper()
	return testkit.StartNATS(t, server.Options{JetStream: true}).ClientURL()
}

func TestRecover(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := Open(ctx, Config{
		NATSURLs:        []string{startNATS(t)},
		Node:            "n1",
		Epoch:           1,
		HistoryMessages: 3,
		Lease:           time.Second,
	})
	if err != nil {
		t.Fatalf("Open: %v",
			err)
	}
	defer c.Close()
	publish := func(channel string) uint64 {
		off, err := c.Publish(ctx, channel, []byte(`"x"`))
		if err != nil {
			t.Fatalf("Publish: %v",
				err)
		}
		return off
	}
	// a: 1..6 interleaved with b, so that offsets are not contiguous.
	var a []uint64
	for range 6 {
		a = append(a, publish("a"))
		publish("b.c")
	}
	last := publish("b.c")
	cases := []struct {
		name      string
		channel   string
		since     uint64
		recovered bool
		offsets   []uint64
	}{
		{
			name:      "up to date",
			channel:   "a",
			since:     a[5],
			recovered: true,
		},
		{
			name:      "missed the last three (the history)",
			channel:   "a",
			since:     a[2],
			recovered: true,
			offsets:   a[3:],
		},
		{
			name:      "missed four: the oldest is gone",
			channel:   "a",
			since:     a[1],
			recovered: false,
			offsets:   a[2:],
		},
		{
			name:      "since 0",
			channel:   "a",
			since:     0,
			recovered: false,
			offsets:   a[2:],
		},
		{
			name:      "an empty channel, since the stream's last",
			channel:   "empty",
			since:     last,
			recovered: true,
		},
		{
			name:      "an empty channel, since before the stream's last",
			channel:   "empty",
			since:     1,
			recovered: false,
		},
	}
	for _, tc := range cases {
		msgs, recovered, err := c.Recover(ctx, tc.channel, tc.since)
		if err != nil {
			t.Fatalf("%s: Recover: %v",
				tc.name, err)
		}
		var offs []uint64
		for _, m := range msgs {
			offs = append(offs, m.Offset)
		}
		if recovered != tc.recovered || fmt.Sprint(offs) != fmt.Sprint(tc.offsets) {
			t.Fatalf("%s: Recover(%q, %d) = %v, %v; want %v, %v",
				tc.name, tc.channel, tc.since, offs, recovered, tc.offsets, tc.recovered)
		}
	}
}

func TestGapFill(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := Open(ctx, Config{
		NATSURLs:        []string{startNATS(t)},
		Node:            "n1",
		Epoch:           1,
		HistoryMessages: 10,
		Lease:           time.Second,
	})
	if err != nil {
		t.Fatalf("Open: %v",
			err)
	}
	defer c.Close()
	got := make(chan uint64, 16)
	c.Start(func(channel string, offset uint64, data []byte) { got <- offset })
	var offs []uint64
	for range 3 {
		off, err := c.Publish(ctx, "g.1", []byte(`1`))
		if err != nil {
			t.Fatalf("Publish: %v",
				err)
		}
		offs = append(offs, off)
	}
	// The node delivered the first message, then lost the republished
	// copies of the next two (nobody listened).
	c.Watch("g.1")
	if err := c.nc.FlushWithContext(ctx); err != nil {
		t.Fatalf("flush: %v",
			err)
	}
	c.mu.Lock()
	c.watches["g.1"].last = offs[0]
	c.mu.Unlock()
	off, err := c.Publish(ctx, "g.1", []byte(`1`))
	if err != nil {
		t.Fatalf("Publish: %v",
			err)
	}
	want := []uint64{offs[1], offs[2], off}
	for i, w := range want {
		select {
		case o := <-got:
			if o != w {
				t.Fatalf("delivery %d: offset %d, want %d (all: %v)",
					i, o, w, want)
			}
		case <-ctx.Done():
			t.Fatalf("delivery %d (offset %d) missing",
				i, w)
		}
	}
	select {
	case o := <-got:
		t.Fatalf("extra delivery of offset %d",
			o)
	case <-time.After(200 * time.Millisecond):
	}
}
