package eventlog

import (
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// pending is one append in flight.
type pending struct {
	ev  *event.Event
	msg *nats.Msg
	fut jetstream.PubAckFuture
	err error
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
	ps := make([]pending, 0, len(batch))
	for i := range batch {
		m, err := l.message(&batch[i])
		if err != nil {
			l.log.Warn("eventlog: event not encodable", "type", batch[i].Type.String(), "err", err)
			l.publishError()
			l.markDone(1)
			continue
		}
		ps = append(ps, pending{ev: &batch[i], msg: m})
	}
	backoff := 50 * time.Millisecond
	for len(ps) > 0 {
		for i := range ps {
			ps[i].fut, ps[i].err = l.js.PublishMsgAsync(ps[i].msg)
		}
		failed := ps[:0]
		var lastErr error
		acked := 0
		for _, p := range ps {
			if p.err == nil {
				select {
				case <-p.fut.Ok():
				case p.err = <-p.fut.Err():
				case <-l.hardStop.Done():
					p.err = l.hardStop.Err()
				}
			}
			switch {
			case p.err == nil:
				acked++
				if l.proj != nil && l.ownCurrent(p.ev) {
					l.proj.Apply(0, p.ev)
				}
			case tooLarge(p.err):
				// Never going to fit: retrying would wedge the appender.
				l.log.Warn("eventlog: event too large for NATS", "subject", p.msg.Subject, "err", p.err)
				l.publishError()
				acked++
			default:
				lastErr = p.err
				failed = append(failed, p)
			}
		}
		l.markDone(acked)
		ps = failed
		if len(ps) == 0 {
			return
		}
		if l.hardStop.Err() != nil {
			l.lose(len(ps))
			return
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
}

func (l *Log) message(e *event.Event) (*nats.Msg, error) {
	b, err := e.MarshalJSON()
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(Subject(e.Node, e.Type))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, e.ID())
	m.Header.Set(headerNode, e.Node)
	m.Header.Set(headerEpoch, strconv.FormatUint(e.Epoch, 10))
	return m, nil
}

// tooLarge reports an append that no retry can fix: the message exceeds the
// server's max payload or the stream's max message size.
func tooLarge(err error) bool {
	var api *jetstream.APIError
	return errors.Is(err, nats.ErrMaxPayload) ||
		errors.As(err, &api) && api.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum
}
