package eventlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// pending is one append in flight.
type pending struct {
	ev *event.Event
	// token ends the reply subject of the latest attempt.
	token    uint64
	answered bool
	err      error
	// seq is the stream sequence the ack gave.
	seq uint64
}

// acker publishes appends and collects the stream's answers on one
// wildcard reply subscription. It replaces nats.go's asynchronous
// JetStream publish, which per append allocated a future with its channels,
// started a timer and decoded the ack JSON: together with the event's own
// encoding that was most of the appender's CPU. Acks are matched to appends
// by the reply token, a counter, so an answer to an earlier attempt of a
// retried append is recognised and ignored. Only the appender goroutine
// uses it.
type acker struct {
	sub    *nats.Subscription
	ch     chan *nats.Msg
	prefix string
	next   uint64
	// Reused for every publish: nats.Conn.PublishMsg copies the message
	// into its write buffer before it returns.
	msg    nats.Msg
	buf    []byte
	reply  []byte
	tagged bool // with the node and epoch headers
	epoch  uint64
	epStr  string
	node   string
	subj   [event.NumTypes]string
	timer  *time.Timer
}

// ackBuffer bounds the answers waiting to be read. The appender has at
// most maxBatch appends in flight; late answers to earlier attempts may
// add some. An answer that does not fit is dropped by nats.go (a slow
// consumer): its append times out and is retried, and the stream keeps one
// copy.
const ackBuffer = 4 * maxBatch

var (
	errAckTimeout = errors.New("eventlog: no acknowledgement within the publish timeout")
	errAckEmpty   = errors.New("eventlog: empty acknowledgement")
)

// acker returns the appender's acker, subscribing on first use (and again
// after a failure).
func (l *Log) acker() (*acker, error) {
	a := l.ack
	if a == nil {
		a = &acker{ch: make(chan *nats.Msg, ackBuffer), timer: time.NewTimer(time.Hour)}
		a.timer.Stop()
		a.msg.Header = nats.Header{jetstream.MsgIDHeader: make([]string, 1)}
		// The node and epoch headers let a projection consumer skip this
		// node's own events undecoded. On the embedded store there is no
		// consumer after the replay (ownCurrent), so they would be ~50
		// bytes more to store, cache and scan per event for nothing.
		if a.tagged = l.ns == nil; a.tagged {
			a.msg.Header[headerNode] = make([]string, 1)
			a.msg.Header[headerEpoch] = make([]string, 1)
		}
		l.ack = a
	}
	if a.sub == nil || !a.sub.IsValid() {
		a.prefix = l.nc.NewInbox() + "."
		sub, err := l.nc.ChanSubscribe(a.prefix+"*", a.ch)
		if err != nil {
			return nil, fmt.Errorf("eventlog: subscribe to acknowledgements: %w", err)
		}
		a.sub = sub
	}
	return a, nil
}

// closeAcker ends the acknowledgement subscription.
func (l *Log) closeAcker() {
	if l.ack != nil && l.ack.sub != nil {
		_ = l.ack.sub.Unsubscribe()
	}
}

// send publishes one attempt of p's append.
func (a *acker) send(nc *nats.Conn, p *pending) error {
	e := p.ev
	// The token first, also for an event that fails to encode: the acks
	// are matched to the batch by token - first.
	p.token = a.next
	a.next++
	var err error
	a.buf, err = e.AppendJSON(a.buf[:0])
	if err != nil {
		return err
	}
	if e.Node != a.node {
		a.node, a.subj = e.Node, [event.NumTypes]string{}
	}
	if e.Type < event.NumTypes {
		if a.subj[e.Type] == "" {
			a.subj[e.Type] = Subject(e.Node, e.Type)
		}
		a.msg.Subject = a.subj[e.Type]
	} else {
		a.msg.Subject = Subject(e.Node, e.Type)
	}
	if e.Epoch != a.epoch || a.epStr == "" {
		a.epoch, a.epStr = e.Epoch, strconv.FormatUint(e.Epoch, 10)
	}
	a.reply = strconv.AppendUint(append(a.reply[:0], a.prefix...), p.token, 36)
	a.msg.Reply = string(a.reply)
	a.msg.Data = a.buf
	a.msg.Header[jetstream.MsgIDHeader][0] = e.ID()
	if a.tagged {
		a.msg.Header[headerNode][0] = e.Node
		a.msg.Header[headerEpoch][0] = a.epStr
	}
	return nc.PublishMsg(&a.msg)
}

// tokenOf returns the reply token of an answer.
func (a *acker) tokenOf(m *nats.Msg) (uint64, bool) {
	if !strings.HasPrefix(m.Subject, a.prefix) {
		return 0, false
	}
	t, err := strconv.ParseUint(m.Subject[len(a.prefix):], 36, 64)
	return t, err == nil
}

// ackOf interprets the stream's answer to an append: the stream sequence
// of a PubAck ({"stream":...,"seq":...}, also when it says duplicate), or
// the API error, or the status of an answer without a body (503: no stream
// listens on the subject).
func ackOf(m *nats.Msg) (uint64, error) {
	d := m.Data
	if len(d) == 0 {
		if st := m.Header.Get("Status"); st != "" {
			return 0, fmt.Errorf("eventlog: append answered with status %s %s", st, m.Header.Get("Description"))
		}
		return 0, errAckEmpty
	}
	// The common answer, without decoding it.
	if bytes.HasPrefix(d, []byte(`{"stream":"`)) && d[len(d)-1] == '}' && !bytes.Contains(d, []byte(`"error"`)) {
		if i := bytes.Index(d, []byte(`"seq":`)); i >= 0 {
			digits := d[i+len(`"seq":`):]
			n := 0
			for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
				n++
			}
			if seq, err := strconv.ParseUint(string(digits[:n]), 10, 64); err == nil {
				return seq, nil
			}
		}
	}
	var r struct {
		Error  *jetstream.APIError `json:"error"`
		Stream string              `json:"stream"`
		Seq    uint64              `json:"seq"`
	}
	if err := json.Unmarshal(d, &r); err != nil {
		return 0, fmt.Errorf("eventlog: invalid acknowledgement %q: %w", d, err)
	}
	if r.Error != nil {
		return 0, r.Error
	}
	if r.Stream == "" {
		return 0, fmt.Errorf("eventlog: invalid acknowledgement %q", d)
	}
	return r.Seq, nil
}

// run is the appender: it takes events off the queue in batches (up to
// maxBatch, or what arrives within batchLinger of the first), publishes each
// batch asynchronously and waits for its acks here, off the producers' path.
// Failed appends are retried with the same Nats-Msg-Id, so the stream's
// de-duplication keeps exactly one copy whatever got through before.
//
// The log becomes ready once the first backlog events observed are done
// (the ones queued while NATS was unreachable at start; 0 when it was
// reachable). run is called on the goroutine counted by wg.
func (l *Log) run(backlog uint64) {
	defer l.wg.Done()
	l.catchUp(backlog)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	batch := make([]event.Event, 0, maxBatch)
	housekeeping := func() {
		l.sampler.releaseExpired(l, l.cfg.Now())
		l.queueDepth()
	}
	for {
		// Also when busy: held rejections must not wait for an idle moment.
		select {
		case <-tick.C:
			housekeeping()
		default:
		}
		if l.queue.len() == 0 {
			select {
			case <-l.queue.ready:
			case <-tick.C:
				housekeeping()
				continue
			case <-l.stop:
				l.drain(batch)
				l.closeAcker()
				return
			}
			// Let a batch gather, unless it already has.
			if l.queue.len() < maxBatch {
				linger.Reset(batchLinger)
				select {
				case <-linger.C:
				case <-l.stop:
					linger.Stop()
				}
			}
		}
		batch = l.queue.pop(batch[:0], maxBatch)
		if len(batch) > 0 {
			l.publish(batch)
			l.queueDepth()
			l.catchUp(backlog)
		}
	}
}

// catchUp makes the log ready once the backlog is done.
func (l *Log) catchUp(backlog uint64) {
	if l.ready.Load() || l.done.Load() < backlog {
		return
	}
	l.ready.Store(true)
	if backlog > 0 {
		l.log.Info("eventlog: ready; the events queued while NATS was unreachable are appended",
			"nats_url", l.urls, "appended", backlog-l.lost.Load())
	}
}

// drain appends what is left in the queue when the log closes.
func (l *Log) drain(batch []event.Event) {
	for {
		batch = l.queue.pop(batch[:0], maxBatch)
		if len(batch) == 0 {
			return
		}
		l.publish(batch)
	}
}

// publish appends a batch and returns once every event of it is acked or
// the log is abandoned.
func (l *Log) publish(batch []event.Event) {
	if l.hardStop.Err() != nil {
		// Abandoned (Close gave up on NATS): count, don't stall on it.
		l.lose(len(batch))
		return
	}
	ps := l.pendings[:0]
	for i := range batch {
		ps = append(ps, pending{ev: &batch[i]})
	}
	backoff := 50 * time.Millisecond
	for len(ps) > 0 {
		lastErr := l.attempt(ps)
		failed := ps[:0]
		acked := 0
		for _, p := range ps {
			switch {
			case p.err == nil:
				acked++
				if l.proj != nil && l.ownCurrent(p.ev) {
					// Always folded (a retried append's duplicate ack may
					// come after later ones). The sequence advances here
					// only on the embedded NATS, where this log is the only
					// writer: on a shared one, the consumer may not have
					// delivered another node's event stored just before,
					// and advancing past it would make Apply skip it.
					l.proj.Apply(0, p.ev)
					if l.ns != nil {
						l.proj.Advance(p.seq)
					}
				}
			case tooLarge(p.err):
				// Never going to fit: retrying would wedge the appender.
				l.log.Warn("eventlog: event too large for NATS", "subject", Subject(p.ev.Node, p.ev.Type), "err", p.err)
				l.lostOne(p.ev)
				acked++
			case unencodable(p.err):
				l.log.Warn("eventlog: event not encodable", "type", p.ev.Type.String(), "err", p.err)
				l.lostOne(p.ev)
				acked++
			default:
				failed = append(failed, p)
			}
		}
		l.markDone(acked)
		ps = failed
		if len(ps) == 0 {
			break
		}
		if l.hardStop.Err() != nil {
			l.lose(len(ps))
			break
		}
		// The run loop's housekeeping waits for this batch: keep the
		// backlog visible while NATS (or its disk) is failing.
		l.queueDepth()
		l.log.Warn("eventlog: append failed, retrying", "events", len(ps), "err", lastErr, "backoff", backoff.String())
		select {
		case <-time.After(backoff):
		case <-l.hardStop.Done():
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	// Keep the slice, not the events it points to.
	clear(l.pendings[:cap(l.pendings)])
	l.pendings = ps[:0]
}

// attempt publishes every append of ps once and waits for their answers,
// at most the publish timeout; it sets each one's err and returns the last
// error of a failed one.
func (l *Log) attempt(ps []pending) (lastErr error) {
	a, err := l.acker()
	if err != nil {
		for i := range ps {
			ps[i].err = err
		}
		return err
	}
	first := a.next
	waiting := 0
	for i := range ps {
		p := &ps[i]
		p.answered, p.err = false, nil
		if p.err = a.send(l.nc, p); p.err != nil {
			p.answered = true
			lastErr = p.err
			continue
		}
		waiting++
	}
	if waiting == 0 {
		return lastErr
	}
	a.timer.Reset(l.cfg.PublishTimeout)
	defer a.timer.Stop()
	for waiting > 0 {
		select {
		case m := <-a.ch:
			t, ok := a.tokenOf(m)
			if !ok || t < first || t-first >= uint64(len(ps)) {
				continue // an answer to an earlier attempt
			}
			p := &ps[t-first]
			if p.answered || p.token != t {
				continue
			}
			p.seq, p.err = ackOf(m)
			p.answered = true
			if p.err != nil {
				lastErr = p.err
			}
			waiting--
		case <-a.timer.C:
			return unanswered(ps, errAckTimeout)
		case <-l.hardStop.Done():
			return unanswered(ps, l.hardStop.Err())
		}
	}
	return lastErr
}

// unanswered fails the appends of ps still waiting for an answer with err.
func unanswered(ps []pending, err error) error {
	for i := range ps {
		if !ps[i].answered {
			ps[i].answered, ps[i].err = true, err
		}
	}
	return err
}

// unencodable reports an event that cannot be written as JSON (a time
// outside years 0–9999): retrying cannot help.
func unencodable(err error) bool {
	var ee *event.EncodeError
	return errors.As(err, &ee)
}

// tooLarge reports an append that no retry can fix: the message exceeds the
// server's max payload or the stream's max message size.
func tooLarge(err error) bool {
	var api *jetstream.APIError
	return errors.Is(err, nats.ErrMaxPayload) ||
		errors.As(err, &api) && api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}
