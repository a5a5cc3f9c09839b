package eventlog

import (
	"testing"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// The ring keeps FIFO order across wrap-arounds and growth, and holds at
// most its bound.
func TestQueue(t *testing.T) {
	tests := []struct {
		name  string
		max   int
		steps []int // > 0: push that many; < 0: pop that many
	}{
		{
			name:  "grow from empty",
			max:   1000,
			steps: []int{700, -700},
		},
		{
			name:  "grow while wrapped",
			max:   1000,
			steps: []int{50, -40, 60, -10, 500, -555, 3},
		},
		{
			name:  "bounded",
			max:   100,
			steps: []int{150, -30, 50, -200},
		},
		{
			name:  "tiny",
			max:   1,
			steps: []int{3, -1, 1, -5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQueue(tt.max)
			var want []uint64
			next := uint64(0)
			for _, s := range tt.steps {
				if s > 0 {
					for range s {
						next++
						ok := q.push(&event.Event{Seq: next})
						if ok != (len(want) < tt.max) {
							t.Fatalf("push %d with %d queued: %v",
								next, len(want), ok)
						}
						if ok {
							want = append(want, next)
						}
					}
					continue
				}
				got := q.pop(nil, -s)
				n := min(-s, len(want))
				if len(got) != n {
					t.Fatalf("pop %d: got %d events, want %d",
						-s, len(got), n)
				}
				for i := range got {
					if got[i].Seq != want[i] {
						t.Fatalf("pop: event %d has seq %d, want %d",
							i, got[i].Seq, want[i])
					}
				}
				want = want[n:]
			}
			if q.len() != len(want) {
				t.Fatalf("len %d, want %d",
					q.len(), len(want))
			}
		})
	}
}
