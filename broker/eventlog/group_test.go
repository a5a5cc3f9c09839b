package eventlog

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// layout builds the groups of evs and describes them as "type:seq,seq ...",
// checking that each group's message decodes to its events.
func layout(t *testing.T, evs []event.Event, limit int) string {
	t.Helper()
	var g grouper
	var lost []uint64
	groups := g.build(evs, limit, func(e *event.Event, err error) { lost = append(lost, e.Seq) })
	var out []string
	for _, gr := range groups {
		var seqs []string
		for _, e := range gr.evs {
			seqs = append(seqs, fmt.Sprint(e.Seq))
		}
		if gr.id != gr.evs[0].ID() {
			t.Errorf("group id %s, want its first event's %s", gr.id, gr.evs[0].ID())
		}
		i := 0
		if err := event.DecodeBatch(append(gr.buf, ']'), func(j int, e *event.Event) error {
			if e.ID() != gr.evs[j].ID() || e.Type != gr.typ {
				t.Errorf("message event %d is %s %s, want %s", j, e.Type, e.ID(), gr.evs[j].ID())
			}
			i++
			return nil
		}); err != nil || i != len(gr.evs) {
			t.Fatalf("group message %s: %d events, %v", gr.buf, i, err)
		}
		out = append(out, strings.TrimPrefix(gr.typ.Short(), "connection.")+":"+strings.Join(seqs, ","))
	}
	if len(lost) > 0 {
		out = append(out, fmt.Sprint("lost:", lost))
	}
	return strings.Join(out, " ")
}

func TestGrouperLayout(t *testing.T) {
	open := func(seq, conn uint64) event.Event { return *opened("n", 1, seq, conn, "alice") }
	with := func(seq, conn uint64, typ event.Type, ch string) event.Event {
		return *withConn(opened("n", 1, 0, conn, "alice"), seq, typ, ch)
	}
	node := func(seq uint64, typ event.Type) event.Event {
		e := NodeEvent(typ, "n", 1, time.Now())
		e.Seq = seq
		return e
	}
	rej := func(seq uint64) event.Event { return *rejected("n", 1, seq, authn.ReasonExpired) }
	tooLate := open(9, 9)
	tooLate.TokenExpiry = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	other := *opened("m", 1, 3, 1, "bob")
	otherEpoch := *opened("n", 2, 4, 1, "bob")
	for _, c := range []struct {
		name  string
		evs   []event.Event
		limit int
		want  string
	}{
		{
			name: "connect and close, one message per type",
			evs: []event.Event{open(1, 1), with(2, 1, event.TypeConnectionClosed, ""), open(3, 2),
				with(4, 2, event.TypeConnectionClosed, ""), rej(5), open(6, 3), rej(7)},
			want: "opened:1,3,6 closed:2,4 upgrade.rejected:5,7",
		},
		{
			name: "a subscribe after an unsubscribe of the same connection stays after it",
			evs: []event.Event{open(1, 1), with(2, 1, event.TypeSubscriptionAdded, "a"),
				with(3, 1, event.TypeSubscriptionRemoved, "a"), with(4, 1, event.TypeSubscriptionAdded, "a"),
				with(5, 2, event.TypeSubscriptionAdded, "a")},
			want: "opened:1 subscription.added:2 subscription.removed:3 subscription.added:4,5",
		},
		{
			name: "other connections join earlier messages",
			evs: []event.Event{open(1, 1), with(2, 1, event.TypeSubscriptionAdded, "a"),
				with(3, 1, event.TypeSubscriptionRemoved, "a"), open(4, 2), with(5, 2, event.TypeSubscriptionAdded, "a")},
			want: "opened:1,4 subscription.added:2,5 subscription.removed:3",
		},
		{
			name: "node events are barriers",
			evs: []event.Event{open(1, 1), node(2, event.TypeNodeStopped), node(3, event.TypeNodeStarted),
				open(4, 2), rej(5), node(6, event.TypeNodeStopped), rej(7)},
			want: "opened:1 node.stopped:2 node.started:3 opened:4 upgrade.rejected:5 node.stopped:6 upgrade.rejected:7",
		},
		{
			name: "one message per node and epoch",
			evs:  []event.Event{open(1, 1), open(2, 2), other, otherEpoch, open(5, 3)},
			want: "opened:1,2 opened:3 opened:4 opened:5",
		},
		{
			name: "an unencodable event is left out",
			evs:  []event.Event{open(1, 1), tooLate, open(2, 2)},
			want: "opened:1,2 lost:[9]",
		},
		{
			name:  "size limit",
			evs:   []event.Event{open(1, 1), open(2, 2), open(3, 3), open(4, 4), open(5, 5)},
			limit: 2*len(mustJSON(t, open(1, 1))) + 3,
			want:  "opened:1,2 opened:3,4 opened:5",
		},
		{
			name:  "an event larger than the limit goes alone",
			evs:   []event.Event{open(1, 1), open(2, 2)},
			limit: 10,
			want:  "opened:1 opened:2",
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.limit == 0 {
				c.limit = maxGroupBytes
			}
			if got := layout(t, c.evs, c.limit); got != c.want {
				t.Errorf("groups\n got %s\nwant %s", got, c.want)
			}
		})
	}
}

func mustJSON(t *testing.T, e event.Event) []byte {
	b, err := e.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Random batches: read back in group order, every connection's events and
// every type's are in the order observed, and nothing crosses a node event.
func TestGrouperKeepsOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	types := []event.Type{event.TypeConnectionOpened, event.TypeConnectionClosed, event.TypeSubscriptionAdded,
		event.TypeSubscriptionRemoved, event.TypeTokenRefreshed, event.TypeUpgradeRejected, event.TypeNodeStarted}
	var g grouper
	for round := range 200 {
		evs := make([]event.Event, 1+r.IntN(300))
		for i := range evs {
			typ := types[r.IntN(len(types))]
			if typ == event.TypeNodeStarted && r.IntN(20) > 0 {
				typ = event.TypeConnectionOpened
			}
			e := event.Event{Type: typ, Node: "n", Epoch: 1, Seq: uint64(i + 1), Time: time.Unix(1, 0), Channel: "c"}
			if typ != event.TypeUpgradeRejected && typ != event.TypeNodeStarted {
				e.ConnID = 1 + uint64(r.IntN(8))
			}
			evs[i] = e
		}
		groups := g.build(evs, 1+r.IntN(4)*2000, func(*event.Event, error) { t.Fatal("lost") })
		var flat []Record
		lastBarrier, maxSeen := uint64(0), uint64(0)
		n := 0
		for _, gr := range groups {
			for _, e := range gr.evs {
				if e.Seq < lastBarrier {
					t.Fatalf("round %d: event %d stored after node event %d", round, e.Seq, lastBarrier)
				}
				if e.Type == event.TypeNodeStarted {
					if maxSeen > e.Seq {
						t.Fatalf("round %d: event %d stored before node event %d", round, maxSeen, e.Seq)
					}
					lastBarrier = e.Seq
				}
				maxSeen = max(maxSeen, e.Seq)
				flat = append(flat, Record{Event: *e})
				n++
			}
		}
		if n != len(evs) {
			t.Fatalf("round %d: %d events grouped, want %d", round, n, len(evs))
		}
		checkOrder(t, flat)
		g.release()
	}
}

// A log written before batching holds one structured event per message:
// the replay at Open folds it and the queries serve it, alongside batches,
// and a since can start inside a batch.
func TestReadsSingleEventMessages(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, Config{DataDir: dir})
	ctx := testContext(t)
	legacy, err := opened("node-1", 1, 1, 1, "alice").MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	batch, err := event.AppendBatchJSON(nil, []event.Event{*opened("node-1", 1, 2, 2, "bob"), *opened("node-1", 1, 3, 3, "carol")})
	if err != nil {
		t.Fatal(err)
	}
	subj := Subject("node-1", event.TypeConnectionOpened)
	for _, b := range [][]byte{legacy, batch} {
		if _, err := l.js.Publish(ctx, subj, b); err != nil {
			t.Fatalf("publish: %v",
				err)
		}
	}
	l.Observe(ctx, opened("node-1", 1, 4, 4, "dave"))
	flush(t, l)
	closeLog(t, l)

	l = openLog(t, Config{DataDir: dir})
	if p := l.Projection().Presence(); p.Connections != 4 || p.Subjects["alice"] != 1 || p.Subjects["carol"] != 1 {
		t.Errorf("replayed presence %+v, want alice, bob, carol and dave",
			p)
	}
	for _, c := range []struct{ since, want string }{
		{since: "", want: "1=alice 2=bob 2.1=carol 3=dave"},
		{since: "2", want: "2=bob 2.1=carol 3=dave"},
		{since: "2.1", want: "2.1=carol 3=dave"},
		{since: "2.2", want: "3=dave"},
	} {
		q := Query{Type: event.TypeConnectionOpened}
		if err := q.ParseSince(c.since); err != nil {
			t.Fatal(err)
		}
		var got []string
		if err := l.Replay(ctx, q, func(r *Record) error {
			got = append(got, r.Sequence()+"="+r.Event.Subject)
			return nil
		}); err != nil {
			t.Fatalf("Replay: %v",
				err)
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("since %q: %v, want [%s]",
				c.since, got, c.want)
		}
	}
}
