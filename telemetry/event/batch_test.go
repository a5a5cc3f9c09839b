package event

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestBatchRoundTrip(t *testing.T) {
	var es []Event
	for _, c := range testEvents() {
		es = append(es, c.ev)
	}
	b, err := AppendBatchJSON(nil, es)
	if err != nil {
		t.Fatalf("AppendBatchJSON: %v", err)
	}
	// Any CloudEvents reader sees an array of structured events.
	var raw []map[string]any
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != len(es) {
		t.Fatalf("batch is not a JSON array of %d events (%v): %s", len(es), err, b)
	}
	var got []Event
	if err := DecodeBatch(b, func(i int, e *Event) error {
		if i != len(got) {
			t.Errorf("index %d, want %d", i, len(got))
		}
		got = append(got, *e)
		return nil
	}); err != nil {
		t.Fatalf("DecodeBatch: %v", err)
	}
	if len(got) != len(es) {
		t.Fatalf("decoded %d events, want %d", len(got), len(es))
	}
	// As each event decodes on its own (some fields of the test events,
	// invalid UTF-8 among them, do not survive any JSON round trip).
	for i := range es {
		one, _ := es[i].MarshalJSON()
		var single Event
		if err := single.UnmarshalJSON(one); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		want, _ := single.MarshalJSON()
		have, _ := got[i].MarshalJSON()
		if string(want) != string(have) {
			t.Errorf("event %d:\n got %s\nwant %s", i, have, want)
		}
	}
}

func TestDecodeBatchSingleEvent(t *testing.T) {
	// Logs written before batching hold one structured event per message.
	e := testEvents()[0].ev
	b, _ := e.MarshalJSON()
	n := 0
	if err := DecodeBatch(b, func(i int, got *Event) error {
		n++
		if i != 0 || got.ID() != e.ID() {
			t.Errorf("got event %d %s, want 0 %s", i, got.ID(), e.ID())
		}
		return nil
	}); err != nil || n != 1 {
		t.Fatalf("DecodeBatch: %d events, %v", n, err)
	}
}

func TestDecodeBatchErrors(t *testing.T) {
	e := testEvents()[0].ev
	one, _ := e.MarshalJSON()
	for _, c := range []struct {
		name, in, want string
		calls          int
	}{
		{name: "empty", in: "", want: "event:"},
		{name: "not JSON", in: "[{", want: "event: batch:"},
		{name: "bad element", in: "[" + string(one) + `,{"specversion":"0.3"}]`, want: "batch element 1", calls: 1},
		{name: "not an event", in: "[1]", want: "batch element 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			calls := 0
			err := DecodeBatch([]byte(c.in), func(int, *Event) error { calls++; return nil })
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("DecodeBatch(%q) = %v, want an error with %q", c.in, err, c.want)
			}
			if calls != c.calls {
				t.Errorf("fn called %d times before the error, want %d", calls, c.calls)
			}
		})
	}
	stop := errors.New("stop")
	b, _ := AppendBatchJSON(nil, []Event{e, e})
	calls := 0
	if err := DecodeBatch(b, func(int, *Event) error { calls++; return stop }); err != stop || calls != 1 {
		t.Fatalf("fn's error: got %v after %d calls, want it as is after 1", err, calls)
	}
}

// FuzzDecodeBatch: whatever is stored, decoding returns an error or events,
// never panics, and an encoded batch of what was decoded decodes the same.
func FuzzDecodeBatch(f *testing.F) {
	e := testEvents()[0].ev
	one, _ := e.MarshalJSON()
	two, _ := AppendBatchJSON(nil, []Event{e, testEvents()[1].ev})
	f.Add(one)
	f.Add(two)
	f.Add([]byte("[]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var es []Event
		if err := DecodeBatch(b, func(_ int, e *Event) error { es = append(es, *e); return nil }); err != nil {
			return
		}
		enc, err := AppendBatchJSON(nil, es)
		if err != nil {
			return // a time outside the years 0-9999 decodes but has no JSON form
		}
		n := 0
		if err := DecodeBatch(enc, func(i int, e *Event) error {
			a, _ := es[i].MarshalJSON()
			c, _ := e.MarshalJSON()
			if string(a) != string(c) {
				t.Fatalf("event %d changed in a round trip:\n%s\n%s", i, a, c)
			}
			n++
			return nil
		}); err != nil || n != len(es) {
			t.Fatalf("re-encoded batch: %d of %d events, %v", n, len(es), err)
		}
	})
}
