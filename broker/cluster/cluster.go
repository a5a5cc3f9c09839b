// Package cluster scales the broker out over a NATS cluster (DESIGN.md §10,
// docs/cluster.md). A Cluster is the broker's Bus: channel messages cross
// nodes over NATS core subjects, a node listening to a channel's subject
// only while it has local subscribers; with history on, messages are first
// stored in the JetStream stream WSBROKER_HISTORY, whose sequence is the
// message offset on every node, and the stream republishes each stored
// message to the channel's subject. The Cluster also keeps this node's
// lease in the KV bucket wsbroker_nodes and reaps the nodes whose lease
// expired: it appends a node.stopped event for them, so that their
// connections leave presence on every node.
//
// Subjects (the channel token is the channel name with '.' escaped as
// "%2E"; channel names never contain '%', so the mapping is reversible):
//
//	wsbroker.msg.<token>   live messages (core NATS; header Wsb-Origin)
//	wsbroker.hist.<token>  the history stream's subjects
package cluster

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

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/broker/natsconn"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
)

// Names of the cluster's NATS resources.
const (
	MsgPrefix     = "wsbroker.msg."
	HistPrefix    = "wsbroker.hist."
	HistoryStream = "WSBROKER_HISTORY"
	NodesBucket   = "wsbroker_nodes"
	// OriginHeader names the node a live message was published on.
	OriginHeader = "Wsb-Origin"
)

// Defaults of Config.
const (
	DefaultLease          = 15 * time.Second
	DefaultPublishTimeout = 5 * time.Second
	inboxSize             = 65536
)

// Token maps a channel name to its subject token.
func Token(channel string) string { return strings.ReplaceAll(channel, ".", "%2E") }

// Channel maps a subject token back to the channel name.
func Channel(token string) string { return strings.ReplaceAll(token, "%2E", ".") }

// NodeEpoch is one run of one node.
type NodeEpoch struct {
	Node  string
	Epoch uint64
}

// Config configures Open.
type Config struct {
	// NATSURLs are the cluster's servers (any of them; the client learns
	// the others).
	NATSURLs []string
	// Options are extra NATS options (credentials, TLS: see NATSOptions).
	Options []nats.Option
	// Node and Epoch name this run of the node.
	Node  string
	Epoch uint64
	// HistoryMessages > 0 keeps history: the last HistoryMessages messages
	// of each channel, for at most HistoryAge (0: no age limit).
	HistoryMessages int
	HistoryAge      time.Duration
	// Replicas of the history stream and the nodes bucket.
	Replicas int
	// Lease is how long a node's key lives without renewal; the key is
	// renewed every Lease/3 (default DefaultLease).
	Lease time.Duration
	// Sink receives the node.stopped events of nodes whose lease expired;
	// Present lists the runs with open connections in presence. Reaping
	// needs both.
	Sink    event.Sink
	Present func() []NodeEpoch
	// PublishTimeout bounds the wait for the history stream's ack.
	PublishTimeout time.Duration
	Logger         *slog.Logger
	// Now is the clock of event times; default time.Now.
	Now func() time.Time
}

// Cluster is a node's membership in the cluster and its Bus.
type Cluster struct {
	cfg  Config
	log  *slog.Logger
	nc   *nats.Conn
	js   jetstream.JetStream
	urls string // redacted, for messages
	// res is nil until the history stream and the nodes bucket are set up:
	// at Open, or in the background when NATS was unreachable at Open.
	res atomic.Pointer[resources]
	// ctx ends the background setup and renewals at Close.
	ctx    context.Context
	cancel context.CancelFunc

	deliver func(channel string, offset uint64, data []byte)
	inbox   chan *nats.Msg

	mu      sync.Mutex
	watches map[string]*watch
	reaped  map[NodeEpoch]time.Time

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// resources are the cluster's JetStream resources.
type resources struct {
	hist jetstream.Stream // nil without history
	kv   jetstream.KeyValue
}

// watch is this node's subscription to one channel's subject.
type watch struct {
	channel string
	sub     *nats.Subscription
	// last is the offset last delivered (history); 0 until known.
	last   uint64
	synced chan struct{}
	once   sync.Once
}

// NATSOptions returns the options of a credentials file and a CA file (both
// optional), for the cluster and the event log alike. Both files are read
// now: an unreadable one is configuration, reported at start even when no
// NATS server answers yet (the client would read the credentials only once
// one does).
func NATSOptions(creds, tlsCA string) ([]nats.Option, error) {
	var o []nats.Option
	if creds != "" {
		if err := natsconn.CheckCreds(creds); err != nil {
			return nil, err
		}
		o = append(o, nats.UserCredentials(creds))
	}
	if tlsCA != "" {
		if _, err := os.Stat(tlsCA); err != nil {
			return nil, fmt.Errorf("nats-tls-ca: %w", err)
		}
		o = append(o, nats.RootCAs(tlsCA))
	}
	return o, nil
}

// Open connects to the cluster, creates or updates the history stream (when
// history is on) and the nodes bucket, puts this node's lease and starts
// renewing it.
func Open(ctx context.Context, cfg Config) (*Cluster, error) {
	if len(cfg.NATSURLs) == 0 {
		return nil, errors.New("cluster: nats-url is empty (a cluster needs NATS servers)")
	}
	if cfg.Node == "" {
		return nil, errors.New("cluster: node-id is empty")
	}
	if cfg.HistoryMessages < 0 {
		return nil, fmt.Errorf("cluster: history-messages %d, want >= 0", cfg.HistoryMessages)
	}
	if cfg.HistoryAge < 0 {
		return nil, fmt.Errorf("cluster: history-age %s, want >= 0", cfg.HistoryAge)
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.Lease == 0 {
		cfg.Lease = DefaultLease
	}
	if cfg.Lease < 300*time.Millisecond {
		return nil, fmt.Errorf("cluster: node-lease %s, want >= 300ms", cfg.Lease)
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cluster{
		cfg:     cfg,
		log:     cfg.Logger,
		inbox:   make(chan *nats.Msg, inboxSize),
		watches: map[string]*watch{},
		reaped:  map[NodeEpoch]time.Time{},
		stop:    make(chan struct{}),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.urls = natsconn.URLs(cfg.NATSURLs)
	opts := append([]nats.Option{
		nats.Name("wsbroker-cluster-" + cfg.Node),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.log.Warn("cluster: nats", "err", err)
		}),
	}, cfg.Options...)
	nc, down, err := natsconn.Connect(cfg.NATSURLs, opts...)
	if err != nil {
		c.cancel()
		return nil, fmt.Errorf("cluster: nats-url %q: %w", c.urls, err)
	}
	c.nc = nc
	ok := false
	defer func() {
		if !ok {
			c.cancel()
			nc.Close()
		}
	}()
	c.js, err = jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	if down == nil {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.setup(sctx)
		cancel()
		if err != nil && !natsconn.Unreachable(err) {
			return nil, err
		}
		down = err
	}
	if down != nil {
		// Serve local subscribers now; channel watches made meanwhile are
		// buffered by the connection and sent when NATS answers, and the
		// history stream, the bucket and the lease are set up then.
		c.log.Warn("cluster: NATS unreachable; channels are local to this node until it answers; will retry",
			"nats_url", c.urls, "err", redact.Userinfo(down.Error()))
	}
	c.wg.Add(2)
	go c.dispatch()
	go c.background()
	ok = true
	return c, nil
}

// setup creates or updates the history stream (with history) and the nodes
// bucket, and puts this node's lease.
func (c *Cluster) setup(ctx context.Context) error {
	cfg := c.cfg
	r := &resources{}
	var err error
	if cfg.HistoryMessages > 0 {
		// One message more than asked is kept: the oldest kept message
		// anchors the recovery check (see Recover).
		r.hist, err = c.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:              HistoryStream,
			Description:       "wsbroker channel history for since recovery, docs/cluster.md",
			Subjects:          []string{HistPrefix + ">"},
			Retention:         jetstream.LimitsPolicy,
			Discard:           jetstream.DiscardOld,
			MaxMsgsPerSubject: int64(cfg.HistoryMessages) + 1,
			MaxAge:            cfg.HistoryAge,
			Replicas:          cfg.Replicas,
			Storage:           jetstream.FileStorage,
			RePublish:         &jetstream.RePublish{Source: HistPrefix + ">", Destination: MsgPrefix + ">"},
		})
		if natsconn.NoJetStream(err) {
			return fmt.Errorf("cluster: nats-url %q: JetStream is not enabled there (history-messages needs it: nats-server -js): %w", c.urls, err)
		}
		if err != nil {
			return fmt.Errorf("cluster: create stream %s (history-messages %d, history-age %s, stream-replicas %d): %w",
				HistoryStream, cfg.HistoryMessages, cfg.HistoryAge, cfg.Replicas, err)
		}
	}
	r.kv, err = c.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      NodesBucket,
		Description: "wsbroker node leases, docs/cluster.md",
		TTL:         cfg.Lease,
		History:     1,
		Replicas:    cfg.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if natsconn.NoJetStream(err) {
		return fmt.Errorf("cluster: nats-url %q: JetStream is not enabled there (the node leases need it: nats-server -js): %w", c.urls, err)
	}
	if err != nil {
		return fmt.Errorf("cluster: key-value bucket %s (node-lease %s, stream-replicas %d): %w",
			NodesBucket, cfg.Lease, cfg.Replicas, err)
	}
	if err := c.renew(ctx, r.kv); err != nil {
		return err
	}
	c.res.Store(r)
	return nil
}

// background sets the cluster up once NATS answers, if it was not at
// Open (retrying with backoff until Close), then renews the lease.
func (c *Cluster) background() {
	defer c.wg.Done()
	if c.res.Load() == nil {
		if !c.await() {
			return
		}
		c.log.Info("cluster: NATS connected; channels cross nodes again, lease put", "nats_url", c.urls,
			"history", c.History())
	}
	c.heartbeat()
}

// await retries setup until it succeeds (true) or the cluster closes.
func (c *Cluster) await() bool {
	backoff := 250 * time.Millisecond
	for {
		select {
		case <-c.stop:
			return false
		case <-time.After(backoff):
		}
		if !c.nc.IsConnected() {
			backoff = 250 * time.Millisecond
			continue
		}
		ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
		err := c.setup(ctx)
		cancel()
		if err == nil {
			return true
		}
		if c.ctx.Err() != nil {
			return false
		}
		backoff = min(2*backoff, 5*time.Second)
		c.log.Warn("cluster: NATS connected but not set up yet; retrying", "nats_url", c.urls,
			"err", redact.Userinfo(err.Error()), "backoff", backoff.String())
	}
}

// Ready reports whether the cluster is set up: NATS answered, the history
// stream and the nodes bucket exist and the lease was put.
func (c *Cluster) Ready() bool { return c.res.Load() != nil }

// unavailable is the error of an operation that needs what NATS was to set
// up, or a connection it does not have now.
func (c *Cluster) unavailable(what string) error {
	if c.nc.IsConnected() {
		return fmt.Errorf("cluster: %s: not set up yet on NATS at %s: %w", what, c.urls, broker.ErrBusUnavailable)
	}
	return fmt.Errorf("cluster: %s: NATS unreachable at %s: %w", what, c.urls, broker.ErrBusUnavailable)
}

// Close stops renewing the lease and leaves NATS. The lease is not deleted:
// it expires, and by then a graceful stop has closed the node's
// connections in presence.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		close(c.stop)
		c.cancel()
		c.nc.Close()
		c.wg.Wait()
	})
	return nil
}

// History reports whether channels keep history (configured: also while
// the history stream is not set up yet).
func (c *Cluster) History() bool { return c.cfg.HistoryMessages > 0 }

// hist returns the history stream, nil without history or until set up.
func (c *Cluster) hist() jetstream.Stream {
	if r := c.res.Load(); r != nil {
		return r.hist
	}
	return nil
}

// Conn returns the NATS connection.
func (c *Cluster) Conn() *nats.Conn { return c.nc }

// Start implements broker.Bus.
func (c *Cluster) Start(deliver func(channel string, offset uint64, data []byte)) {
	c.mu.Lock()
	c.deliver = deliver
	c.mu.Unlock()
}

// Watch subscribes to channel's subject (broker.Bus; does not block).
func (c *Cluster) Watch(channel string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.watches[channel]; ok {
		return
	}
	w := &watch{channel: channel, synced: make(chan struct{})}
	sub, err := c.nc.ChanSubscribe(MsgPrefix+Token(channel), c.inbox)
	if err != nil {
		c.log.Warn("cluster: subscribe", "channel", channel, "err", err)
	} else {
		_ = sub.SetPendingLimits(-1, -1)
	}
	w.sub = sub
	c.watches[channel] = w
}

// Unwatch drops channel's subscription (broker.Bus).
func (c *Cluster) Unwatch(channel string) {
	c.mu.Lock()
	w := c.watches[channel]
	delete(c.watches, channel)
	c.mu.Unlock()
	if w != nil && w.sub != nil {
		_ = w.sub.Unsubscribe()
	}
}

// Sync waits until the server holds the subscription; with history it
// also takes the channel's last stored offset as the start of gap
// detection, so that a message stored after Sync returns is delivered even
// if its republished copy is lost (broker.Bus).
func (c *Cluster) Sync(ctx context.Context, channel string) error {
	c.mu.Lock()
	w := c.watches[channel]
	c.mu.Unlock()
	if w == nil {
		return nil
	}
	if w.sub == nil {
		return fmt.Errorf("cluster: no subscription to %q", channel)
	}
	// Without NATS the watch takes effect when it answers (the connection
	// sends its subscriptions then); don't spend the subscriber's wait on
	// it, and sync again on the next subscribe.
	if !c.nc.IsConnected() || c.History() && c.hist() == nil {
		return c.unavailable("subscription to " + strconv.Quote(channel))
	}
	var err error
	w.once.Do(func() {
		defer close(w.synced)
		if err = c.nc.FlushWithContext(ctx); err != nil {
			err = fmt.Errorf("cluster: flush subscription of %q: %w", channel, err)
			return
		}
		hist := c.hist()
		if hist == nil {
			return
		}
		var last uint64
		m, gerr := hist.GetLastMsgForSubject(ctx, HistPrefix+Token(channel))
		switch {
		case gerr == nil:
			last = m.Sequence
		case errors.Is(gerr, jetstream.ErrMsgNotFound):
			info, ierr := hist.Info(ctx)
			if ierr != nil {
				err = fmt.Errorf("cluster: history of %q: %w", channel, ierr)
				return
			}
			last = info.State.LastSeq
		default:
			err = fmt.Errorf("cluster: history of %q: %w", channel, gerr)
			return
		}
		c.mu.Lock()
		if w.last < last {
			w.last = last
		}
		c.mu.Unlock()
	})
	if err != nil {
		return err
	}
	select {
	case <-w.synced:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("cluster: sync of %q: %w", channel, ctx.Err())
	}
}

// Publish sends a message to the other nodes (broker.Bus). Without history
// it only queues the message on the NATS connection; with history it waits
// for the stream's ack and returns the stored sequence.
func (c *Cluster) Publish(ctx context.Context, channel string, data []byte) (uint64, error) {
	m := &nats.Msg{Header: nats.Header{OriginHeader: []string{c.cfg.Node}}, Data: data}
	if !c.History() {
		if !c.nc.HeadersSupported() {
			// Never connected yet: nats.go has not learned that the server
			// takes headers and refuses the message rather than buffer it.
			// Once connected, an outage buffers publishes (reconnect buffer).
			return 0, c.unavailable("publish to " + strconv.Quote(channel) + " for the other nodes")
		}
		m.Subject = MsgPrefix + Token(channel)
		if err := c.nc.PublishMsg(m); err != nil {
			return 0, fmt.Errorf("cluster: publish to %q: %w", channel, err)
		}
		return 0, nil
	}
	// Not connected: fail now rather than buffer a message the client is
	// told was not stored and publishes again.
	if c.hist() == nil || !c.nc.IsConnected() {
		return 0, c.unavailable("store in " + HistoryStream + " of " + strconv.Quote(channel))
	}
	m.Subject = HistPrefix + Token(channel)
	ctx, cancel := context.WithTimeout(ctx, c.cfg.PublishTimeout)
	defer cancel()
	ack, err := c.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, fmt.Errorf("cluster: store in %s of %q: %w", HistoryStream, channel, err)
	}
	return ack.Sequence, nil
}

// Recover returns the kept messages of channel after since (broker.Bus).
// The stream keeps one message more per channel than history-messages; the
// retention drops a channel's messages oldest first, so every message after
// since is still kept when since is at least the oldest kept offset. Below
// that some may be lost and recovered is false (conservative: also when
// since was dropped but nothing after it was).
func (c *Cluster) Recover(ctx context.Context, channel string, since uint64) ([]broker.BusMessage, bool, error) {
	if !c.History() {
		return nil, false, nil
	}
	hist := c.hist()
	if hist == nil {
		return nil, false, c.unavailable("history of " + strconv.Quote(channel))
	}
	subj := HistPrefix + Token(channel)
	var out []broker.BusMessage
	recovered := false
	seq := since + 1
	if since > 0 {
		seq = since
	}
	first := true
	for {
		m, err := hist.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, false, fmt.Errorf("cluster: read history of %q after %d: %w", channel, since, err)
		}
		if first {
			// The oldest kept message at or after since: since itself
			// still kept means nothing after it was dropped.
			recovered = since > 0 && m.Sequence == since
			first = false
		}
		if m.Sequence > since {
			out = append(out, broker.BusMessage{Offset: m.Sequence, Data: m.Data})
		}
		seq = m.Sequence + 1
	}
	if first {
		// Nothing kept at or after since. A kept message older than since
		// means nothing after since was dropped (retention drops oldest
		// first); so does since being the stream's last sequence or more.
		info, err := hist.Info(ctx)
		if err != nil {
			return nil, false, fmt.Errorf("cluster: history of %q: %w", channel, err)
		}
		_, err = hist.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
		recovered = since >= info.State.LastSeq || err == nil
	}
	return out, recovered, nil
}

// dispatch hands the messages of every watched subject to the broker, in
// the order each subject's messages arrive.
func (c *Cluster) dispatch() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			return
		case m := <-c.inbox:
			c.handle(m)
		}
	}
}

func (c *Cluster) handle(m *nats.Msg) {
	tok, ok := strings.CutPrefix(m.Subject, MsgPrefix)
	if !ok {
		return
	}
	channel := Channel(tok)
	c.mu.Lock()
	w := c.watches[channel]
	deliver := c.deliver
	c.mu.Unlock()
	if w == nil || w.sub != m.Sub || deliver == nil {
		return // unwatched since
	}
	if !c.History() {
		if m.Header.Get(OriginHeader) == c.cfg.Node {
			return // delivered locally already
		}
		deliver(channel, 0, m.Data)
		return
	}
	seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil || seq == 0 {
		return
	}
	prev, _ := strconv.ParseUint(m.Header.Get(lastSeqHeader), 10, 64)
	c.mu.Lock()
	last := w.last
	c.mu.Unlock()
	if seq <= last {
		return // a duplicate, or filled in already
	}
	if last != 0 && prev > last {
		c.fill(w, channel, last, seq, deliver)
	}
	deliver(channel, seq, m.Data)
	c.setLast(w, seq)
}

const lastSeqHeader = "Nats-Last-Sequence"

// fill reads the messages of channel stored after last and before seq,
// whose republished copies did not arrive (a NATS server lost, a slow
// subscription), and delivers them.
func (c *Cluster) fill(w *watch, channel string, last, seq uint64, deliver func(string, uint64, []byte)) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.PublishTimeout)
	defer cancel()
	hist := c.hist()
	if hist == nil {
		return
	}
	subj := HistPrefix + Token(channel)
	next := last + 1
	for next < seq {
		m, err := hist.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subj))
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgNotFound) {
				c.log.Warn("cluster: gap not filled", "channel", channel, "after", last, "before", seq, "err", err)
			}
			return
		}
		if m.Sequence >= seq {
			return
		}
		deliver(channel, m.Sequence, m.Data)
		c.setLast(w, m.Sequence)
		next = m.Sequence + 1
	}
}

func (c *Cluster) setLast(w *watch, seq uint64) {
	c.mu.Lock()
	if seq > w.last {
		w.last = seq
	}
	c.mu.Unlock()
}
