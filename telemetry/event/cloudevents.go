package event

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

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
