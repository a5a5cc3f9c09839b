package eventlog

import (
	"sync"
	"time"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// sampler bounds the rejected-upgrade events that reach the log under a
// flood: per reason and one-second window, the first limit-1 go straight
// through, the next one is held, and every later one only increments the
// held event's Suppressed. The held event is appended when its window ends
// (or on Flush), so a window stores at most limit events and the sum of
// 1+Suppressed over stored events equals the rejections observed. Metrics
// stay exact regardless: they come from a sink before the log.
type sampler struct {
	limit int
	mu    sync.Mutex
	by    [authn.NumReasons + 1]reasonWindow
}

type reasonWindow struct {
	start  time.Time
	passed int
	held   bool
	ev     event.Event
}

func newSampler(limit int) *sampler { return &sampler{limit: limit} }

func reasonIndex(r authn.Reason) int {
	if r >= authn.NumReasons {
		return int(authn.NumReasons)
	}
	return int(r)
}

func (s *sampler) observe(l *Log, e *event.Event, now time.Time) {
	s.mu.Lock()
	w := &s.by[reasonIndex(e.Reason)]
	if now.Sub(w.start) >= time.Second || now.Before(w.start) {
		s.releaseLocked(l, w)
		w.start, w.passed = now, 0
	}
	switch {
	case w.held:
		w.ev.Suppressed += 1 + e.Suppressed
		s.mu.Unlock()
	case w.passed < s.limit-1:
		w.passed++
		s.mu.Unlock()
		l.enqueue(e)
	default:
		w.held, w.ev = true, *e
		s.mu.Unlock()
	}
}

func (s *sampler) releaseLocked(l *Log, w *reasonWindow) {
	if !w.held {
		return
	}
	w.held = false
	l.enqueue(&w.ev)
	w.ev = event.Event{}
}

// releaseExpired appends held events whose window has ended.
func (s *sampler) releaseExpired(l *Log, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.by {
		w := &s.by[i]
		if w.held && now.Sub(w.start) >= time.Second {
			s.releaseLocked(l, w)
		}
	}
}

// releaseAll appends every held event (Flush, Close). The window stays, so
// later rejections in it are still held rather than passed.
func (s *sampler) releaseAll(l *Log) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.by {
		s.releaseLocked(l, &s.by[i])
	}
}
