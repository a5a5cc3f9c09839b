// Package eventlog is the broker's event log (DESIGN.md §7): every event is
// appended to the NATS JetStream stream WSBROKER_EVENTS, and projections
// (presence, the connection list, recent rejections) are folds over that
// stream, rebuilt by replay at start and kept current by folding this node's
// events at their ack and, on a shared NATS, consuming the others' live.
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
// Each message is a CloudEvents JSON batch (Content-Type
// application/cloudevents-batch+json: an array of structured events) of
// events of one node and type, as many as the appender took together: one
// message per event cost JetStream its parse, de-duplication, store write
// and ack per event, a quarter of the broker's CPU per accepted upgrade.
// The order of one connection's events, and of everything around a
// node.started or node.stopped, is kept across messages (grouper). The
// first event's id is the Nats-Msg-Id, so a retried append is stored once
// (Config.DuplicatesWindow). Readers also take a message holding a single
// structured event, what logs written before batching hold.
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

	"github.com/wsbroker/wsbroker/broker/natsconn"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
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
	// DefaultDuplicatesWindow is the stream's Nats-Msg-Id de-duplication
	// window. It must cover a retried append (PublishTimeout, then retries
	// with a backoff of up to 2s); JetStream's own default of 2 minutes
	// kept every event's id in the server's memory (~100 B each) for four
	// times as long as needed.
	DefaultDuplicatesWindow = 30 * time.Second
	maxBatch                = 256
	batchLinger             = 5 * time.Millisecond
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
	// DuplicatesWindow is how long the stream remembers a message id to
	// drop a retried append that had been stored already (default
	// DefaultDuplicatesWindow). An append retried after it passed may be
	// stored twice; the projections fold duplicates idempotently.
	DuplicatesWindow time.Duration
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
	case c.DuplicatesWindow < 0:
		return fmt.Errorf("eventlog: events-dedup-window %s is negative", c.DuplicatesWindow)
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
	if c.DuplicatesWindow == 0 {
		c.DuplicatesWindow = DefaultDuplicatesWindow
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
	// js, stream and projCC are set once the stream is set up: at Open, or
	// by the connector when NATS was unreachable at Open (up tells).
	js     jetstream.JetStream
	stream jetstream.Stream
	urls   string // redacted, for messages

	queue   *queue
	sampler *sampler
	proj    *Projection
	projCC  jetstream.ConsumeContext

	// up is set once the stream is set up and the projection replayed;
	// ready once, in addition, the events queued while NATS was
	// unreachable at start are appended.
	up    atomic.Bool
	ready atomic.Bool
	// setupErr is the last failure of the connector's setup, for Status.
	setupMu  sync.Mutex
	setupErr error

	// ack, grp and inflight belong to the appender (publish.go).
	ack      *acker
	grp      grouper
	inflight []*group
	// maxMsg is the stream's max_msg_size at setup (<= 0: none).
	maxMsg int

	// enqueued counts events accepted into the queue, done those acked (or
	// given up); Flush waits for done to reach enqueued. lost counts those
	// given up at Close.
	enqueued atomic.Uint64
	done     atomic.Uint64
	lost     atomic.Uint64
	progMu   sync.Mutex
	progress chan struct{}

	stop     chan struct{}
	hardStop context.Context
	abandon  context.CancelFunc
	// setupCtx ends the connector's setup when the log closes.
	setupCtx    context.Context
	setupCancel context.CancelFunc
	wg          sync.WaitGroup
	closed      atomic.Bool
	// epoch is this run's, learned from its own node.started. Events of this
	// node and epoch are folded into the projection when their append is
	// acknowledged, so the projection consumer skips them undecoded (their
	// JSON decode was a tenth of the broker's CPU per accepted upgrade).
	epoch atomic.Uint64
}

// Open starts (or connects to) NATS, creates or updates the stream, replays
// it into the projections and starts the appender.
//
// With NATS URLs, a NATS that cannot be reached (natsconn.Unreachable: no
// server answers, JetStream not available yet) does not fail Open: the log
// starts not ready, queues events (QueueSize, the overflow dropped and
// counted as usual), and a connector goroutine sets the stream up and
// replays the projection once NATS answers; then the appender appends the
// queue in order and the log becomes Ready. Misconfiguration (credentials,
// TLS, authorization, JetStream disabled, a conflicting existing stream)
// still fails Open. The embedded server and a read-only log fail fast on
// any error.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	l := &Log{cfg: cfg, log: cfg.Logger, stop: make(chan struct{}), progress: make(chan struct{})}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	l.hardStop, l.abandon = context.WithCancel(context.Background())
	l.setupCtx, l.setupCancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			l.abandon()
			l.setupCancel()
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
		l.urls = "the embedded NATS server"
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
		if err := l.setup(ctx); err != nil {
			return nil, err
		}
		l.start()
		ok = true
		return l, nil
	}

	l.urls = natsconn.URLs(cfg.NATSURLs)
	opts = append(opts, cfg.NATSOptions...)
	var down error
	if cfg.ReadOnly {
		// A reader has nothing to queue: it needs NATS now.
		l.nc, err = nats.Connect(strings.Join(cfg.NATSURLs, ","), opts...)
	} else {
		l.nc, down, err = natsconn.Connect(cfg.NATSURLs, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("eventlog: nats-url %q: %w", l.urls, err)
	}
	if down == nil {
		err := l.setup(ctx)
		if err == nil {
			l.start()
			ok = true
			return l, nil
		}
		if cfg.ReadOnly || !natsconn.Unreachable(err) {
			return nil, err
		}
		down = err
	}
	// NATS (or its JetStream) is unreachable: serve without it, queue,
	// and set the log up when it answers.
	l.setSetupErr(down)
	l.proj = NewProjection()
	l.queue = newQueue(cfg.QueueSize)
	l.sampler = newSampler(cfg.RejectLimit)
	l.log.Warn("eventlog: NATS unreachable, queuing events; will retry",
		"nats_url", l.urls, "queue_size", cfg.QueueSize, "err", redact.Userinfo(down.Error()))
	l.wg.Add(1)
	go l.connect()
	ok = true
	return l, nil
}

// setup creates (or, read-only, looks up) the stream and replays it into
// the projection. It may run again after a failure: the replay is
// idempotent per stream sequence.
func (l *Log) setup(ctx context.Context) error {
	cfg := l.cfg
	js, err := jetstream.New(l.nc,
		jetstream.WithPublishAsyncTimeout(cfg.PublishTimeout),
		jetstream.WithPublishAsyncMaxPending(4*maxBatch))
	if err != nil {
		return fmt.Errorf("eventlog: jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if cfg.ReadOnly {
		st, err := js.Stream(sctx, StreamName)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("eventlog: no event log there yet (stream %s not found): %w", StreamName, err)
		}
		if err != nil {
			return fmt.Errorf("eventlog: stream %s: %w", StreamName, err)
		}
		l.js, l.stream = js, st
		l.up.Store(true)
		l.ready.Store(true)
		return nil
	}
	st, err := js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
		Name:        StreamName,
		Description: "wsbroker events (CloudEvents JSON), DESIGN.md §7",
		Subjects:    []string{SubjectPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      cfg.MaxAge,
		MaxBytes:    cfg.MaxBytes,
		Replicas:    cfg.Replicas,
		Storage:     jetstream.FileStorage,
		Duplicates:  cfg.DuplicatesWindow,
	})
	if natsconn.NoJetStream(err) {
		return fmt.Errorf("eventlog: nats-url %q: JetStream is not enabled there (the event log needs it: nats-server -js): %w", l.urls, err)
	}
	if err != nil {
		return fmt.Errorf("eventlog: create stream %s (events-max-age %s, events-max-bytes %d, stream-replicas %d): %w",
			StreamName, cfg.MaxAge, cfg.MaxBytes, cfg.Replicas, err)
	}
	l.js, l.stream = js, st
	l.maxMsg = int(st.CachedInfo().Config.MaxMsgSize)
	if l.proj == nil {
		l.proj = NewProjection()
	}
	// The caller's ctx, not the 30s of the stream calls: replaying a large
	// log may take longer.
	return l.startProjection(ctx)
}

// start starts the appender of a log set up at Open.
func (l *Log) start() {
	l.queue = newQueue(l.cfg.QueueSize)
	l.sampler = newSampler(l.cfg.RejectLimit)
	l.up.Store(true)
	l.ready.Store(true)
	l.wg.Add(1)
	go l.run(0)
}

// connect is the connector of a log opened while NATS was unreachable: it
// waits for the connection (nats.go retries it), sets the stream up
// (retrying with backoff), then becomes the appender. Until then it keeps
// the queue depth and the sampler's held rejections current. Closed before
// NATS came, it counts the queued events as lost.
func (l *Log) connect() {
	if !l.await() {
		l.giveUp()
		l.wg.Done()
		return
	}
	l.setSetupErr(nil)
	backlog := l.enqueued.Load()
	l.log.Info("eventlog: NATS connected, stream set up; appending the events queued meanwhile",
		"nats_url", l.urls, "queued", backlog-l.done.Load())
	l.up.Store(true)
	l.run(backlog)
}

// await waits for NATS and sets the log up; false if the log closed first.
func (l *Log) await() bool {
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	backoff := 250 * time.Millisecond
	var retry <-chan time.Time
	for {
		select {
		case <-l.stop:
			return false
		case <-l.setupCtx.Done():
			return false
		case <-tick.C:
			l.sampler.releaseExpired(l, l.cfg.Now())
			l.queueDepth()
		case <-retry:
			retry = nil
		}
		if retry != nil || !l.nc.IsConnected() {
			continue
		}
		err := l.setup(l.setupCtx)
		if err == nil {
			return true
		}
		if l.setupCtx.Err() != nil {
			return false
		}
		l.setSetupErr(err)
		l.log.Warn("eventlog: NATS connected but the event log is not set up yet; retrying",
			"nats_url", l.urls, "err", redact.Userinfo(err.Error()), "backoff", backoff.String(), "queued", l.pending())
		retry = time.After(backoff)
		backoff = min(2*backoff, 5*time.Second)
	}
}

// giveUp counts the queued events as lost: the log closed before NATS came.
func (l *Log) giveUp() {
	var batch []event.Event
	for {
		batch = l.queue.pop(batch[:0], maxBatch)
		if len(batch) == 0 {
			return
		}
		l.lose(len(batch))
	}
}

// lose records n events as given up.
func (l *Log) lose(n int) {
	for range n {
		l.publishError()
	}
	l.lost.Add(uint64(n))
	l.markDone(n)
}

func (l *Log) pending() uint64 { return l.enqueued.Load() - l.done.Load() }

func (l *Log) setSetupErr(err error) {
	l.setupMu.Lock()
	l.setupErr = err
	l.setupMu.Unlock()
}

// Ready reports whether the log is current: the stream is set up, the
// projection replayed, and the events queued while NATS was unreachable at
// start are appended. A log opened with NATS reachable is ready at once.
func (l *Log) Ready() bool { return l.ready.Load() }

// Status says why the log is not ready ("" when it is), in the words the
// admin API answers with.
func (l *Log) Status() string {
	if l.ready.Load() {
		return ""
	}
	n := l.pending()
	if l.up.Load() {
		return fmt.Sprintf("event log not ready: appending the events queued while NATS was unreachable, %d events queued", n)
	}
	if !l.nc.IsConnected() {
		return fmt.Sprintf("event log not ready: NATS unreachable at %s, %d events queued", l.urls, n)
	}
	l.setupMu.Lock()
	err := l.setupErr
	l.setupMu.Unlock()
	if err == nil {
		return fmt.Sprintf("event log not ready: NATS connected at %s, setting up stream %s, %d events queued", l.urls, StreamName, n)
	}
	return fmt.Sprintf("event log not ready: NATS connected at %s but stream %s is not set up (%s), %d events queued",
		l.urls, StreamName, redact.Userinfo(err.Error()), n)
}

// startProjection replays the stream from its start with an ordered
// consumer and waits until the fold has caught up with the stream as it was
// at Open. On a shared NATS the consumer keeps running, to fold the other
// nodes' events. The embedded server has no listener and its data dir is
// locked to this process, so after the replay this Log is the stream's only
// writer and folds each of its events at its ack: the consumer is stopped
// rather than made to deliver every append back only to be skipped (that
// delivery was ~8% of the server's CPU per accepted upgrade).
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
		seq := md.Sequence.Stream
		if !l.ownCurrentHeader(m.Headers()) {
			if err := event.DecodeBatch(m.Data(), func(i int, e *event.Event) error {
				l.proj.Apply(seq, i, e)
				return nil
			}); err != nil {
				l.log.Warn("eventlog: undecodable message", "seq", seq, "err", err)
			}
		}
		l.proj.Advance(seq)
		if md.Sequence.Stream >= last || md.NumPending == 0 {
			once.Do(func() { close(caught) })
		}
	})
	if err != nil {
		return fmt.Errorf("eventlog: projection consume: %w", err)
	}
	// Caught up is seen in a delivery; if the messages up to last expire
	// (MaxAge) before the consumer fetches them, none comes: the stream's
	// state says so instead.
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		select {
		case <-caught:
			if l.ns != nil {
				l.projCC.Stop()
				<-l.projCC.Closed()
			}
			return nil
		case <-check.C:
			if info, err := l.stream.Info(ctx); err == nil && (info.State.Msgs == 0 || info.State.FirstSeq > last) {
				once.Do(func() { close(caught) })
			}
		case <-ctx.Done():
			// Wait for the consumer's callback to end: the caller may
			// start over with a fresh projection.
			l.projCC.Stop()
			<-l.projCC.Closed()
			return fmt.Errorf("eventlog: replay of %s (%d events): %w", StreamName, last, ctx.Err())
		}
	}
}

// Projection returns the projections, nil on a read-only log.
func (l *Log) Projection() *Projection { return l.proj }

// Stream returns the JetStream stream; nil until it is set up.
func (l *Log) Stream() jetstream.Stream {
	if !l.up.Load() {
		return nil
	}
	return l.stream
}

// Subject returns the subject an event is appended to.
func Subject(node string, t event.Type) string {
	return SubjectPrefix + subjectToken(node) + "." + typeToken(t)
}

// TypeSubject returns the filter subject of one type across all nodes.
func TypeSubject(t event.Type) string {
	return SubjectPrefix + "*." + typeToken(t)
}

// typeToken is a type's subject token: connection_opened, ...
func typeToken(t event.Type) string {
	return strings.ReplaceAll(t.Short(), ".", "_")
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
	if l.ns != nil {
		// The embedded store's only writer: every append is folded at its
		// ack (the projection consumer stops after the replay).
		return true
	}
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
		l.lostOne(e)
	}
}

// lostOne counts an event of this node the log could not store (its queue
// was full, or NATS refused it for good) and still folds it into this
// node's projection: a lost open would miss a live connection, and a lost
// close would otherwise leave a ghost in presence.
func (l *Log) lostOne(e *event.Event) {
	l.publishError()
	if l.proj != nil {
		l.proj.ApplyDropped(e)
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

// ErrNotReady is returned by the queries of a log that is not set up yet
// (NATS unreachable since Open).
var ErrNotReady = errors.New("eventlog: not ready")

// Close flushes the queue, stops the appender and the projection, and shuts
// the embedded NATS server down. Events observed after Close are dropped.
// When ctx ends first (NATS unreachable), the events still queued are
// given up and the error says how many were lost.
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
		l.setupCancel()
		// An event observed while Close ran can still be in the final
		// drain; if NATS fails then, its retries end at ctx's deadline.
		done := make(chan struct{})
		go func() { l.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			l.abandon()
			<-done
		}
	}
	l.abandon()
	l.setupCancel()
	if l.projCC != nil {
		l.projCC.Stop()
		<-l.projCC.Closed()
	}
	l.shutdownNATS()
	if n := l.lost.Load(); n > 0 {
		lost := fmt.Sprintf("eventlog: %d events lost at close (not appended to %s on %s)", n, StreamName, l.urls)
		if ferr == nil {
			return errors.New(lost)
		}
		return fmt.Errorf("%s: %w", lost, ferr)
	}
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
