// Package event defines the one value built for every outcome on the
// connection path (DESIGN.md §1, §7): an upgrade rejected, a connection
// opened or closed, a subscription, a token refresh, a node started or
// stopped. Metrics, log lines, span attributes and the event log are all
// derived from an Event, so they cannot disagree. The package also owns the
// CloudEvents 1.0 JSON form of an event.
package event

import (
	"context"
	"net/netip"
	"strconv"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
)

// Type is the CloudEvents type of an event.
type Type uint8

// The event types of DESIGN.md §7.
const (
	TypeUnknown Type = iota
	TypeUpgradeRejected
	TypeConnectionOpened
	TypeConnectionClosed
	TypeSubscriptionAdded
	TypeSubscriptionRemoved
	TypeTokenRefreshed
	TypeNodeStarted
	TypeNodeStopped

	// NumTypes counts the types, TypeUnknown included.
	NumTypes
)

var typeNames = [NumTypes]string{
	"unknown",
	"wsbroker.upgrade.rejected",
	"wsbroker.connection.opened",
	"wsbroker.connection.closed",
	"wsbroker.subscription.added",
	"wsbroker.subscription.removed",
	"wsbroker.token.refreshed",
	"wsbroker.node.started",
	"wsbroker.node.stopped",
}

// String returns the CloudEvents type, e.g. "wsbroker.connection.opened".
func (t Type) String() string {
	if t >= NumTypes {
		return "unknown"
	}
	return typeNames[t]
}

// Short returns the type without the "wsbroker." prefix, as used in NATS
// subjects (wsbroker.events.<node>.<short>) and the `type` metric label.
func (t Type) Short() string { return t.String()[len("wsbroker."):] }

// ParseType returns the type named by its full or short name.
func ParseType(s string) (Type, bool) {
	for i := TypeUpgradeRejected; i < NumTypes; i++ {
		if typeNames[i] == s || i.Short() == s {
			return i, true
		}
	}
	return TypeUnknown, false
}

// CloseReason says why an open connection ended (DESIGN.md §5).
type CloseReason uint8

// The close reasons; CloseNone only on events that are not closes.
const (
	CloseNone CloseReason = iota
	CloseClientClosed
	CloseTokenExpired
	CloseIdleTimeout
	CloseSlowConsumer
	CloseProtocolError
	CloseMessageTooLarge
	CloseServerShutdown
	CloseReadError
	CloseWriteError
	CloseEvicted

	// NumCloseReasons counts the close reasons, CloseNone included.
	NumCloseReasons
)

var closeNames = [NumCloseReasons]string{
	"none", "client_closed", "token_expired", "idle_timeout", "slow_consumer",
	"protocol_error", "message_too_large", "server_shutdown", "read_error",
	"write_error", "evicted",
}

func (c CloseReason) String() string {
	if c >= NumCloseReasons {
		return "unknown"
	}
	return closeNames[c]
}

// ParseCloseReason returns the close reason with the given label.
func ParseCloseReason(s string) (CloseReason, bool) {
	for i := range closeNames {
		if closeNames[i] == s {
			return CloseReason(i), true
		}
	}
	return CloseNone, false
}

// Event is one outcome. Which fields are set depends on Type. Events are
// pooled by their producers: a Sink must copy what it keeps beyond Observe
// (a plain struct copy is enough, every field is a value or an immutable
// string).
type Event struct {
	Type Type
	// Seq numbers the events of one node epoch; with Node and Epoch it makes
	// the CloudEvents id.
	Seq   uint64
	Node  string
	Epoch uint64
	Time  time.Time

	TraceID trace.TraceID
	SpanID  trace.SpanID
	Sampled bool

	// Upgrade (rejected and opened).
	Reason    authn.Reason
	Source    authn.Source
	Status    int
	RemoteIP  netip.Addr
	Origin    string
	UserAgent string
	// Path is the request path, its query redacted.
	Path      string
	RequestID string
	// Alg and Kid are the token header's; ClaimedIss and ClaimedSub are
	// unverified on a rejection.
	Alg        string
	Kid        string
	ClaimedIss string
	ClaimedSub string
	Detail     string
	// Duration is the upgrade's duration, or the connection's on close.
	Duration time.Duration
	// Suppressed counts rejections with the same reason folded into this
	// one by sampling.
	Suppressed uint64

	// Connection.
	ConnID      uint64
	Subject     string
	Subprotocol string
	TokenExpiry time.Time
	CloseReason CloseReason
	CloseCode   uint16
	MsgsIn      uint64
	MsgsOut     uint64

	// Subscription.
	Channel string

	// Upgrade trace detail, filled only when the upgrade's trace is kept
	// (Sampled): the spans are built from the event after the fact, so an
	// upgrade whose trace is dropped costs no span at all.
	Trace UpgradeTrace
}

// UpgradeTrace is what the spans of one upgrade (ws.upgrade, authn.extract,
// authn.verify) are built from.
type UpgradeTrace struct {
	// Parent is the client's span from a traceparent header, if any.
	Parent trace.SpanContext
	// Start is the first handshake byte; AuthStart the end of the headers;
	// ExtractEnd the end of extraction; VerifyEnd the end of verification
	// (zero when it did not run).
	Start, AuthStart, ExtractEnd, VerifyEnd time.Time
	Host                                    string
	Query                                   string
	Checks                                  [authn.NumSources - 1]authn.Check
	NChecks                                 uint8
	ProtocolOffered                         bool
	// ExtractSource and ExtractReason are extraction's own outcome;
	// VerifyReason verification's (ReasonNone when it passed or did not run).
	ExtractSource authn.Source
	ExtractReason authn.Reason
	VerifyReason  authn.Reason
}

// Reset zeroes e for reuse.
func (e *Event) Reset() { *e = Event{} }

// ID returns the CloudEvents id: node, epoch and sequence.
func (e *Event) ID() string {
	b := make([]byte, 0, len(e.Node)+24)
	b = append(b, e.Node...)
	b = append(b, '-')
	b = strconv.AppendUint(b, e.Epoch, 36)
	b = append(b, '-')
	b = strconv.AppendUint(b, e.Seq, 36)
	return string(b)
}

// Rejected reports whether e is a refused upgrade.
func (e *Event) Rejected() bool { return e.Type == TypeUpgradeRejected }

// Sink observes events. Observe runs on the path that produced the event:
// it must not block and must copy what it keeps.
type Sink interface {
	Observe(ctx context.Context, e *Event)
}

// SinkFunc adapts a function to a Sink.
type SinkFunc func(ctx context.Context, e *Event)

// Observe calls f.
func (f SinkFunc) Observe(ctx context.Context, e *Event) { f(ctx, e) }

// Sinks fans an event out to several sinks in order.
type Sinks []Sink

// Observe passes e to every sink.
func (s Sinks) Observe(ctx context.Context, e *Event) {
	for _, k := range s {
		k.Observe(ctx, e)
	}
}
