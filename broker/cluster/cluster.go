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
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/telemetry/event"
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
	hist jetstream.Stream
	kv   jetstream.KeyValue

	deliver func(channel string, offset uint64, data []byte)
	inbox   chan *nats.Msg

	mu      sync.Mutex
	watches map[string]*watch
	reaped  map[NodeEpoch]time.Time

	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup
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
// optional), for the cluster and the event log alike.
func NATSOptions(creds, tlsCA string) []nats.Option {
	var o []nats.Option
	if creds != "" {
		o = append(o, nats.UserCredentials(creds))
	}
	if tlsCA != "" {
		o = append(o, nats.RootCAs(tlsCA))
	}
	return o
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
	urls := strings.Join(cfg.NATSURLs, ",")
	opts := append([]nats.Option{
		nats.Name("wsbroker-cluster-" + cfg.Node),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			c.log.Warn("cluster: nats", "err", err)
		}),
	}, cfg.Options...)
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: nats-url %q: %w", urls, err)
	}
	c.nc = nc
	ok := false
	defer func() {
		if !ok {
			nc.Close()
		}
	}()
	c.js, err = jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("cluster: jetstream: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if cfg.HistoryMessages > 0 {
		// One message more than asked is kept: the oldest kept message
		// anchors the recovery check (see Recover).
		c.hist, err = c.js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
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
		if err != nil {
			return nil, fmt.Errorf("cluster: create stream %s (history-messages %d, history-age %s, stream-replicas %d): %w",
				HistoryStream, cfg.HistoryMessages, cfg.HistoryAge, cfg.Replicas, err)
		}
	}
	c.kv, err = c.js.CreateOrUpdateKeyValue(sctx, jetstream.KeyValueConfig{
		Bucket:      NodesBucket,
		Description: "wsbroker node leases, docs/cluster.md",
		TTL:         cfg.Lease,
		History:     1,
		Replicas:    cfg.Replicas,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("cluster: key-value bucket %s (node-lease %s, stream-replicas %d): %w",
			NodesBucket, cfg.Lease, cfg.Replicas, err)
	}
	if err := c.renew(sctx); err != nil {
		return nil, err
	}
	c.wg.Add(2)
	go c.dispatch()
	go c.heartbeat()
	ok = true
	return c, nil
}

// Close stops renewing the lease and leaves NATS. The lease is not deleted:
// it expires, and by then a graceful stop has closed the node's
// connections in presence.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		close(c.stop)
		c.nc.Close()
		c.wg.Wait()
	})
	return nil
}

// History reports whether channels keep history.
func (c *Cluster) History() bool { return c.hist != nil }

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
	var err error
	w.once.Do(func() {
		defer close(w.synced)
		if err = c.nc.FlushWithContext(ctx); err != nil {
			err = fmt.Errorf("cluster: flush subscription of %q: %w", channel, err)
			return
		}
		if c.hist == nil {
			return
		}
		var last uint64
		m, gerr := c.hist.GetLastMsgForSubject(ctx, HistPrefix+Token(channel))
		switch {
		case gerr == nil:
			last = m.Sequence
		case errors.Is(gerr, jetstream.ErrMsgNotFound):
			info, ierr := c.hist.Info(ctx)
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
	if c.hist == nil {
		m.Subject = MsgPrefix + Token(channel)
		if err := c.nc.PublishMsg(m); err != nil {
			return 0, fmt.Errorf("cluster: publish to %q: %w", channel, err)
		}
		return 0, nil
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
	if c.hist == nil {
		return nil, false, nil
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
		m, err := c.hist.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
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
		info, err := c.hist.Info(ctx)
		if err != nil {
			return nil, false, fmt.Errorf("cluster: history of %q: %w", channel, err)
		}
		_, err = c.hist.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
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
	if c.hist == nil {
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
	subj := HistPrefix + Token(channel)
	next := last + 1
	for next < seq {
		m, err := c.hist.GetMsg(ctx, next, jetstream.WithGetMsgSubject(subj))
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
