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

// group is one message of the log: a CloudEvents JSON batch of events of
// one type and node, in the order they were observed, appended to that
// type's subject (grouper).
type group struct {
	typ  event.Type
	node string
	evs  []*event.Event
	// buf is the batch without its closing bracket.
	buf []byte
	// id is the Nats-Msg-Id: the first event's id, stable across retries.
	id string
	// token ends the reply subject of the latest attempt.
	token    uint64
	answered bool
	err      error
	// seq is the stream sequence the ack gave.
	seq uint64
}

// grouper splits an appender batch into groups, the fewest messages that
// keep the subjects per type and every order a fold depends on: the events
// of one connection stay in order across groups (an open before its
// subscriptions before its close; an unsubscribe and a subscribe again),
// and a node.started or node.stopped is a barrier nothing moves across.
// Other events may move ahead of events of another type observed before
// them within the batch (at most batchLinger apart). Groups are published,
// acknowledged and folded in the order they were made.
type grouper struct {
	groups []group
	n      int
	// open is the latest group of each type; an event joins it unless that
	// would move it ahead of an earlier event of its connection or across
	// a barrier.
	open    [event.NumTypes]int
	last    map[connKey]int
	barrier int
	scratch []byte
}

// maxGroupBytes bounds a group's message; a smaller server max_payload or
// stream max_msg_size bounds it further.
const maxGroupBytes = 256 << 10

// groupLimit is the largest message the grouper makes.
func (l *Log) groupLimit() int {
	limit := maxGroupBytes
	// Room for the headers, and for the subject in max_msg_size.
	for _, m := range []int{int(l.nc.MaxPayload()), l.maxMsg} {
		if m -= 1 << 10; m > 0 && m < limit {
			limit = m
		}
	}
	return limit
}

// build groups batch into messages of at most limit bytes (an event larger
// than that alone). An event that cannot be encoded is left out and passed
// to lost.
func (g *grouper) build(batch []event.Event, limit int, lost func(*event.Event, error)) []group {
	if g.last == nil {
		g.last = map[connKey]int{}
	}
	clear(g.last)
	g.n, g.barrier = 0, 0
	for i := range g.open {
		g.open[i] = -1
	}
	for i := range batch {
		e := &batch[i]
		var err error
		if g.scratch, err = e.AppendJSON(g.scratch[:0]); err != nil {
			lost(e, err)
			continue
		}
		barrier := e.Type == event.TypeNodeStarted || e.Type == event.TypeNodeStopped || e.Type >= event.NumTypes
		key := connKey{e.Node, e.Epoch, e.ConnID}
		gi := -1
		if !barrier {
			if j := g.open[e.Type]; j >= 0 && j >= g.barrier {
				gr := &g.groups[j]
				prev, seen := g.last[key]
				if gr.node == e.Node && gr.evs[0].Epoch == e.Epoch && len(gr.buf)+len(g.scratch)+2 <= limit && (e.ConnID == 0 || !seen || prev <= j) {
					gi = j
				}
			}
		}
		if gi < 0 {
			gi = g.add(e)
			if barrier {
				g.barrier = gi
			} else {
				g.open[e.Type] = gi
			}
		}
		gr := &g.groups[gi]
		if len(gr.evs) > 0 {
			gr.buf = append(gr.buf, ',')
		}
		gr.buf = append(gr.buf, g.scratch...)
		gr.evs = append(gr.evs, e)
		if e.ConnID != 0 {
			g.last[key] = gi
		}
	}
	return g.groups[:g.n]
}

// add starts a group with e as its first event.
func (g *grouper) add(e *event.Event) int {
	if g.n == len(g.groups) {
		g.groups = append(g.groups, group{})
	}
	gr := &g.groups[g.n]
	*gr = group{typ: e.Type, node: e.Node, evs: gr.evs[:0], buf: append(gr.buf[:0], '['), id: e.ID()}
	g.n++
	return g.n - 1
}

// release drops the groups' references to the batch's events, keeping
// their buffers.
func (g *grouper) release() {
	for i := range g.groups[:g.n] {
		clear(g.groups[i].evs)
		g.groups[i].evs = g.groups[i].evs[:0]
	}
	g.n = 0
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
	reply  []byte
	tagged bool // with the node and epoch headers
	epoch  uint64
	epStr  string
	node   string
	subj   [event.NumTypes]string
	timer  *time.Timer
}

// ackBuffer bounds the answers waiting to be read. The appender has at
// most maxBatch appends (groups) in flight; late answers to earlier attempts may
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
		a.msg.Header = nats.Header{
			jetstream.MsgIDHeader: make([]string, 1),
			"Content-Type":        {event.BatchContentType},
		}
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

// send publishes one attempt of a group's append.
func (a *acker) send(nc *nats.Conn, gr *group) error {
	gr.token = a.next
	a.next++
	if gr.node != a.node {
		a.node, a.subj = gr.node, [event.NumTypes]string{}
	}
	if gr.typ < event.NumTypes {
		if a.subj[gr.typ] == "" {
			a.subj[gr.typ] = Subject(gr.node, gr.typ)
		}
		a.msg.Subject = a.subj[gr.typ]
	} else {
		a.msg.Subject = Subject(gr.node, gr.typ)
	}
	if ep := gr.evs[0].Epoch; ep != a.epoch || a.epStr == "" {
		a.epoch, a.epStr = ep, strconv.FormatUint(ep, 10)
	}
	a.reply = strconv.AppendUint(append(a.reply[:0], a.prefix...), gr.token, 36)
	a.msg.Reply = string(a.reply)
	// The closing bracket goes past buf's length: a retry writes it again.
	a.msg.Data = append(gr.buf, ']')
	a.msg.Header[jetstream.MsgIDHeader][0] = gr.id
	if a.tagged {
		a.msg.Header[headerNode][0] = gr.node
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
	dropped := 0
	groups := l.grp.build(batch, l.groupLimit(), func(e *event.Event, err error) {
		l.log.Warn("eventlog: event not encodable", "type", e.Type.String(), "err", err)
		l.lostOne(e)
		dropped++
	})
	defer l.grp.release()
	l.markDone(dropped)
	gs := l.inflight[:0]
	for i := range groups {
		gs = append(gs, &groups[i])
	}
	l.inflight = gs
	backoff := 50 * time.Millisecond
	for len(gs) > 0 {
		lastErr := l.attempt(gs)
		// Allocated only on a failure; a split can make it longer than gs.
		var failed []*group
		done := 0
		for _, gr := range gs {
			switch {
			case gr.err == nil:
				done += len(gr.evs)
				if l.proj == nil {
					break
				}
				for _, e := range gr.evs {
					if l.ownCurrent(e) {
						// Always folded (a retried append's duplicate ack
						// may come after later ones).
						l.proj.Apply(0, 0, e)
					}
				}
				// The sequence advances here only on the embedded NATS,
				// where this log is the only writer: on a shared one, the
				// consumer may not have delivered another node's message
				// stored just before, and advancing past it would make
				// the fold skip it.
				if l.ns != nil {
					l.proj.Advance(gr.seq)
				}
			case tooLarge(gr.err) && len(gr.evs) > 1:
				// Over a limit the grouper did not know (the stream's
				// max_msg_size changed): the events go one per message.
				failed = append(failed, singles(gr)...)
			case tooLarge(gr.err):
				// Never going to fit: retrying would wedge the appender.
				l.log.Warn("eventlog: event too large for NATS", "subject", Subject(gr.node, gr.typ),
					"bytes", len(gr.buf)+1, "err", gr.err)
				l.lostOne(gr.evs[0])
				done++
			default:
				failed = append(failed, gr)
			}
		}
		l.markDone(done)
		gs = failed
		if len(gs) == 0 {
			break
		}
		if l.hardStop.Err() != nil {
			l.lose(events(gs))
			break
		}
		// The run loop's housekeeping waits for this batch: keep the
		// backlog visible while NATS (or its disk) is failing.
		l.queueDepth()
		l.log.Warn("eventlog: append failed, retrying", "events", events(gs), "messages", len(gs), "err", lastErr, "backoff", backoff.String())
		select {
		case <-time.After(backoff):
		case <-l.hardStop.Done():
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	// Keep the slice, not the groups it points to.
	clear(l.inflight)
	l.inflight = l.inflight[:0]
}

// singles splits a group into one group per event, in order.
func singles(gr *group) []*group {
	out := make([]*group, 0, len(gr.evs))
	for _, e := range gr.evs {
		// It encoded before, into gr.
		b, _ := e.AppendJSON([]byte{'['})
		out = append(out, &group{typ: gr.typ, node: gr.node, evs: []*event.Event{e}, buf: b, id: e.ID()})
	}
	return out
}

// events counts the events of gs.
func events(gs []*group) int {
	n := 0
	for _, gr := range gs {
		n += len(gr.evs)
	}
	return n
}

// attempt publishes every group of gs once and waits for their answers,
// at most the publish timeout; it sets each one's err and returns the last
// error of a failed one.
func (l *Log) attempt(gs []*group) (lastErr error) {
	a, err := l.acker()
	if err != nil {
		for _, gr := range gs {
			gr.err = err
		}
		return err
	}
	first := a.next
	waiting := 0
	for _, gr := range gs {
		gr.answered, gr.err = false, nil
		if gr.err = a.send(l.nc, gr); gr.err != nil {
			gr.answered = true
			lastErr = gr.err
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
			if !ok || t < first || t-first >= uint64(len(gs)) {
				continue // an answer to an earlier attempt
			}
			gr := gs[t-first]
			if gr.answered || gr.token != t {
				continue
			}
			gr.seq, gr.err = ackOf(m)
			gr.answered = true
			if gr.err != nil {
				lastErr = gr.err
			}
			waiting--
		case <-a.timer.C:
			return unanswered(gs, errAckTimeout)
		case <-l.hardStop.Done():
			return unanswered(gs, l.hardStop.Err())
		}
	}
	return lastErr
}

// unanswered fails the groups of gs still waiting for an answer with err.
func unanswered(gs []*group, err error) error {
	for _, gr := range gs {
		if !gr.answered {
			gr.answered, gr.err = true, err
		}
	}
	return err
}

// tooLarge reports an append that no retry can fix: the message exceeds the
// server's max payload or the stream's max message size.
func tooLarge(err error) bool {
	var api *jetstream.APIError
	return errors.Is(err, nats.ErrMaxPayload) ||
		errors.As(err, &api) && api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}
