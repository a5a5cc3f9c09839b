package broker

import (
	"container/heap"
	"math"
	"sync"
	"time"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// expiries closes connections whose token expired, in due order, from one
// goroutine with one timer. (A runtime timer per connection cost ~200 bytes
// of every idle connection.) Each Conn knows its index in the heap, so a
// close or a refresh updates it in O(log n) and nothing stale piles up.
type expiries struct {
	s    *Server
	mu   sync.Mutex
	h    expiryHeap
	wake chan struct{}
}

type expiryHeap []*Conn

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expDue < h[j].expDue }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].expIdx, h[j].expIdx = int32(i), int32(j)
}
func (h *expiryHeap) Push(x any) {
	c := x.(*Conn)
	c.expIdx = int32(len(*h))
	*h = append(*h, c)
}
func (h *expiryHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	c.expIdx = -1
	return c
}

func newExpiries(s *Server) *expiries {
	return &expiries{s: s, wake: make(chan struct{}, 1)}
}

// unixNanoSat is t in Unix nanoseconds, saturated at the int64 range (a
// token may expire after 2262).
func unixNanoSat(t time.Time) int64 {
	switch {
	case t.Year() > 2200:
		return math.MaxInt64
	case t.Year() < 1700:
		return math.MinInt64
	}
	return t.UnixNano()
}

// set schedules (or moves) c's close at due (Unix nanoseconds).
func (x *expiries) set(c *Conn, due int64) {
	x.mu.Lock()
	c.expDue = due
	if c.expIdx >= 0 {
		heap.Fix(&x.h, int(c.expIdx))
	} else {
		heap.Push(&x.h, c)
	}
	first := x.h[0] == c
	x.mu.Unlock()
	if first {
		select {
		case x.wake <- struct{}{}:
		default:
		}
	}
}

// remove forgets c (closed).
func (x *expiries) remove(c *Conn) {
	x.mu.Lock()
	if c.expIdx >= 0 {
		heap.Remove(&x.h, int(c.expIdx))
	}
	x.mu.Unlock()
}

// run closes connections as their tokens expire, until the server stops.
func (x *expiries) run(stop <-chan struct{}) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		x.mu.Lock()
		var due *Conn
		wait := time.Hour
		if len(x.h) > 0 {
			now := x.s.now().UnixNano()
			if x.h[0].expDue <= now {
				due = heap.Pop(&x.h).(*Conn)
			} else {
				wait = time.Duration(x.h[0].expDue - now)
			}
		}
		x.mu.Unlock()
		if due != nil {
			due.close(event.CloseTokenExpired, CloseTokenExpired, "token_expired")
			continue
		}
		t.Reset(wait)
		select {
		case <-t.C:
		case <-x.wake:
		case <-stop:
			return
		}
	}
}
