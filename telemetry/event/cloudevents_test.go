package event

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
)

// marshalReflect is the encoder AppendJSON replaced: encoding/json over the
// envelope type. It is the reference AppendJSON must match byte for byte.
func marshalReflect(e *Event) ([]byte, error) {
	env := envelope{
		SpecVersion:     "1.0",
		ID:              e.ID(),
		Source:          "wsbroker/" + e.Node,
		Type:            e.Type.String(),
		Time:            e.Time.UTC(),
		DataContentType: "application/json",
		Data: data{
			Node:        e.Node,
			Epoch:       e.Epoch,
			Seq:         e.Seq,
			Status:      e.Status,
			Origin:      e.Origin,
			UserAgent:   e.UserAgent,
			Path:        e.Path,
			RequestID:   e.RequestID,
			Alg:         e.Alg,
			Kid:         e.Kid,
			Detail:      e.Detail,
			Suppressed:  e.Suppressed,
			ConnID:      e.ConnID,
			Sub:         e.Subject,
			Subprotocol: e.Subprotocol,
			CloseCode:   e.CloseCode,
			MsgsIn:      e.MsgsIn,
			MsgsOut:     e.MsgsOut,
			Channel:     e.Channel,
		},
	}
	d := &env.Data
	if e.Type == TypeUpgradeRejected || e.Type == TypeConnectionOpened {
		d.Reason = e.Reason.String()
		d.Source = e.Source.String()
	}
	if e.RemoteIP.IsValid() {
		d.RemoteIP = e.RemoteIP.String()
	}
	if e.ClaimedIss != "" || e.ClaimedSub != "" {
		d.Claimed = &claimed{Iss: e.ClaimedIss, Sub: e.ClaimedSub}
	}
	if e.Duration > 0 {
		d.DurationMS = float64(e.Duration) / float64(time.Millisecond)
	}
	if !e.TokenExpiry.IsZero() {
		t := e.TokenExpiry.UTC()
		d.TokenExpiry = &t
	}
	if e.CloseReason != CloseNone {
		d.CloseReason = e.CloseReason.String()
	}
	switch {
	case e.Subject != "":
		env.Subject = e.Subject
	case e.ClaimedSub != "":
		env.Subject = "claimed:" + e.ClaimedSub
	}
	if e.TraceID.IsValid() {
		flags := "00"
		if e.Sampled {
			flags = "01"
		}
		env.Traceparent = "00-" + e.TraceID.String() + "-" + e.SpanID.String() + "-" + flags
	}
	return json.Marshal(&env)
}

var (
	testTime  = time.Date(2026, 3, 4, 5, 6, 7, 123456789, time.UTC)
	testTrace = trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36}
	testSpan  = trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7}
)

// testEvents covers every type and every optional field.
func testEvents() []struct {
	name string
	ev   Event
} {
	return []struct {
		name string
		ev   Event
	}{
		{
			name: "opened",
			ev: Event{
				Type:        TypeConnectionOpened,
				Seq:         7,
				Node:        "node-1",
				Epoch:       1767225600123,
				Time:        testTime,
				Reason:      authn.ReasonNone,
				Source:      authn.SourceHeader,
				Status:      101,
				RemoteIP:    netip.MustParseAddr("10.1.2.3"),
				UserAgent:   "Mozilla/5.0 (X11; Linux x86_64)",
				Path:        "/ws?access_token=REDACTED",
				RequestID:   "4bf92f3577b34da6",
				Alg:         "HS256",
				Duration:    1234567 * time.Nanosecond,
				ConnID:      42,
				Subject:     "alice",
				Subprotocol: "wsbroker.v1",
				TokenExpiry: time.Date(2026, 3, 4, 6, 6, 7, 0, time.UTC),
			},
		},
		{
			name: "closed",
			ev: Event{
				Type:        TypeConnectionClosed,
				Seq:         8,
				Node:        "node-1",
				Epoch:       1,
				Time:        testTime.Add(time.Second),
				RemoteIP:    netip.MustParseAddr("2001:db8::1"),
				Duration:    90 * time.Second,
				ConnID:      42,
				Subject:     "alice",
				CloseReason: CloseClientClosed,
				CloseCode:   1000,
				MsgsIn:      3,
				MsgsOut:     1 << 40,
			},
		},
		{
			name: "rejected, traced, claimed, awkward strings",
			ev: Event{
				Type:       TypeUpgradeRejected,
				Seq:        1,
				Node:       "edge.eu-1 \"west\"",
				Epoch:      3,
				Time:       time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("CET", 3600)),
				TraceID:    testTrace,
				SpanID:     testSpan,
				Sampled:    true,
				Reason:     authn.ReasonBadSignature,
				Source:     authn.SourceSubprotocol,
				Status:     401,
				RemoteIP:   netip.MustParseAddr("fe80::1%eth0"),
				Origin:     "https://app.example/<script>&",
				UserAgent:  "tab\there\nnewline \x00\x1f \x7f é \u2028\u2029 \xff\xfe",
				Path:       "/ws",
				Kid:        "k1\\",
				ClaimedIss: "https://issuer.example",
				ClaimedSub: "mallory",
				Detail:     "signature is invalid \b\f\r",
				Duration:   time.Nanosecond,
				Suppressed: 12,
			},
		},
		{
			name: "claimed subject only, untraced sampled flag off",
			ev: Event{
				Type:       TypeUpgradeRejected,
				Node:       "n",
				Time:       testTime,
				TraceID:    testTrace,
				SpanID:     testSpan,
				Reason:     authn.ReasonExpired,
				Source:     authn.SourceHeader,
				ClaimedSub: "bob",
			},
		},
		{
			name: "claimed issuer only",
			ev: Event{
				Type:       TypeUpgradeRejected,
				Node:       "n",
				Time:       testTime,
				Reason:     authn.ReasonMissingToken,
				Source:     authn.SourceNone,
				ClaimedIss: "iss",
			},
		},
		{
			name: "subscription",
			ev: Event{
				Type:    TypeSubscriptionAdded,
				Seq:     ^uint64(0) - 1,
				Node:    "node-1",
				Epoch:   ^uint64(0),
				Time:    testTime,
				ConnID:  9,
				Subject: "alice",
				Channel: "user:alice:inbox",
			},
		},
		{
			name: "node started, zero time",
			ev: Event{
				Type: TypeNodeStarted,
				Node: "",
			},
		},
		{
			name: "token refreshed, long duration",
			ev: Event{
				Type:        TypeTokenRefreshed,
				Node:        "node-1",
				Time:        testTime,
				Duration:    time.Duration(1<<63 - 1),
				TokenExpiry: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
			},
		},
	}
}

// AppendJSON writes exactly what the reflective encoder wrote.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, c := range testEvents() {
		t.Run(c.name, func(t *testing.T) {
			want, err := marshalReflect(&c.ev)
			if err != nil {
				t.Fatalf("reference encoder: %v",
					err)
			}
			got, err := c.ev.MarshalJSON()
			if err != nil {
				t.Fatalf("MarshalJSON: %v",
					err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("MarshalJSON\n got %s\nwant %s",
					got, want)
			}
			// Appending keeps what the buffer held.
			got, err = c.ev.AppendJSON([]byte("prefix"))
			if err != nil || string(got) != "prefix"+string(want) {
				t.Fatalf("AppendJSON = %q, %v; want the prefix and the event",
					got, err)
			}
		})
	}
}

// An event decodes back to itself (times in UTC, no span detail).
func TestCloudEventsRoundTrip(t *testing.T) {
	for _, c := range testEvents() {
		t.Run(c.name, func(t *testing.T) {
			b, err := c.ev.MarshalJSON()
			if err != nil {
				t.Fatalf("MarshalJSON: %v",
					err)
			}
			var got Event
			if err := got.UnmarshalJSON(b); err != nil {
				t.Fatalf("UnmarshalJSON(%s): %v",
					b, err)
			}
			want := c.ev
			want.Time = want.Time.UTC()
			want.TokenExpiry = want.TokenExpiry.UTC()
			if want.TokenExpiry.Equal(time.Time{}) {
				want.TokenExpiry = time.Time{}
			}
			if want.Type != TypeUpgradeRejected && want.Type != TypeConnectionOpened {
				// Only these carry reason and source.
				want.Reason, want.Source = authn.ReasonNone, authn.SourceNone
			}
			// Milliseconds as a float: within a nanosecond or a part in 1e15.
			if d := got.Duration - want.Duration; d < -1 || d > 1 && float64(d) > float64(want.Duration)*1e-15 {
				t.Errorf("duration %d, want %d",
					got.Duration, want.Duration)
			}
			got.Duration = want.Duration
			// Invalid UTF-8 is replaced on the wire, as encoding/json does.
			if c.name == "rejected, traced, claimed, awkward strings" {
				want.UserAgent = "tab\there\nnewline \x00\x1f \x7f é \u2028\u2029 \ufffd\ufffd"
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip\n got %+v\nwant %+v",
					got, want)
			}
		})
	}
}

// A generic CloudEvents reader finds the required attributes and the
// extension where the specification puts them.
func TestCloudEventsAttributes(t *testing.T) {
	ev := testEvents()[2].ev
	b, err := ev.MarshalJSON()
	if err != nil {
		t.Fatalf("MarshalJSON: %v",
			err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("not JSON: %v: %s",
			err, b)
	}
	for k, want := range map[string]string{
		"specversion":     "1.0",
		"id":              ev.ID(),
		"source":          "wsbroker/" + ev.Node,
		"type":            "wsbroker.upgrade.rejected",
		"time":            "2026-03-04T04:06:07Z",
		"subject":         "claimed:mallory",
		"datacontenttype": "application/json",
		"traceparent":     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
	} {
		if got, _ := m[k].(string); got != want {
			t.Errorf("%s = %q, want %q",
				k, got, want)
		}
	}
	if _, ok := m["data"].(map[string]any); !ok {
		t.Errorf("data is %T, want an object",
			m["data"])
	}
}

// A time JSON cannot carry fails the encoding, as it did with encoding/json.
func TestAppendJSONYearOutOfRange(t *testing.T) {
	for _, ev := range []Event{
		{
			Type: TypeConnectionOpened,
			Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		},
		{
			Type:        TypeConnectionOpened,
			Time:        testTime,
			TokenExpiry: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		},
	} {
		if _, err := marshalReflect(&ev); err == nil {
			t.Fatalf("reference encoder accepted %v",
				ev.Time)
		}
		if b, err := ev.MarshalJSON(); err == nil {
			t.Fatalf("MarshalJSON = %s, want an error",
				b)
		}
	}
}

func TestAppendJSONDoesNotAllocate(t *testing.T) {
	ev := testEvents()[0].ev
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() {
		_, _ = ev.AppendJSON(buf[:0])
	}); n != 0 {
		t.Fatalf("AppendJSON: %v allocs, want 0",
			n)
	}
}

// FuzzAppendJSON compares the hand-written encoder with encoding/json on
// arbitrary strings, numbers and times.
func FuzzAppendJSON(f *testing.F) {
	f.Add(uint8(2), "node-1", "alice", "Mozilla/5.0", "/ws", "detail", "iss", "", "10.0.0.1", uint64(1), uint64(2), int64(3), int64(1767225600123456789), int64(0), true)
	f.Add(uint8(1), "n\"<>&", "\u2028", "\xff", "\x00\t", "é", "", "claimed", "fe80::1%e\"0", uint64(0), ^uint64(0), int64(1), int64(-1), int64(253402300799999999), false)
	f.Fuzz(func(t *testing.T, typ uint8, node, sub, ua, path, detail, iss, csub, ip string, epoch, seq uint64, dur, tm, exp int64, traced bool) {
		e := Event{
			Type:        Type(typ % uint8(NumTypes+1)),
			Seq:         seq,
			Node:        node,
			Epoch:       epoch,
			Time:        time.Unix(0, tm),
			Reason:      authn.Reason(typ % 7),
			Source:      authn.Source(typ % 3),
			Status:      int(dur % 600),
			Origin:      path + ua,
			UserAgent:   ua,
			Path:        path,
			RequestID:   sub,
			Alg:         iss,
			Kid:         csub,
			ClaimedIss:  iss,
			ClaimedSub:  csub,
			Detail:      detail,
			Duration:    time.Duration(dur),
			Suppressed:  seq >> 3,
			ConnID:      epoch ^ seq,
			Subject:     sub,
			Subprotocol: detail,
			CloseReason: CloseReason(typ % uint8(NumCloseReasons+1)),
			CloseCode:   uint16(dur),
			MsgsIn:      epoch >> 7,
			MsgsOut:     seq >> 9,
			Channel:     node + sub,
		}
		if exp != 0 {
			e.TokenExpiry = time.Unix(exp, exp%1e9)
		}
		e.RemoteIP, _ = netip.ParseAddr(ip)
		if traced {
			e.TraceID, e.SpanID, e.Sampled = testTrace, testSpan, seq%2 == 0
		}
		want, werr := marshalReflect(&e)
		got, gerr := e.MarshalJSON()
		if (werr == nil) != (gerr == nil) {
			t.Fatalf("errors differ: encoding/json %v, AppendJSON %v",
				werr, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("output differs\n got %s\nwant %s",
				got, want)
		}
	})
}

// BenchmarkMarshalJSON compares the encoders on the two events every
// accepted connection emits.
func BenchmarkMarshalJSON(b *testing.B) {
	evs := testEvents()
	for _, c := range []struct {
		name string
		ev   *Event
	}{
		{
			name: "opened",
			ev:   &evs[0].ev,
		},
		{
			name: "closed",
			ev:   &evs[1].ev,
		},
	} {
		b.Run(c.name+"/append", func(b *testing.B) {
			buf := make([]byte, 0, 1024)
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if buf, err = c.ev.AppendJSON(buf[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(c.name+"/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := marshalReflect(c.ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
