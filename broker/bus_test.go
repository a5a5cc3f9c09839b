package broker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// fakeBus is a Bus in memory: with history, Publish stores the message
// under the next (non-contiguous) offset and delivers it back at once, as
// the history stream's republish would.
type fakeBus struct {
	history bool

	mu        sync.Mutex
	deliver   func(channel string, offset uint64, data []byte)
	seq       uint64
	stored    map[string][]BusMessage
	watches   map[string]int
	unwatches map[string]int
	published []string
	// duringRecover runs inside Recover, after its snapshot: live
	// messages that arrive while a replay is under way.
	duringRecover func()
}

func newFakeBus(history bool) *fakeBus {
	return &fakeBus{history: history, stored: map[string][]BusMessage{}, watches: map[string]int{}, unwatches: map[string]int{}}
}

func (f *fakeBus) Start(deliver func(string, uint64, []byte)) { f.deliver = deliver }

func (f *fakeBus) Watch(channel string) {
	f.mu.Lock()
	f.watches[channel]++
	f.mu.Unlock()
}

func (f *fakeBus) Unwatch(channel string) {
	f.mu.Lock()
	f.unwatches[channel]++
	f.mu.Unlock()
}

func (f *fakeBus) Sync(context.Context, string) error { return nil }

func (f *fakeBus) History() bool { return f.history }

func (f *fakeBus) Publish(_ context.Context, channel string, data []byte) (uint64, error) {
	f.mu.Lock()
	f.published = append(f.published, channel+" "+string(data))
	if !f.history {
		f.mu.Unlock()
		return 0, nil
	}
	f.seq += 2
	off := f.seq
	f.stored[channel] = append(f.stored[channel], BusMessage{Offset: off, Data: data})
	f.mu.Unlock()
	f.deliver(channel, off, data)
	return off, nil
}

func (f *fakeBus) Recover(_ context.Context, channel string, since uint64) ([]BusMessage, bool, error) {
	f.mu.Lock()
	var out []BusMessage
	for _, m := range f.stored[channel] {
		if m.Offset > since {
			out = append(out, m)
		}
	}
	during := f.duringRecover
	f.mu.Unlock()
	if during != nil {
		during()
	}
	return out, true, nil
}

func expectMessage(t *testing.T, m map[string]any, offset uint64, data string) {
	t.Helper()
	if m["type"] != "message" || m["offset"] != float64(offset) || m["data"] != data {
		t.Fatalf("got %v, want message offset %d data %q",
			m, offset, data)
	}
}

func TestBusRecoveryHoldsLiveMessages(t *testing.T) {
	bus := newFakeBus(true)
	b := newTestBroker(t, brokerOpts{bus: bus})
	ctx := context.Background()
	for _, d := range []string{"a", "b", "c"} {
		if _, err := bus.Publish(ctx, "news", []byte(fmt.Sprintf("%q", d))); err != nil {
			t.Fatalf("publish: %v",
				err)
		}
	}
	// Stored: 2 a, 4 b, 6 c. While the replay runs, 6 arrives live again
	// (a duplicate) and 8 d is published.
	bus.duringRecover = func() {
		bus.deliver("news", 6, []byte(`"c"`))
		if _, err := bus.Publish(ctx, "news", []byte(`"d"`)); err != nil {
			t.Errorf("publish: %v",
				err)
		}
	}
	c := b.connect(validClaims("alice"))
	c.send(map[string]any{"type": "subscribe", "channel": "news", "since": 2, "id": 1})
	ack := c.read()
	if ack["type"] != "ack" || ack["recovered"] != true {
		t.Fatalf("subscribe since 2: %v, want an ack with recovered:true",
			ack)
	}
	expectMessage(t, c.read(), 4, "b")
	expectMessage(t, c.read(), 6, "c")
	expectMessage(t, c.read(), 8, "d")
	// Live from here: the next frame is the next message, not a duplicate.
	c.send(map[string]any{"type": "publish", "channel": "news", "data": "e", "id": 2})
	expectMessage(t, c.read(), 10, "e")
	if a := c.read(); a["type"] != "ack" || a["offset"] != float64(10) {
		t.Fatalf("publish ack: %v, want offset 10",
			a)
	}
}

func TestBusInterestAndLocalFirst(t *testing.T) {
	bus := newFakeBus(false)
	b := newTestBroker(t, brokerOpts{bus: bus})
	alice := b.connect(validClaims("alice"))
	bob := b.connect(validClaims("bob"))
	for i, c := range []*wsClient{alice, bob} {
		c.send(map[string]any{"type": "subscribe", "channel": "room.1", "id": i})
		expectType(t, c.read(), "ack")
	}
	bus.mu.Lock()
	watches := bus.watches["room.1"]
	bus.mu.Unlock()
	if watches != 1 {
		t.Fatalf("two local subscribers watched the channel %d times, want 1",
			watches)
	}
	// A local publish reaches the local subscriber (offset 1, counted on
	// this node) and goes to the bus once.
	bob.send(map[string]any{"type": "publish", "channel": "room.1", "data": "hi", "id": "p"})
	expectMessage(t, alice.read(), 1, "hi")
	// A message from another node gets the next local offset.
	bus.deliver("room.1", 0, []byte(`"remote"`))
	expectMessage(t, alice.read(), 2, "remote")
	// Local delivery comes first, the bus publish right after it: wait.
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		if published := fmt.Sprint(bus.published); published != `[room.1 "hi"]` {
			return fmt.Errorf("bus got %s, want the one local publish", published)
		}
		return nil
	})
	for i, c := range []*wsClient{alice, bob} {
		c.send(map[string]any{"type": "unsubscribe", "channel": "room.1", "id": 10 + i})
	}
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		bus.mu.Lock()
		defer bus.mu.Unlock()
		if n := bus.unwatches["room.1"]; n != 1 {
			return fmt.Errorf("unwatched %d times, want 1 after the last local subscriber left", n)
		}
		return nil
	})
}
