// Package clustere2e runs the broker as a cluster on real components: a
// three-server NATS cluster (the nats-server module, loopback ports,
// cluster routes, JetStream on temporary store dirs) and three broker
// nodes in process, each with its event log and its broker/cluster bus
// connected to the NATS cluster by URL.
package clustere2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/broker/cluster"
	"github.com/wsbroker/wsbroker/broker/eventlog"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var testSecret = []byte("e2e-cluster-secret-0123456789abcdef-0123456789")

// natsCluster is a three-server NATS cluster with JetStream.
type natsCluster struct {
	servers []*server.Server
	urls    []string
}

func startNATSCluster(t testing.TB, n int) *natsCluster {
	t.Helper()
	client := testkit.FreePorts(t, n)
	routes := testkit.FreePorts(t, n)
	var routeURLs []*url.URL
	for _, p := range routes {
		routeURLs = append(routeURLs, &url.URL{Scheme: "nats", Host: "127.0.0.1:" + strconv.Itoa(p)})
	}
	nc := &natsCluster{}
	for i := range n {
		ns, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("nats-%d", i),
			Host:       "127.0.0.1",
			Port:       client[i],
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			NoLog:      true,
			Cluster: server.ClusterOpts{
				Name: "wsbroker-e2e",
				Host: "127.0.0.1",
				Port: routes[i],
			},
			Routes: routeURLs,
		})
		if err != nil {
			t.Fatalf("nats server %d: %v",
				i, err)
		}
		ns.Start()
		nc.servers = append(nc.servers, ns)
		nc.urls = append(nc.urls, fmt.Sprintf("nats://127.0.0.1:%d", client[i]))
	}
	t.Cleanup(func() {
		for _, ns := range nc.servers {
			ns.Shutdown()
			ns.WaitForShutdown()
		}
	})
	for i, ns := range nc.servers {
		if !ns.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats server %d not ready",
				i)
		}
	}
	// JetStream is usable once the meta group has a leader: an R3 stream
	// can then be created.
	conn, err := nats.Connect(nc.urls[0])
	if err != nil {
		t.Fatalf("connect: %v",
			err)
	}
	defer conn.Close()
	js, err := jetstream.New(conn)
	if err != nil {
		t.Fatalf("jetstream: %v",
			err)
	}
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "PROBE", Subjects: []string{"probe.>"}, Replicas: 3}); err != nil {
			return err
		}
		return js.DeleteStream(ctx, "PROBE")
	})
	return nc
}

// stop shuts server i down.
func (c *natsCluster) stop(i int) {
	c.servers[i].Shutdown()
	c.servers[i].WaitForShutdown()
}

// node is one broker node: server, event log and cluster bus.
type node struct {
	name    string
	srv     *broker.Server
	addr    string
	log     *eventlog.Log
	cl      *cluster.Cluster
	reg     *prometheus.Registry
	stopped bool
}

type nodeOpts struct {
	history int
	lease   time.Duration
}

func startNode(t testing.TB, nc *natsCluster, name string, o nodeOpts) *node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ex, err := authn.NewExtractor(authn.DefaultExtractConfig())
	if err != nil {
		t.Fatalf("extractor: %v",
			err)
	}
	vctx, vcancel := context.WithCancel(context.Background())
	t.Cleanup(vcancel)
	ver, err := authn.NewVerifier(vctx, authn.VerifyConfig{HMACSecret: testSecret})
	if err != nil {
		t.Fatalf("verifier: %v",
			err)
	}
	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg, "test")
	epoch := uint64(time.Now().UnixNano())
	sink := event.Sinks{m}
	var (
		l  *eventlog.Log
		cl *cluster.Cluster
	)
	if nc != nil {
		l, err = eventlog.Open(ctx, eventlog.Config{
			NATSURLs: nc.urls,
			Node:     name,
			Replicas: 3,
			Logger:   logger(name, "eventlog"),
		})
		if err != nil {
			t.Fatalf("event log of %s: %v",
				name, err)
		}
		sink = append(sink, l)
		cl, err = cluster.Open(ctx, cluster.Config{
			NATSURLs:        nc.urls,
			Node:            name,
			Epoch:           epoch,
			HistoryMessages: o.history,
			Replicas:        3,
			Lease:           o.lease,
			Sink:            sink,
			Present:         presentOf(l),
			Logger:          logger(name, "cluster"),
		})
		if err != nil {
			t.Fatalf("cluster of %s: %v",
				name, err)
		}
		started := eventlog.NodeEvent(event.TypeNodeStarted, name, epoch, time.Now())
		sink.Observe(ctx, &started)
	}
	var bus broker.Bus
	if cl != nil {
		bus = cl
	}
	cfg := broker.DefaultConfig()
	cfg.Node = name
	cfg.ShutdownDrain = 5 * time.Second
	srv, err := broker.New(cfg, broker.Deps{
		Extractor: ex,
		Verifier:  ver,
		Metrics:   m,
		Sink:      sink,
		Epoch:     epoch,
		Bus:       bus,
	})
	if err != nil {
		t.Fatalf("broker %s: %v",
			name, err)
	}
	ln, err := broker.Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	go srv.Serve(ln)
	n := &node{name: name, srv: srv, addr: ln.Addr().String(), log: l, cl: cl, reg: reg}
	t.Cleanup(func() { n.stop(t, true) })
	return n
}

// logger logs warnings of a node's component to stderr (shown when a test
// fails).
func logger(node, component string) *slog.Logger {
	h := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})
	return slog.New(h).With("node", node, "component", component)
}

// presentOf lists the runs with open connections in l's presence.
func presentOf(l *eventlog.Log) func() []cluster.NodeEpoch {
	return func() []cluster.NodeEpoch {
		var out []cluster.NodeEpoch
		for _, c := range l.Projection().Connections("") {
			out = append(out, cluster.NodeEpoch{Node: c.Node, Epoch: c.Epoch})
		}
		return out
	}
}

// stop stops the node: gracefully (connections closed and recorded, then
// the bus and the log), or as a crash: the lease stops being renewed and the
// log is closed before the connections are, so that no close reaches the
// log.
func (n *node) stop(t testing.TB, graceful bool) {
	t.Helper()
	if n.stopped {
		return
	}
	n.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !graceful {
		n.cl.Close()
		_ = n.log.Close(ctx)
	}
	if err := n.srv.Close(); err != nil {
		t.Errorf("close %s: %v",
			n.name, err)
	}
	if graceful && n.cl != nil {
		n.cl.Close()
		_ = n.log.Close(ctx)
	}
}

// openConns returns the open connections of node name in n's presence.
func (n *node) openConns(name string) int {
	k := 0
	for _, c := range n.log.Projection().Connections("") {
		if c.Node == name {
			k++
		}
	}
	return k
}

func token(t testing.TB, sub string) string {
	t.Helper()
	now := time.Now()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":      sub,
		"exp":      now.Add(time.Hour).Unix(),
		"iat":      now.Unix(),
		"channels": []string{"*"},
	}).SignedString(testSecret)
	if err != nil {
		t.Fatalf("sign: %v",
			err)
	}
	return s
}

// client is a wsbroker.v1 client.
type client struct {
	t    testing.TB
	c    net.Conn
	br   *bufio.Reader
	seq  int
	next []map[string]any
	buf  []byte
}

func dial(t testing.TB, addr, sub string) *client {
	t.Helper()
	d := ws.Dialer{
		Protocols: []string{"wsbroker.v1"},
		Header:    ws.HandshakeHeaderString("Authorization: Bearer " + token(t, sub) + "\r\n"),
		Timeout:   5 * time.Second,
	}
	c, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/ws")
	if err != nil {
		t.Fatalf("dial %s: %v",
			addr, err)
	}
	if br == nil {
		br = bufio.NewReader(c)
	}
	cl := &client{t: t, c: c, br: br}
	t.Cleanup(func() { c.Close() })
	return cl
}

func (c *client) close() { c.c.Close() }

func (c *client) send(v map[string]any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatalf("marshal: %v",
			err)
	}
	_ = c.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := wsutil.WriteClientText(c.c, b); err != nil {
		c.t.Fatalf("send: %v",
			err)
	}
}

// read returns the next frame, or an error after d.
func (c *client) read(d time.Duration) (map[string]any, error) {
	if len(c.next) > 0 {
		m := c.next[0]
		c.next = c.next[1:]
		return m, nil
	}
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			return nil, err
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return nil, err
		}
		if h.OpCode.IsControl() {
			if h.OpCode == ws.OpClose {
				return nil, errors.New("closed by the server")
			}
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(p, &m); err != nil {
			return nil, fmt.Errorf("frame %q: %w", p, err)
		}
		return m, nil
	}
}

// readFrame returns the payload of the next data frame, in a buffer reused
// by the next call.
func (c *client) readFrame(d time.Duration) ([]byte, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			return nil, err
		}
		if int64(cap(c.buf)) < h.Length {
			c.buf = make([]byte, h.Length)
		}
		p := c.buf[:h.Length]
		if _, err := io.ReadFull(c.br, p); err != nil {
			return nil, err
		}
		if h.OpCode == ws.OpClose {
			return nil, errors.New("closed by the server")
		}
		if !h.OpCode.IsControl() {
			return p, nil
		}
	}
}

// request sends v with a fresh id and returns the ack or error answering it;
// messages read meanwhile are kept for read.
func (c *client) request(v map[string]any) map[string]any {
	c.t.Helper()
	c.seq++
	id := float64(c.seq)
	v["id"] = id
	c.send(v)
	var kept []map[string]any
	defer func() { c.next = append(c.next, kept...) }()
	for {
		m, err := c.readRaw(10 * time.Second)
		if err != nil {
			c.t.Fatalf("waiting for the answer to %v: %v",
				v, err)
		}
		if m["id"] == id {
			return m
		}
		kept = append(kept, m)
	}
}

func (c *client) readRaw(d time.Duration) (map[string]any, error) {
	saved := c.next
	c.next = nil
	defer func() { c.next = saved }()
	return c.read(d)
}

func (c *client) subscribe(channel string, since *uint64) map[string]any {
	c.t.Helper()
	v := map[string]any{"type": "subscribe", "channel": channel}
	if since != nil {
		v["since"] = *since
	}
	a := c.request(v)
	if a["type"] != "ack" {
		c.t.Fatalf("subscribe %s: %v",
			channel, a)
	}
	return a
}

// publish publishes data and returns the offset in the ack.
func (c *client) publish(channel string, data any) uint64 {
	c.t.Helper()
	a := c.request(map[string]any{"type": "publish", "channel": channel, "data": data})
	if a["type"] != "ack" {
		c.t.Fatalf("publish %s: %v",
			channel, a)
	}
	off, _ := a["offset"].(float64)
	return uint64(off)
}

// message is a received channel message.
type message struct {
	Channel string
	Offset  uint64
	Data    any
}

// nextMessage returns the next message frame within d.
func (c *client) nextMessage(d time.Duration) (message, error) {
	deadline := time.Now().Add(d)
	for {
		m, err := c.read(time.Until(deadline))
		if err != nil {
			return message{}, err
		}
		if m["type"] != "message" {
			continue
		}
		off, _ := m["offset"].(float64)
		ch, _ := m["channel"].(string)
		return message{Channel: ch, Offset: uint64(off), Data: m["data"]}, nil
	}
}
