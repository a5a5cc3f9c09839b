// Package eventlog is the broker's event log (DESIGN.md §7): every event is
// appended to the NATS JetStream stream WSBROKER_EVENTS, and projections
// (presence, the connection list, recent rejections) are folds over that
// stream, rebuilt by replay at start and kept current by consuming it live.
//
// By default NATS runs embedded in the process (the nats-server module, no
// network listener, a file store under the data dir); with NATS URLs the log
// lives in an external cluster shared by several nodes.
//
// Subjects are wsbroker.events.<node>.<type>, where <type> is the event
// type's short name with dots replaced by underscores (so that it stays one
// subject token) and <node> is the node name with '.', '*', '>' and white
// space replaced by underscores:
//
//	wsbroker.upgrade.rejected     -> wsbroker.events.node-1.upgrade_rejected
//	wsbroker.connection.opened    -> wsbroker.events.node-1.connection_opened
//	wsbroker.node.started         -> wsbroker.events.node-1.node_started
//
// Each message is the event's CloudEvents JSON with the event id as
// Nats-Msg-Id, so a retried append is stored once (Duplicates window 2m).
package eventlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// StreamName is the JetStream stream of the event log.
const StreamName = "WSBROKER_EVENTS"

// SubjectPrefix prefixes every event subject.
const SubjectPrefix = "wsbroker.events."

// Defaults of Config.
const (
	DefaultQueueSize   = 65536
	DefaultRejectLimit = 50
	DefaultMaxAge      = 7 * 24 * time.Hour
	DefaultMaxBytes    = 1 << 30
	duplicatesWindow   = 2 * time.Minute
	maxBatch           = 256
	batchLinger        = 5 * time.Millisecond
)

// Metrics is the part of telemetry.Metrics the log reports to.
type Metrics interface {
	EventPublishError()
	EventQueueDepth(n int)
}

// Config configures Open.
type Config struct {
	// DataDir holds the embedded NATS store (DataDir/jetstream). Only one
	// process can own a data dir at a time; Open locks it.
	DataDir string
	// NATSURLs selects an external NATS cluster instead of the embedded
	// server.
	NATSURLs []string
	// NATSOptions are extra options of the connection to NATSURLs
	// (credentials, TLS).
	NATSOptions []nats.Option
	// Node names this broker node in subjects.
	Node string
	// MaxAge and MaxBytes bound the stream's retention.
	MaxAge   time.Duration
	MaxBytes int64
	// Replicas of the stream (external clusters; 1 when embedded).
	Replicas int
	// QueueSize bounds the events waiting to be appended; when full, events
	// are dropped and counted as publish errors.
	QueueSize int
	// RejectLimit is the number of rejected-upgrade events per reason and
	// second that reach the log; the rest are folded into a suppressed
	// count. Negative disables sampling.
	RejectLimit int
	// PublishTimeout bounds the wait for one append's ack before it is
	// retried (default 5s).
	PublishTimeout time.Duration
	// ReadOnly opens the log for queries only: no appends, no projection,
	// and the stream is looked up rather than created.
	ReadOnly bool
	// Metrics may be nil.
	Metrics Metrics
	Logger  *slog.Logger
	// Now is the sampler's clock (tests); default time.Now.
	Now func() time.Time
}

// fill sets the defaults of the zero fields and rejects the invalid ones,
// naming the option.
func (c *Config) fill() error {
	switch {
	case c.MaxAge < 0:
		return fmt.Errorf("eventlog: events-max-age %s is negative", c.MaxAge)
	case c.MaxBytes < 0:
		return fmt.Errorf("eventlog: events-max-bytes %d is negative", c.MaxBytes)
	case c.QueueSize < 0:
		return fmt.Errorf("eventlog: QueueSize %d is negative", c.QueueSize)
	case c.Replicas > 1 && len(c.NATSURLs) == 0:
		return fmt.Errorf("eventlog: Replicas %d needs an external NATS cluster (nats-url)", c.Replicas)
	}
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.RejectLimit == 0 {
		c.RejectLimit = DefaultRejectLimit
	}
	if c.PublishTimeout <= 0 {
		c.PublishTimeout = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Node == "" {
		c.Node = "node"
	}
	return nil
}

// Log is the event log: an event.Sink appending to the stream, projections
// over it, and queries.
type Log struct {
	cfg    Config
	log    *slog.Logger
	ns     *server.Server
	unlock func()
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream

	queue   *queue
	sampler *sampler
	proj    *Projection
	projCC  jetstream.ConsumeContext

	// ack and pendings belong to the appender (publish.go).
	ack      *acker
	pendings []pending

	// enqueued counts events accepted into the queue, done those acked (or
	// given up); Flush waits for done to reach enqueued.
	enqueued atomic.Uint64
	done     atomic.Uint64
	progMu   sync.Mutex
	progress chan struct{}

	stop     chan struct{}
	hardStop context.Context
	abandon  context.CancelFunc
	wg       sync.WaitGroup
	closed   atomic.Bool
	// epoch is this run's, learned from its own node.started. Events of this
	// node and epoch are folded into the projection when their append is
	// acknowledged, so the projection consumer skips them undecoded (their
	// JSON decode was a tenth of the broker's CPU per accepted upgrade).
	epoch atomic.Uint64
}

// Open starts (or connects to) NATS, creates or updates the stream, replays
// it into the projections and starts the appender.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	l := &Log{cfg: cfg, log: cfg.Logger, stop: make(chan struct{}), progress: make(chan struct{})}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.hardStop, l.abandon = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			l.shutdownNATS()
		}
	}()

	opts := []nats.Option{
		nats.Name("wsbroker-eventlog-" + cfg.Node),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
	}
	var err error
	if len(cfg.NATSURLs) == 0 {
		if cfg.ReadOnly {
			// A reader must not leave an empty store behind a typo.
			if fi, err := os.Stat(cfg.DataDir); err != nil || !fi.IsDir() {
				return nil, fmt.Errorf("eventlog: data-dir %q: no such directory", cfg.DataDir)
			}
		}
		if l.ns, l.unlock, err = startEmbedded(cfg.DataDir, cfg.Node); err != nil {
			return nil, err
		}
		l.nc, err = nats.Connect("", append(opts, nats.InProcessServer(l.ns))...)
		if err != nil {
			return nil, fmt.Errorf("eventlog: connect to the embedded NATS server: %w", err)
		}
	} else {
		l.nc, err = nats.Connect(strings.Join(cfg.NATSURLs, ","), append(opts, cfg.NATSOptions...)...)
		if err != nil {
			return nil, fmt.Errorf("eventlog: nats-url %q: %w", strings.Join(cfg.NATSURLs, ","), err)
		}
	}
	l.js, err = jetstream.New(l.nc,
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout),
		jetstream.WithPublishAsyncMaxPending(4*maxBatch))
	if err != nil {
		return nil, fmt.Errorf("eventlog: jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if cfg.ReadOnly {
		l.stream, err = l.js.Stream(sctx, StreamName)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil, fmt.Errorf("eventlog: no event log there yet (stream %s not found): %w", StreamName, err)
		}
		if err != nil {
			return nil, fmt.Errorf("eventlog: stream %s: %w", StreamName, err)
		}
		ok = true
		return l, nil
	}
	l.stream, err = l.js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "wsbroker events (CloudEvents JSON), DESIGN.md §7",
		Subjects:    []string{SubjectPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Replicas:    cfg.Replicas,
		Storage:     jetstream.FileStorage,
		Duplicates:  duplicatesWindow,
	})
	if err != nil {
		return nil, fmt.Errorf("eventlog: create stream %s (events-max-age %s, events-max-bytes %d): %w",
			StreamName, cfg.MaxAge, cfg.MaxBytes, err)
	}
	l.proj = NewProjection()
	// The caller's ctx, not the 30s of the stream calls: replaying a large
	// log may take longer.
	if err := l.startProjection(ctx); err != nil {
		return nil, err
	}
	l.queue = newQueue(cfg.QueueSize)
	l.sampler = newSampler(cfg.RejectLimit)
	l.wg.Add(1)
	go l.run()
	ok = true
	return l, nil
}

// startProjection replays the stream from its start with an ordered
// consumer, waits until the fold has caught up with the stream as it was at
// Open, and leaves the consumer running to keep the fold current.
func (l *Log) startProjection(ctx context.Context) error {
	info, err := l.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("eventlog: stream %s info: %w", StreamName, err)
	}
	last := info.State.LastSeq
	cons, err := l.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
	if err != nil {
		return fmt.Errorf("eventlog: projection consumer: %w", err)
	}
	caught := make(chan struct{})
	var once sync.Once
	if last == 0 || info.State.Msgs == 0 {
		once.Do(func() { close(caught) })
	}
	l.projCC, err = cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		if l.ownCurrentHeader(m.Headers()) {
			l.proj.Advance(md.Sequence.Stream)
		} else {
			var e event.Event
			if err := e.UnmarshalJSON(m.Data()); err != nil {
				l.log.Warn("eventlog: undecodable event", "seq", md.Sequence.Stream, "err", err)
			} else {
				l.proj.Apply(md.Sequence.Stream, &e)
			}
		}
		if md.Sequence.Stream >= last || md.NumPending == 0 {
			once.Do(func() { close(caught) })
		}
	})
	if err != nil {
		return fmt.Errorf("eventlog: projection consume: %w", err)
	}
	select {
	case <-caught:
		return nil
	case <-ctx.Done():
		l.projCC.Stop()
		return fmt.Errorf("eventlog: replay of %s (%d events): %w", StreamName, last, ctx.Err())
	}
}

// Projection returns the projections, nil on a read-only log.
func (l *Log) Projection() *Projection { return l.proj }

// Stream returns the JetStream stream.
func (l *Log) Stream() jetstream.Stream { return l.stream }

// Subject returns the subject an event is appended to.
func Subject(node string, t event.Type) string {
	return SubjectPrefix + subjectToken(node) + "." + strings.ReplaceAll(t.Short(), ".", "_")
}

// TypeSubject returns the filter subject of one type across all nodes.
func TypeSubject(t event.Type) string {
	return SubjectPrefix + "*." + strings.ReplaceAll(t.Short(), ".", "_")
}

func subjectToken(s string) string {
	if s == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '.', '*', '>', ' ', '\t', '\r', '\n':
			return '_'
		}
		return r
	}, s)
}

// Observe queues a copy of e for appending. It never blocks: when the queue
// is full the event is dropped and counted as a publish error (the metrics,
// fed by an earlier sink, stay exact). Rejected upgrades are sampled per
// reason first.
func (l *Log) Observe(_ context.Context, e *event.Event) {
	if l.queue == nil || l.closed.Load() {
		l.publishError()
		return
	}
	if e.Type == event.TypeNodeStarted && e.Node == l.cfg.Node {
		l.epoch.Store(e.Epoch)
	}
	if e.Type == event.TypeUpgradeRejected && l.cfg.RejectLimit > 0 {
		l.sampler.observe(l, e, l.cfg.Now())
		return
	}
	l.enqueue(e)
}

// Headers naming the node and epoch of an appended event.
const (
	headerNode  = "Wsb-Node"
	headerEpoch = "Wsb-Epoch"
)

// ownCurrent reports whether e is this node's, of this run: folded into the
// projection at its append's acknowledgement instead of through the stream.
func (l *Log) ownCurrent(e *event.Event) bool {
	ep := l.epoch.Load()
	return ep != 0 && e.Epoch == ep && e.Node == l.cfg.Node
}

func (l *Log) ownCurrentHeader(h nats.Header) bool {
	ep := l.epoch.Load()
	return ep != 0 && h.Get(headerNode) == l.cfg.Node && h.Get(headerEpoch) == strconv.FormatUint(ep, 10)
}

func (l *Log) enqueue(e *event.Event) {
	// Counted before the send so that Flush, which compares done with
	// enqueued, never misses an event the batcher already took.
	l.enqueued.Add(1)
	if !l.queue.push(e) {
		l.enqueued.Add(^uint64(0))
		l.publishError()
		// Lost to the log, but this node's own projection need not lose it
		// too: a dropped close would otherwise leave a ghost in presence.
		if l.proj != nil {
			l.proj.ApplyDropped(e)
		}
	}
}

func (l *Log) publishError() {
	if l.cfg.Metrics != nil {
		l.cfg.Metrics.EventPublishError()
	}
}

func (l *Log) queueDepth() {
	if l.cfg.Metrics != nil {
		l.cfg.Metrics.EventQueueDepth(int(l.enqueued.Load() - l.done.Load()))
	}
}

// markDone records n events as finished and wakes Flush waiters.
func (l *Log) markDone(n int) {
	if n == 0 {
		return
	}
	l.done.Add(uint64(n))
	l.progMu.Lock()
	close(l.progress)
	l.progress = make(chan struct{})
	l.progMu.Unlock()
}

func (l *Log) progressCh() <-chan struct{} {
	l.progMu.Lock()
	defer l.progMu.Unlock()
	return l.progress
}

// Flush releases the rejections held by sampling and waits until every event
// queued so far is acknowledged by the stream.
func (l *Log) Flush(ctx context.Context) error {
	if l.queue == nil {
		return nil
	}
	if l.sampler != nil {
		l.sampler.releaseAll(l)
	}
	target := l.enqueued.Load()
	for {
		ch := l.progressCh()
		if l.done.Load() >= target {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("eventlog: flush (%d events pending): %w", target-l.done.Load(), ctx.Err())
		}
	}
}

// Close flushes the queue, stops the appender and the projection, and shuts
// the embedded NATS server down. Events observed after Close are dropped.
func (l *Log) Close(ctx context.Context) error {
	if l.closed.Swap(true) {
		return nil
	}
	var ferr error
	if l.queue != nil {
		ferr = l.Flush(ctx)
		close(l.stop)
		// If the flush gave up, stop retrying too.
		if ferr != nil {
			l.abandon()
		}
		l.wg.Wait()
	}
	l.abandon()
	if l.projCC != nil {
		l.projCC.Stop()
		<-l.projCC.Closed()
	}
	l.shutdownNATS()
	return ferr
}

func (l *Log) shutdownNATS() {
	if l.nc != nil {
		l.nc.Close()
	}
	if l.ns != nil {
		l.ns.Shutdown()
		l.ns.WaitForShutdown()
	}
	if l.unlock != nil {
		l.unlock()
	}
}

// NodeEvent builds a node.started or node.stopped event. Its sequence is 0
// for a start and the largest value for a stop, so that its id never
// collides with the events the server numbers from 1.
func NodeEvent(t event.Type, node string, epoch uint64, now time.Time) event.Event {
	e := event.Event{Type: t, Node: node, Epoch: epoch, Time: now}
	if t == event.TypeNodeStopped {
		e.Seq = ^uint64(0)
	}
	return e
}
