package telemetry

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// NewLogger returns a slog logger writing JSON (format "json") or text
// ("text") at the given level.
func NewLogger(w io.Writer, format string, level slog.Level) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "json", "":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log-format: %q is neither json nor text", format)
}

// EventLogger writes one log line per event: rejections at Warn (the
// failures operators look for), connection opens and closes at Info,
// subscriptions at Debug. Every field comes from the event, which holds
// nothing secret (see package redact).
type EventLogger struct {
	log *slog.Logger
}

// NewEventLogger returns a sink logging to l.
func NewEventLogger(l *slog.Logger) *EventLogger { return &EventLogger{log: l} }

// Observe logs e.
func (l *EventLogger) Observe(ctx context.Context, e *event.Event) {
	level := slog.LevelInfo
	switch e.Type {
	case event.TypeUpgradeRejected:
		level = slog.LevelWarn
		if e.Reason.Status() >= 500 {
			level = slog.LevelError
		}
	case event.TypeSubscriptionAdded, event.TypeSubscriptionRemoved, event.TypeTokenRefreshed:
		level = slog.LevelDebug
	}
	if !l.log.Enabled(ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 16)
	attrs = append(attrs, slog.String("event", e.Type.String()))
	if e.TraceID.IsValid() {
		attrs = append(attrs, slog.String("trace_id", e.TraceID.String()), slog.String("span_id", e.SpanID.String()))
	}
	msg := e.Type.Short()
	switch e.Type {
	case event.TypeUpgradeRejected:
		msg = "upgrade rejected: " + e.Reason.String() + ": " + e.Reason.Description()
		attrs = append(attrs,
			slog.String("reason", e.Reason.String()),
			slog.String("source", e.Source.String()),
			slog.Int("status", e.Status),
			slog.String("hint", e.Reason.Hint()),
			slog.String("request_id", e.RequestID),
			slog.String("remote_ip", addr(e)),
			slog.String("path", e.Path),
		)
		if e.Origin != "" {
			attrs = append(attrs, slog.String("origin", e.Origin))
		}
		if e.UserAgent != "" {
			attrs = append(attrs, slog.String("user_agent", e.UserAgent))
		}
		if e.Alg != "" {
			attrs = append(attrs, slog.String("alg", e.Alg))
		}
		if e.Kid != "" {
			attrs = append(attrs, slog.String("kid", e.Kid))
		}
		if e.ClaimedSub != "" || e.ClaimedIss != "" {
			attrs = append(attrs, slog.Group("claimed", slog.String("iss", e.ClaimedIss), slog.String("sub", e.ClaimedSub)))
		}
		if e.Detail != "" {
			attrs = append(attrs, slog.String("detail", e.Detail))
		}
		if e.Suppressed > 0 {
			attrs = append(attrs, slog.Uint64("suppressed", e.Suppressed))
		}
	case event.TypeConnectionOpened:
		msg = "connection opened"
		attrs = append(attrs,
			slog.Uint64("conn_id", e.ConnID),
			slog.String("sub", e.Subject),
			slog.String("source", e.Source.String()),
			slog.String("subprotocol", e.Subprotocol),
			slog.String("remote_ip", addr(e)),
			slog.String("request_id", e.RequestID),
			slog.Time("token_expiry", e.TokenExpiry),
		)
	case event.TypeConnectionClosed:
		msg = "connection closed: " + e.CloseReason.String()
		attrs = append(attrs,
			slog.Uint64("conn_id", e.ConnID),
			slog.String("sub", e.Subject),
			slog.String("close_reason", e.CloseReason.String()),
			slog.Int("close_code", int(e.CloseCode)),
			slog.Duration("duration", e.Duration),
			slog.Uint64("messages_in", e.MsgsIn),
			slog.Uint64("messages_out", e.MsgsOut),
		)
	case event.TypeSubscriptionAdded, event.TypeSubscriptionRemoved:
		attrs = append(attrs, slog.Uint64("conn_id", e.ConnID), slog.String("sub", e.Subject), slog.String("channel", e.Channel))
	case event.TypeTokenRefreshed:
		attrs = append(attrs, slog.Uint64("conn_id", e.ConnID), slog.String("sub", e.Subject), slog.Time("token_expiry", e.TokenExpiry))
	case event.TypeNodeStarted, event.TypeNodeStopped:
		attrs = append(attrs, slog.String("node", e.Node), slog.Uint64("epoch", e.Epoch))
	}
	l.log.LogAttrs(ctx, level, msg, attrs...)
}

func addr(e *event.Event) string {
	if !e.RemoteIP.IsValid() {
		return ""
	}
	return e.RemoteIP.String()
}
