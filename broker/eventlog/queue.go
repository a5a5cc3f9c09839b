package eventlog

import (
	"sync"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// queue is the bounded FIFO between the producers and the appender. It is a
// ring that grows on demand up to its bound, rather than a channel of that
// capacity: a full-size channel would hold QueueSize events (~25 MB at the
// default) from the start, and the garbage collector would scan all of it
// on every cycle even when the log keeps up, which it nearly always does.
type queue struct {
	mu   sync.Mutex
	buf  []event.Event
	head int
	n    int
	max  int
	// ready has a value when the queue went from empty to not empty.
	ready chan struct{}
}

func newQueue(max int) *queue {
	return &queue{max: max, buf: make([]event.Event, min(max, 64)), ready: make(chan struct{}, 1)}
}

// push copies e in; false when the queue is full.
func (q *queue) push(e *event.Event) bool {
	q.mu.Lock()
	if q.n == q.max {
		q.mu.Unlock()
		return false
	}
	if q.n == len(q.buf) {
		q.grow()
	}
	slot := &q.buf[(q.head+q.n)%len(q.buf)]
	*slot = *e
	// The log stores no span detail: drop it rather than keep it queued.
	slot.Trace = event.UpgradeTrace{}
	q.n++
	wake := q.n == 1
	q.mu.Unlock()
	if wake {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
	return true
}

// grow doubles the ring, up to max. Called with mu held.
func (q *queue) grow() {
	nb := make([]event.Event, min(2*len(q.buf), q.max))
	k := copy(nb, q.buf[q.head:])
	copy(nb[k:], q.buf[:q.head])
	q.buf, q.head = nb, 0
}

// pop moves up to limit events into dst and returns it.
func (q *queue) pop(dst []event.Event, limit int) []event.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.n > 0 && limit > 0 {
		dst = append(dst, q.buf[q.head])
		// Release the strings the slot refers to.
		q.buf[q.head] = event.Event{}
		q.head = (q.head + 1) % len(q.buf)
		q.n--
		limit--
	}
	if q.n == 0 && len(q.buf) > shrinkAbove {
		// A burst grew the ring; give the memory back once it drained.
		q.buf, q.head = make([]event.Event, min(q.max, 64)), 0
	}
	return dst
}

// shrinkAbove is the ring length beyond which an emptied ring is replaced
// by a small one.
const shrinkAbove = 1024

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}
