package event

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
)

// envelope is the CloudEvents 1.0 structured JSON form.
type envelope struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Time            time.Time `json:"time"`
	Subject         string    `json:"subject,omitempty"`
	DataContentType string    `json:"datacontenttype"`
	// Traceparent is the Distributed Tracing extension.
	Traceparent string `json:"traceparent,omitempty"`
	Data        data   `json:"data"`
}

type data struct {
	Node        string     `json:"node"`
	Epoch       uint64     `json:"epoch"`
	Seq         uint64     `json:"seq"`
	Reason      string     `json:"reason,omitempty"`
	Source      string     `json:"source,omitempty"`
	Status      int        `json:"status,omitempty"`
	RemoteIP    string     `json:"remote_ip,omitempty"`
	Origin      string     `json:"origin,omitempty"`
	UserAgent   string     `json:"user_agent,omitempty"`
	Path        string     `json:"path,omitempty"`
	RequestID   string     `json:"request_id,omitempty"`
	Alg         string     `json:"alg,omitempty"`
	Kid         string     `json:"kid,omitempty"`
	Claimed     *claimed   `json:"claimed,omitempty"`
	Detail      string     `json:"detail,omitempty"`
	DurationMS  float64    `json:"duration_ms,omitempty"`
	Suppressed  uint64     `json:"suppressed,omitempty"`
	ConnID      uint64     `json:"conn_id,omitempty"`
	Sub         string     `json:"sub,omitempty"`
	Subprotocol string     `json:"subprotocol,omitempty"`
	TokenExpiry *time.Time `json:"token_expiry,omitempty"`
	CloseReason string     `json:"close_reason,omitempty"`
	CloseCode   uint16     `json:"close_code,omitempty"`
	MsgsIn      uint64     `json:"messages_in,omitempty"`
	MsgsOut     uint64     `json:"messages_out,omitempty"`
	Channel     string     `json:"channel,omitempty"`
}

// claimed holds unverified claims of a rejected token, kept apart so that
// nobody mistakes them for an identity.
type claimed struct {
	Iss string `json:"iss,omitempty"`
	Sub string `json:"sub,omitempty"`
}

// MarshalJSON encodes e as a CloudEvents 1.0 structured JSON event.
func (e *Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 512))
}

// AppendJSON appends the CloudEvents 1.0 structured JSON form of e to b.
//
// It is written by hand rather than with encoding/json over the envelope
// type: the reflective encoder, its intermediate struct and the strings it
// built were a third of the event log's own CPU per accepted upgrade
// (docs/benchmarks.md). The output is byte for byte what json.Marshal of
// the envelope gives (field order, omitempty, HTML-safe string escaping,
// RFC 3339 times, float formatting); FuzzAppendJSON holds it to that, so
// UnmarshalJSON and any CloudEvents reader see the same events.
func (e *Event) AppendJSON(b []byte) ([]byte, error) {
	if y := e.Time.UTC().Year(); y < 0 || y > 9999 {
		return b, &EncodeError{Field: "time", Time: e.Time}
	}
	if !e.TokenExpiry.IsZero() {
		if y := e.TokenExpiry.UTC().Year(); y < 0 || y > 9999 {
			return b, &EncodeError{Field: "token_expiry", Time: e.TokenExpiry}
		}
	}
	b = append(b, `{"specversion":"1.0","id":"`...)
	b = appendStringBody(b, e.Node)
	b = append(b, '-')
	b = strconv.AppendUint(b, e.Epoch, 36)
	b = append(b, '-')
	b = strconv.AppendUint(b, e.Seq, 36)
	b = append(b, `","source":"wsbroker/`...)
	b = appendStringBody(b, e.Node)
	b = append(b, `","type":`...)
	b = appendString(b, e.Type.String())
	b = append(b, `,"time":`...)
	b = appendTime(b, e.Time)
	switch {
	case e.Subject != "":
		b = append(b, `,"subject":`...)
		b = appendString(b, e.Subject)
	case e.ClaimedSub != "":
		b = append(b, `,"subject":"claimed:`...)
		b = appendStringBody(b, e.ClaimedSub)
		b = append(b, '"')
	}
	b = append(b, `,"datacontenttype":"application/json"`...)
	if e.TraceID.IsValid() {
		b = append(b, `,"traceparent":"00-`...)
		b = hex.AppendEncode(b, e.TraceID[:])
		b = append(b, '-')
		b = hex.AppendEncode(b, e.SpanID[:])
		if e.Sampled {
			b = append(b, `-01"`...)
		} else {
			b = append(b, `-00"`...)
		}
	}

	b = append(b, `,"data":{"node":`...)
	b = appendString(b, e.Node)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, e.Epoch, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	if e.Type == TypeUpgradeRejected || e.Type == TypeConnectionOpened {
		b = appendField(b, `,"reason":`, e.Reason.String())
		b = appendField(b, `,"source":`, e.Source.String())
	}
	if e.Status != 0 {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(e.Status), 10)
	}
	if e.RemoteIP.IsValid() {
		if e.RemoteIP.Zone() == "" {
			// Digits, dots, colons and hex: nothing to escape.
			b = append(b, `,"remote_ip":"`...)
			b = e.RemoteIP.AppendTo(b)
			b = append(b, '"')
		} else {
			b = appendField(b, `,"remote_ip":`, e.RemoteIP.String())
		}
	}
	b = appendField(b, `,"origin":`, e.Origin)
	b = appendField(b, `,"user_agent":`, e.UserAgent)
	b = appendField(b, `,"path":`, e.Path)
	b = appendField(b, `,"request_id":`, e.RequestID)
	b = appendField(b, `,"alg":`, e.Alg)
	b = appendField(b, `,"kid":`, e.Kid)
	if e.ClaimedIss != "" || e.ClaimedSub != "" {
		b = append(b, `,"claimed":{`...)
		if e.ClaimedIss != "" {
			b = append(b, `"iss":`...)
			b = appendString(b, e.ClaimedIss)
			if e.ClaimedSub != "" {
				b = append(b, ',')
			}
		}
		if e.ClaimedSub != "" {
			b = append(b, `"sub":`...)
			b = appendString(b, e.ClaimedSub)
		}
		b = append(b, '}')
	}
	b = appendField(b, `,"detail":`, e.Detail)
	if e.Duration > 0 {
		b = append(b, `,"duration_ms":`...)
		b = appendFloat(b, float64(e.Duration)/float64(time.Millisecond))
	}
	b = appendUintField(b, `,"suppressed":`, e.Suppressed)
	b = appendUintField(b, `,"conn_id":`, e.ConnID)
	b = appendField(b, `,"sub":`, e.Subject)
	b = appendField(b, `,"subprotocol":`, e.Subprotocol)
	if !e.TokenExpiry.IsZero() {
		b = append(b, `,"token_expiry":`...)
		b = appendTime(b, e.TokenExpiry)
	}
	if e.CloseReason != CloseNone {
		b = appendField(b, `,"close_reason":`, e.CloseReason.String())
	}
	b = appendUintField(b, `,"close_code":`, uint64(e.CloseCode))
	b = appendUintField(b, `,"messages_in":`, e.MsgsIn)
	b = appendUintField(b, `,"messages_out":`, e.MsgsOut)
	b = appendField(b, `,"channel":`, e.Channel)
	return append(b, "}}"...), nil
}

// EncodeError is an event that has no JSON form: a time outside the years
// 0 to 9999, which RFC 3339 cannot write. No retry can encode it.
type EncodeError struct {
	Field string
	Time  time.Time
}

func (e *EncodeError) Error() string {
	return "event: " + e.Field + " " + e.Time.String() + ": year outside of range [0,9999]"
}

// appendField appends key and the JSON string s, unless s is empty
// (omitempty).
func appendField(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

// appendUintField appends key and v, unless v is zero (omitempty).
func appendUintField(b []byte, key string, v uint64) []byte {
	if v == 0 {
		return b
	}
	return strconv.AppendUint(append(b, key...), v, 10)
}

// appendTime appends t in UTC as encoding/json writes a time.Time: a quoted
// RFC 3339 time with as many fractional digits as needed. The year range is
// checked by the caller.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendFloat appends f as encoding/json does: the shortest decimal that
// round-trips, in exponent form only below 1e-6 or from 1e21.
func appendFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// e-09 to e-9, as encoding/json.
		n := len(b)
		if n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendStringBody(b, s)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendStringBody appends s escaped as encoding/json.Marshal escapes
// strings (HTML-safe: <, > and & as \u003c...; invalid UTF-8 as \ufffd;
// U+2028 and U+2029 escaped), without the quotes.
func appendStringBody(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}

// UnmarshalJSON decodes a CloudEvents JSON event written by MarshalJSON.
func (e *Event) UnmarshalJSON(b []byte) error {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("event: %w", err)
	}
	if env.SpecVersion != "1.0" {
		return fmt.Errorf("event: specversion %q, want 1.0", env.SpecVersion)
	}
	t, ok := ParseType(env.Type)
	if !ok {
		return fmt.Errorf("event: unknown type %q", env.Type)
	}
	d := env.Data
	*e = Event{
		Type:        t,
		Seq:         d.Seq,
		Node:        d.Node,
		Epoch:       d.Epoch,
		Time:        env.Time,
		Status:      d.Status,
		Origin:      d.Origin,
		UserAgent:   d.UserAgent,
		Path:        d.Path,
		RequestID:   d.RequestID,
		Alg:         d.Alg,
		Kid:         d.Kid,
		Detail:      d.Detail,
		Duration:    time.Duration(d.DurationMS * float64(time.Millisecond)),
		Suppressed:  d.Suppressed,
		ConnID:      d.ConnID,
		Subject:     d.Sub,
		Subprotocol: d.Subprotocol,
		CloseCode:   d.CloseCode,
		MsgsIn:      d.MsgsIn,
		MsgsOut:     d.MsgsOut,
		Channel:     d.Channel,
	}
	if d.Reason != "" {
		e.Reason, _ = authn.ParseReason(d.Reason)
	}
	if d.Source != "" {
		if s, err := authn.ParseSource(d.Source); err == nil {
			e.Source = s
		}
	}
	if d.RemoteIP != "" {
		e.RemoteIP, _ = netip.ParseAddr(d.RemoteIP)
	}
	if d.Claimed != nil {
		e.ClaimedIss, e.ClaimedSub = d.Claimed.Iss, d.Claimed.Sub
	}
	if d.TokenExpiry != nil {
		e.TokenExpiry = *d.TokenExpiry
	}
	if d.CloseReason != "" {
		e.CloseReason, _ = ParseCloseReason(d.CloseReason)
	}
	if tp := env.Traceparent; len(tp) == 55 {
		e.TraceID, _ = trace.TraceIDFromHex(tp[3:35])
		e.SpanID, _ = trace.SpanIDFromHex(tp[36:52])
		e.Sampled = tp[53:] == "01"
	}
	return nil
}
