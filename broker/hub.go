package broker

import (
	"context"
	"strconv"
	"sync"

	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// hub maps channels to their local subscribers.
type hub struct {
	s  *Server
	mu sync.RWMutex
	ch map[string]*channel
}

type channel struct {
	name   string
	subs   map[*Conn]struct{}
	offset uint64
}

func newHub(s *Server) *hub { return &hub{s: s, ch: map[string]*channel{}} }

// subscribe adds c to name; it reports false if c already was subscribed.
func (h *hub) subscribe(c *Conn, name string) bool {
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
		ch = &channel{name: name, subs: map[*Conn]struct{}{}}
		h.ch[name] = ch
	}
	ch.subs[c] = struct{}{}
	n := len(h.ch)
	h.mu.Unlock()
	h.s.metrics.Channels(n)
	h.event(c, event.TypeSubscriptionAdded, name)
	return true
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

// publish encodes the message frame once and queues the same bytes to
// every local subscriber. It returns the message's offset in the channel.
func (h *hub) publish(name string, data []byte) uint64 {
	h.mu.Lock()
	ch := h.ch[name]
	if ch == nil {
		h.mu.Unlock()
		return 0
	}
	ch.offset++
	off := ch.offset
	frame := encodeMessage(name, off, data)
	// Copy the subscriber set so that sending (which may close a slow
	// consumer, which unsubscribes) runs without the hub lock.
	subs := make([]*Conn, 0, len(ch.subs))
	for c := range ch.subs {
		subs = append(subs, c)
	}
	h.mu.Unlock()
	sent := 0
	for _, c := range subs {
		if c.send(frame) {
			sent++
		}
	}
	h.s.metrics.Messages(telemetry.Out, sent, len(frame))
	return off
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
