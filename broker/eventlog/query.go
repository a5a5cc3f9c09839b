package eventlog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
)

// Query limits.
const (
	DefaultQueryLimit = 100
	MaxQueryLimit     = 1000
)

// Query selects events of the log.
type Query struct {
	// Type, if not TypeUnknown, keeps events of that type.
	Type event.Type
	// Reason keeps events whose reason or close reason has this label.
	Reason string
	// SinceSeq starts at this stream sequence (inclusive), at event
	// SinceIndex of its message; SinceTime at this time. Neither: from the
	// start of the stream (queries) or from now on (Tail).
	SinceSeq   uint64
	SinceIndex int
	SinceTime  time.Time
	// Limit bounds the events returned; 0 is unbounded for Replay and
	// DefaultQueryLimit for Events.
	Limit int

	// until, if not 0, ends a replay after this stream sequence.
	until uint64
}

// ParseSince reads a since value into q: a record's sequence
// ("<stream sequence>" or "<stream sequence>.<index>", see Record) or an
// RFC 3339 time.
func (q *Query) ParseSince(s string) error {
	q.SinceSeq, q.SinceIndex, q.SinceTime = 0, 0, time.Time{}
	if s == "" {
		return nil
	}
	if seq, idx, ok := parseSequence(s); ok {
		q.SinceSeq, q.SinceIndex = seq, idx
		return nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return fmt.Errorf("since %q: neither a sequence (1234 or 1234.5) nor an RFC 3339 time", s)
	}
	q.SinceTime = t
	return nil
}

// parseSequence reads "<stream sequence>" or "<stream sequence>.<index>".
func parseSequence(s string) (seq uint64, idx int, ok bool) {
	num, frac, dotted := strings.Cut(s, ".")
	seq, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return 0, 0, false
	}
	if dotted {
		n, err := strconv.ParseUint(frac, 10, 31)
		if err != nil {
			return 0, 0, false
		}
		idx = int(n)
	}
	return seq, idx, true
}

// Record is one stored event and its position: the stream sequence of its
// message and its index in that message.
type Record struct {
	Seq   uint64
	Index int
	Event event.Event
}

// Sequence is the record's position as text: the stream sequence, and
// ".<index>" after it for any event but a message's first ("1234",
// "1234.1", ...). It is what a since takes to start at this record.
func (r *Record) Sequence() string {
	return string(r.appendSequence(nil))
}

func (r *Record) appendSequence(b []byte) []byte {
	b = strconv.AppendUint(b, r.Seq, 10)
	if r.Index > 0 {
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(r.Index), 10)
	}
	return b
}

// MarshalJSON encodes the event as CloudEvents JSON with the record's
// Sequence as the `sequence` extension attribute (the CloudEvents sequence
// extension, a string).
func (r *Record) MarshalJSON() ([]byte, error) {
	b, err := r.Event.MarshalJSON()
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, len(b)+32)
	out = append(out, `{"sequence":"`...)
	out = r.appendSequence(out)
	out = append(out, `",`...)
	return append(out, b[1:]...), nil
}

// UnmarshalJSON decodes what MarshalJSON encodes.
func (r *Record) UnmarshalJSON(b []byte) error {
	var s struct {
		Sequence string `json:"sequence"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	if s.Sequence != "" {
		seq, idx, ok := parseSequence(s.Sequence)
		if !ok {
			return fmt.Errorf("sequence %q: not a record sequence (1234 or 1234.5)", s.Sequence)
		}
		r.Seq, r.Index = seq, idx
	}
	return r.Event.UnmarshalJSON(b)
}

func (q Query) match(e *event.Event) bool {
	if q.Type != event.TypeUnknown && e.Type != q.Type {
		return false
	}
	if q.Reason != "" {
		switch {
		case e.Type == event.TypeUpgradeRejected || e.Type == event.TypeConnectionOpened:
			if e.Reason.String() != q.Reason {
				return false
			}
		case e.CloseReason != event.CloseNone:
			if e.CloseReason.String() != q.Reason {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// errLimit ends a walk at its limit.
var errLimit = errors.New("eventlog: limit reached")

// limited wraps fn to end the walk with errLimit after n records (0: no
// limit).
func limited(fn func(*Record) error, n int) func(*Record) error {
	if n <= 0 {
		return fn
	}
	seen := 0
	return func(r *Record) error {
		if err := fn(r); err != nil {
			return err
		}
		if seen++; seen >= n {
			return errLimit
		}
		return nil
	}
}

// ended is a walk's result: nil at its limit, else fn's error.
func ended(err error) error {
	if err == errLimit {
		return nil
	}
	return err
}

// each calls fn with the matching events of the message at stream sequence
// seq, from q's since index on when it is the since message, and returns
// fn's error. An undecodable message, or the rest of one, is skipped as a
// query skips anything that is not an event.
func (q Query) each(seq uint64, data []byte, fn func(*Record) error) error {
	var ferr error
	_ = event.DecodeBatch(data, func(i int, e *event.Event) error {
		if seq == q.SinceSeq && i < q.SinceIndex || !q.match(e) {
			return nil
		}
		r := Record{Seq: seq, Index: i, Event: *e}
		ferr = fn(&r)
		return ferr
	})
	return ferr
}

func (q Query) filter() string {
	if q.Type != event.TypeUnknown {
		return TypeSubject(q.Type)
	}
	return SubjectPrefix + ">"
}

func (q Query) deliver(def jetstream.DeliverPolicy) (jetstream.DeliverPolicy, uint64, *time.Time) {
	switch {
	case q.SinceSeq > 0:
		return jetstream.DeliverByStartSequencePolicy, q.SinceSeq, nil
	case !q.SinceTime.IsZero():
		t := q.SinceTime
		return jetstream.DeliverByStartTimePolicy, 0, &t
	}
	return def, 0, nil
}

// Replay calls fn with every matching event stored when it starts, in
// stream order, up to q.Limit (0: all). It stops early when fn returns an
// error, which it returns.
func (l *Log) Replay(ctx context.Context, q Query, fn func(*Record) error) error {
	if err := l.queryable(); err != nil {
		return err
	}
	pol, seq, t := q.deliver(jetstream.DeliverAllPolicy)
	// An ephemeral consumer knows at creation how many messages match, so
	// the replay ends exactly at the stream's end as of now.
	cons, err := l.stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckNonePolicy,
		DeliverPolicy:     pol,
		OptStartSeq:       seq,
		OptStartTime:      t,
		FilterSubject:     q.filter(),
		InactiveThreshold: 30 * time.Second,
		MemoryStorage:     true,
	})
	if err != nil {
		return fmt.Errorf("eventlog: query consumer: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = l.stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	remaining := cons.CachedInfo().NumPending
	fn = limited(fn, q.Limit)
	for remaining > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		batch, err := cons.Fetch(int(min(remaining, 256)), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return fmt.Errorf("eventlog: query fetch: %w", err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			remaining--
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			if q.until > 0 && md.Sequence.Stream > q.until {
				return nil
			}
			if err := q.each(md.Sequence.Stream, m.Data(), fn); err != nil {
				return ended(err)
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("eventlog: query fetch: %w", err)
		}
		if got == 0 {
			// Messages aged out under us: what is left is gone.
			return nil
		}
	}
	return nil
}

// Events returns up to q.Limit matching events (default DefaultQueryLimit,
// at most MaxQueryLimit), oldest first: the first ones from q's since on,
// or, without a since, the most recent ones.
func (l *Log) Events(ctx context.Context, q Query) ([]Record, error) {
	if q.Limit <= 0 {
		q.Limit = DefaultQueryLimit
	}
	q.Limit = min(q.Limit, MaxQueryLimit)
	if q.SinceSeq == 0 && q.SinceTime.IsZero() {
		return l.latest(ctx, q)
	}
	out := []Record{}
	err := l.Replay(ctx, q, func(r *Record) error {
		out = append(out, *r)
		return nil
	})
	return out, err
}

// latest returns the last q.Limit matching events. It reads the stream
// backwards in growing windows so that a recent query over a large log reads
// only its tail.
func (l *Log) latest(ctx context.Context, q Query) ([]Record, error) {
	if err := l.queryable(); err != nil {
		return nil, err
	}
	info, err := l.stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("eventlog: stream %s info: %w", StreamName, err)
	}
	first, end := max(info.State.FirstSeq, 1), info.State.LastSeq
	out := []Record{}
	if info.State.Msgs == 0 || end < first {
		return out, nil
	}
	window := uint64(2 * q.Limit)
	for {
		start := first
		if end-first >= window {
			start = end - window + 1
		}
		var chunk []Record
		wq := q
		wq.Limit, wq.SinceSeq, wq.until = 0, start, end
		if err := l.Replay(ctx, wq, func(r *Record) error {
			chunk = append(chunk, *r)
			return nil
		}); err != nil {
			return nil, err
		}
		out = append(chunk, out...)
		if len(out) >= q.Limit {
			return out[len(out)-q.Limit:], nil
		}
		if start <= first {
			return out, nil
		}
		end, window = start-1, window*4
	}
}

// Tail calls fn with every matching event appended from q's since on (from
// now on when neither since is set) until ctx ends or fn fails.
func (l *Log) Tail(ctx context.Context, q Query, fn func(*Record) error) error {
	if err := l.queryable(); err != nil {
		return err
	}
	pol, seq, t := q.deliver(jetstream.DeliverNewPolicy)
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{q.filter()},
		DeliverPolicy:  pol,
		OptStartSeq:    seq,
		OptStartTime:   t,
	})
	if err != nil {
		return fmt.Errorf("eventlog: tail consumer: %w", err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("eventlog: tail: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	defer it.Stop()
	fn = limited(fn, q.Limit)
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("eventlog: tail: %w", err)
		}
		md, err := m.Metadata()
		if err != nil {
			continue
		}
		if err := q.each(md.Sequence.Stream, m.Data(), fn); err != nil {
			return ended(err)
		}
	}
}

// CountByType returns how many events of each type the stream holds, by
// the type's subject token (connection_opened, node_stopped, ...). It reads
// the whole stream: a message holds a batch of events.
func (l *Log) CountByType(ctx context.Context) (map[string]uint64, error) {
	out := map[string]uint64{}
	err := l.Replay(ctx, Query{}, func(r *Record) error {
		out[typeToken(r.Event.Type)]++
		return nil
	})
	return out, err
}

// Redact passes the event's free-text fields through redact.Text: the broker
// already redacts what it records, this is defense in depth for what the
// log serves.
func Redact(e *event.Event) {
	for _, s := range []*string{
		&e.Node, &e.Origin, &e.UserAgent, &e.Path, &e.RequestID, &e.Alg, &e.Kid,
		&e.ClaimedIss, &e.ClaimedSub, &e.Detail, &e.Subject, &e.Subprotocol, &e.Channel,
	} {
		if *s != "" {
			*s = redact.Text(*s)
		}
	}
}

// reasonKnown reports whether s names an authn reason or a close reason.
func reasonKnown(s string) bool {
	if _, ok := authn.ParseReason(s); ok {
		return true
	}
	_, ok := event.ParseCloseReason(s)
	return ok
}

// queryable returns ErrNotReady, with the reason, until the stream is set
// up.
func (l *Log) queryable() error {
	if l.up.Load() {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrNotReady, l.Status())
}
