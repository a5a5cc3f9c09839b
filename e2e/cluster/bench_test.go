package clustere2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// BenchmarkFanout publishes b.N messages from one client on node 0 to
// subscribers spread over the nodes and reports the publish rate, the
// deliveries per second and the publish-to-receive latency (p50, p99), with
// 150 subscribers in all. single-node: one node, no NATS; 3-nodes: three
// nodes (50 subscribers each) on a three-server NATS cluster, live (core
// NATS) or with history (stored in the R3 history stream before fan-out).
// window-64 keeps up to 64 publishes unacknowledged (throughput),
// window-1 publishes one at a time (latency).
//
//	go test -run '^$' -bench Fanout -benchtime 1000x ./e2e/cluster/
func BenchmarkFanout(b *testing.B) {
	const subscribers = 150
	cases := []struct {
		name    string
		nodes   int
		history int
	}{
		{
			name:  "single-node",
			nodes: 1,
		},
		{
			name:  "3-nodes-live",
			nodes: 3,
		},
		{
			name:    "3-nodes-history",
			nodes:   3,
			history: 100,
		},
	}
	for _, tc := range cases {
		for _, window := range []int{64, 1} {
			b.Run(fmt.Sprintf("%s/window-%d", tc.name, window), func(b *testing.B) {
				// The brokers run in this process: allocs/op counts theirs
				// and the clients' per published message.
				b.ReportAllocs()
				var nodes []*node
				if tc.nodes == 1 {
					nodes = append(nodes, startNode(b, nil, "bench-single", nodeOpts{}))
				} else {
					nc := startNATSCluster(b, 3)
					for i := range tc.nodes {
						nodes = append(nodes, startNode(b, nc, fmt.Sprintf("bench-%d", i), nodeOpts{history: tc.history}))
					}
				}
				runFanout(b, nodes, subscribers/tc.nodes, window)
			})
		}
	}
}

type benchMsg struct {
	I     int   `json:"i"`
	T     int64 `json:"t,omitempty"`
	Probe int   `json:"probe,omitempty"`
}

// field reads the integer after key in a frame, 0 if absent.
func field(f []byte, key string) int64 {
	i := bytes.Index(f, []byte(key))
	if i < 0 {
		return 0
	}
	var n int64
	for _, c := range f[i+len(key):] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
	}
	return n
}

// runFanout publishes with at most window publishes unacknowledged: 64
// measures throughput, 1 the latency of one message at a time.
func runFanout(b *testing.B, nodes []*node, subsPerNode, window int) {
	channel := "bench.fanout"
	var subs []*client
	for _, n := range nodes {
		for k := range subsPerNode {
			c := dial(b, n.addr, fmt.Sprintf("sub-%d", k))
			c.subscribe(channel, nil)
			subs = append(subs, c)
		}
	}
	pub := dial(b, nodes[0].addr, "publisher")

	var (
		probed  atomic.Int64
		wg      sync.WaitGroup
		mu      sync.Mutex
		lats    []time.Duration
		errs    []error
		started = make(chan struct{})
	)
	total := b.N
	for _, c := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sawProbe := false
			got := 0
			mine := make([]time.Duration, 0, total)
			for got < total {
				f, err := c.readFrame(60 * time.Second)
				if err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("subscriber got %d of %d: %w", got, total, err))
					mu.Unlock()
					return
				}
				if !bytes.HasPrefix(f, []byte(`{"type":"message"`)) {
					continue
				}
				if bytes.Contains(f, []byte(`"probe":`)) {
					if !sawProbe {
						sawProbe = true
						probed.Add(1)
					}
					continue
				}
				select {
				case <-started:
				default:
					continue
				}
				sent := field(f, `"t":`)
				mine = append(mine, time.Duration(time.Now().UnixNano()-sent))
				got++
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		}()
	}
	// Acks of the publisher, counted to bound the publishes in flight.
	var acked atomic.Int64
	inFlight := make(chan struct{}, window)
	ackDone := make(chan struct{})
	go func() {
		defer close(ackDone)
		for {
			m, err := pub.read(60 * time.Second)
			if err != nil {
				return
			}
			if m["type"] == "ack" {
				acked.Add(1)
				select {
				case <-inFlight:
				default:
				}
			}
		}
	}()
	send := func(v benchMsg) {
		p, _ := json.Marshal(map[string]any{"type": "publish", "channel": channel, "data": v})
		_ = pub.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := wsutil.WriteClientText(pub.c, p); err != nil {
			b.Fatalf("publish: %v",
				err)
		}
	}
	// Interest crosses the NATS routes asynchronously: probe until every
	// subscriber has seen a probe.
	sent := 0
	testkit.CheckFor(b, 30*time.Second, 50*time.Millisecond, func() error {
		sent++
		send(benchMsg{Probe: sent})
		if n := probed.Load(); n < int64(len(subs)) {
			return fmt.Errorf("%d of %d subscribers reached", n, len(subs))
		}
		return nil
	})
	testkit.CheckFor(b, 30*time.Second, time.Millisecond, func() error {
		if n := acked.Load(); n < int64(sent) {
			return fmt.Errorf("%d of %d probes acked", n, sent)
		}
		return nil
	})
	close(started)
	b.ResetTimer()
	start := time.Now()
	for i := range total {
		inFlight <- struct{}{}
		send(benchMsg{I: i + 1, T: time.Now().UnixNano()})
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	pub.close()
	<-ackDone
	if len(errs) > 0 {
		b.Fatalf("%d subscribers failed, first: %v",
			len(errs), errs[0])
	}
	slices.Sort(lats)
	pct := func(p float64) float64 {
		return float64(lats[int(p*float64(len(lats)-1))].Microseconds()) / 1000
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(float64(total*len(subs))/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(len(subs)), "subscribers")
}
