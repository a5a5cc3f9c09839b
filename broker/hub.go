package broker

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// hub maps channels to their local subscribers. With a Bus, a channel's
// first local subscriber makes the node watch the channel on the bus and
// its last one unwatches it.
type hub struct {
	s   *Server
	bus Bus
	mu  sync.RWMutex
	ch  map[string]*channel

	// busLog rate-limits the warning of failed bus publishes: one line,
	// then at most one per busLogEvery with the count since.
	busLogMu   sync.Mutex
	busLogLast time.Time
	busLogN    int
}

const busLogEvery = 10 * time.Second

// busFailed logs a publish the bus could not take (delivered on this node
// only; counted as wsbroker_messages_dropped_total{reason="bus"}), without
// a line per message through an outage.
func (h *hub) busFailed(err error) {
	h.busLogMu.Lock()
	h.busLogN++
	now := h.s.now()
	if !h.busLogLast.IsZero() && now.Sub(h.busLogLast) < busLogEvery {
		h.busLogMu.Unlock()
		return
	}
	n := h.busLogN
	h.busLogLast, h.busLogN = now, 0
	h.busLogMu.Unlock()
	h.s.log.Warn("bus publish failed; delivered on this node only", "err", err, "failed_publishes", n)
}

type channel struct {
	name string
	// subs maps a subscriber to nil when it is live, or to the messages
	// held back while its history is being replayed.
	subs   map[*Conn]*held
	offset uint64
}

// held buffers the live messages of one subscriber during its replay.
type held struct {
	offs   []uint64
	frames [][]byte
}

// maxHeld bounds the live messages held during one replay; beyond it the
// subscriber is closed as a slow consumer.
const maxHeld = 4096

func newHub(s *Server, bus Bus) *hub {
	h := &hub{s: s, bus: bus, ch: map[string]*channel{}}
	if bus != nil {
		bus.Start(func(name string, offset uint64, data []byte) { h.deliver(name, offset, data) })
	}
	return h
}

// subscribe adds c to name; it reports false if c already was subscribed.
// With replay, live messages for c are held until live is called.
func (h *hub) subscribe(c *Conn, name string, replay bool) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	if _, ok := c.subs[name]; ok {
		c.mu.Unlock()
		return false
	}
	if c.subs == nil {
		c.subs = map[string]struct{}{}
	}
	c.subs[name] = struct{}{}
	c.mu.Unlock()

	h.mu.Lock()
	ch := h.ch[name]
	if ch == nil {
		ch = &channel{name: name, subs: map[*Conn]*held{}}
		h.ch[name] = ch
		if h.bus != nil {
			h.bus.Watch(name)
		}
	}
	var hd *held
	if replay {
		hd = &held{}
	}
	ch.subs[c] = hd
	n := len(h.ch)
	h.mu.Unlock()
	h.s.metrics.Channels(n)
	h.event(c, event.TypeSubscriptionAdded, name)
	return true
}

// live ends c's replay in name: the held messages with an offset above
// last are sent, then c gets messages as they come. Messages that arrive
// while held ones are being sent are held too, so the order is kept.
func (h *hub) live(c *Conn, name string, last uint64) {
	for {
		h.mu.Lock()
		ch := h.ch[name]
		if ch == nil {
			h.mu.Unlock()
			return
		}
		hd, ok := ch.subs[c]
		if !ok || hd == nil {
			h.mu.Unlock()
			return
		}
		if len(hd.frames) == 0 {
			ch.subs[c] = nil
			h.mu.Unlock()
			return
		}
		offs, frames := hd.offs, hd.frames
		hd.offs, hd.frames = nil, nil
		h.mu.Unlock()
		var batch []byte
		for i, f := range frames {
			if offs[i] > last {
				batch = append(batch, f...)
				last = offs[i]
			}
		}
		if len(batch) > 0 && !c.send(batch) {
			return
		}
	}
}

// unsubscribe removes c from name; detach also removes name from c's set
// (false when the connection is closing and already let go of its set).
func (h *hub) unsubscribe(c *Conn, name string, detach bool) bool {
	if detach {
		c.mu.Lock()
		_, ok := c.subs[name]
		delete(c.subs, name)
		c.mu.Unlock()
		if !ok {
			return false
		}
	}
	h.mu.Lock()
	ch := h.ch[name]
	if ch != nil {
		delete(ch.subs, c)
		if len(ch.subs) == 0 {
			delete(h.ch, name)
			if h.bus != nil {
				h.bus.Unwatch(name)
			}
		}
	}
	n := len(h.ch)
	h.mu.Unlock()
	h.s.metrics.Channels(n)
	h.event(c, event.TypeSubscriptionRemoved, name)
	return true
}

func (h *hub) event(c *Conn, t event.Type, name string) {
	e := h.s.getEvent()
	e.Type = t
	e.ConnID, e.Subject, e.Channel = c.id, c.subject, name
	h.s.emit(context.Background(), e)
	h.s.putEvent(e)
}

// publish fans a message published on this node out. Without history the
// local subscribers are served at once (the offset is this node's count of
// the channel's messages) and the bus carries the message to the other
// nodes without being waited for. With history the message is first stored
// in the history stream, whose sequence is the offset on every node, and
// the bus brings it back to this node's subscribers too.
func (h *hub) publish(ctx context.Context, name string, data []byte) (uint64, error) {
	if h.bus != nil && h.bus.History() {
		return h.bus.Publish(ctx, name, data)
	}
	off := h.deliver(name, 0, data)
	if h.bus != nil {
		if _, err := h.bus.Publish(ctx, name, data); err != nil {
			h.s.metrics.Dropped(telemetry.DropBus)
			h.busFailed(err)
		}
	}
	return off, nil
}

// deliver encodes the message frame once and queues the same bytes to
// every local subscriber. Offset 0 numbers the message in this node's
// channel count. It returns the offset.
func (h *hub) deliver(name string, offset uint64, data []byte) uint64 {
	h.mu.Lock()
	ch := h.ch[name]
	if ch == nil {
		h.mu.Unlock()
		return offset
	}
	if offset == 0 {
		ch.offset++
		offset = ch.offset
	} else if offset > ch.offset {
		ch.offset = offset
	}
	frame := encodeMessage(name, offset, data)
	// Copy the subscriber set so that sending (which may close a slow
	// consumer, which unsubscribes) runs without the hub lock.
	subs := make([]*Conn, 0, len(ch.subs))
	var over []*Conn
	for c, hd := range ch.subs {
		if hd == nil {
			subs = append(subs, c)
			continue
		}
		if len(hd.frames) >= maxHeld {
			over = append(over, c)
			continue
		}
		hd.offs = append(hd.offs, offset)
		hd.frames = append(hd.frames, frame)
	}
	h.mu.Unlock()
	sent := 0
	for _, c := range subs {
		if c.send(frame) {
			sent++
		}
	}
	for _, c := range over {
		h.s.metrics.Dropped(telemetry.DropSlowConsumer)
		go c.close(event.CloseSlowConsumer, CloseSlowConsumer, "slow_consumer")
	}
	h.s.metrics.Messages(telemetry.Out, sent, len(frame))
	return offset
}

// encodeMessage builds the text frame
// {"type":"message","channel":...,"offset":...,"data":...}. Channel names are
// validated to need no JSON escaping; data is validated JSON.
func encodeMessage(name string, off uint64, data []byte) []byte {
	const (
		a = `{"type":"message","channel":"`
		b = `","offset":`
		d = `,"data":`
	)
	n := len(a) + len(name) + len(b) + 20 + len(d) + len(data) + 1
	buf := make([]byte, 10, 10+n)
	buf = append(buf, a...)
	buf = append(buf, name...)
	buf = append(buf, b...)
	buf = strconv.AppendUint(buf, off, 10)
	buf = append(buf, d...)
	buf = append(buf, data...)
	buf = append(buf, '}')
	return frameInPlace(buf, 10)
}

// frameInPlace writes an unmasked FIN text frame header right before the
// payload that starts at buf[room:] and returns the frame.
func frameInPlace(buf []byte, room int) []byte {
	n := len(buf) - room
	var h int
	switch {
	case n < 126:
		h = 2
		buf[room-1] = byte(n)
	case n < 1<<16:
		h = 4
		buf[room-3] = 126
		buf[room-2] = byte(n >> 8)
		buf[room-1] = byte(n)
	default:
		h = 10
		buf[room-9] = 127
		for i := 0; i < 8; i++ {
			buf[room-1-i] = byte(uint64(n) >> (8 * i))
		}
	}
	buf[room-h] = 0x81
	return buf[room-h:]
}
