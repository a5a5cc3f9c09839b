package eventlog

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The appender reads the stream's answers itself: a PubAck (also a
// duplicate's) is success, an API error keeps its code (tooLarge looks at
// it), a status without a body and anything unreadable fail the append.
func TestAckError(t *testing.T) {
	cases := []struct {
		name    string
		msg     *nats.Msg
		ok      bool
		seq     uint64
		apiCode jetstream.ErrorCode
	}{
		{
			name: "ack",
			msg:  &nats.Msg{Data: []byte(`{"stream":"WSBROKER_EVENTS","seq":12}`)},
			ok:   true,
			seq:  12,
		},
		{
			name: "duplicate",
			msg:  &nats.Msg{Data: []byte(`{"stream":"WSBROKER_EVENTS","seq":12,"duplicate":true}`)},
			ok:   true,
			seq:  12,
		},
		{
			name: "ack with a domain, fields reordered",
			msg:  &nats.Msg{Data: []byte(`{"seq":3,"domain":"hub","stream":"WSBROKER_EVENTS"}`)},
			ok:   true,
			seq:  3,
		},
		{
			name:    "too large",
			msg:     &nats.Msg{Data: []byte(`{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},"stream":"WSBROKER_EVENTS","seq":0}`)},
			apiCode: jetstream.JSErrCodeStreamMessageExceedsMaximum,
		},
		{
			name:    "error first",
			msg:     &nats.Msg{Data: []byte(`{"stream":"WSBROKER_EVENTS","seq":0,"error":{"code":503,"err_code":10077,"description":"resource limits exceeded"}}`)},
			apiCode: 10077,
		},
		{
			name: "no responders",
			msg:  &nats.Msg{Header: nats.Header{"Status": []string{"503"}}},
		},
		{
			name: "empty",
			msg:  &nats.Msg{},
		},
		{
			name: "not JSON",
			msg:  &nats.Msg{Data: []byte(`{"stream":"X","seq":`)},
		},
		{
			name: "no stream",
			msg:  &nats.Msg{Data: []byte(`{"seq":1}`)},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seq, err := ackOf(c.msg)
			if (err == nil) != c.ok || seq != c.seq {
				t.Fatalf("ackOf(%q) = %d, %v; want seq %d, ok %v",
					c.msg.Data, seq, err, c.seq, c.ok)
			}
			if c.apiCode != 0 {
				var api *jetstream.APIError
				if !errors.As(err, &api) || api.ErrorCode != c.apiCode {
					t.Fatalf("ackOf(%q) = %v, want API error %d",
						c.msg.Data, err, c.apiCode)
				}
			}
		})
	}
	if _, err := ackOf(cases[3].msg); !tooLarge(err) {
		t.Fatalf("an oversized append's answer is not tooLarge")
	}
}
