// Command holdconns measures the broker's memory per idle authenticated
// connection: it reads the broker's RSS and Go heap from /metrics, opens N
// connections (token in the subprotocol, from several 127.0.0.x source
// addresses so that ephemeral ports never run short), waits for the broker
// to count them, reads the metrics again and prints the difference per
// connection. It runs as its own process: the open-file limit (20,000 here)
// is per process, and the broker holds the other end of every socket.
//
//	go run ./bench/holdconns -url ws://127.0.0.1:8080/ws -admin http://127.0.0.1:9090 -token "$TOKEN" -n 10000
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:8080/ws", "broker WebSocket URL")
	admin := flag.String("admin", "http://127.0.0.1:9090", "broker admin URL")
	token := flag.String("token", "", "token (subprotocol bearer.<token>)")
	n := flag.Int("n", 10000, "connections to hold")
	sources := flag.Int("sources", 4, "127.0.0.x source addresses to spread over")
	fanout := flag.Int("fanout", 0, "after measuring memory, subscribe every connection to one channel and publish this many messages, reporting delivery latency")
	flag.Parse()
	if err := run(*url, *admin, *token, *n, *sources, *fanout); err != nil {
		fmt.Fprintln(os.Stderr, "holdconns:", err)
		os.Exit(1)
	}
}

func run(url, admin, token string, n, sources, fanout int) error {
	before, err := scrape(admin)
	if err != nil {
		return err
	}
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		src := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%sources))}
		d := ws.Dialer{
			Protocols: []string{"wsbroker.v1", "bearer." + token},
			Timeout:   10 * time.Second,
			NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				nd := net.Dialer{LocalAddr: src}
				return nd.DialContext(ctx, network, addr)
			},
		}
		c, _, _, err := d.Dial(context.Background(), url)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
	}
	dialTime := time.Since(start)
	deadline := time.Now().Add(30 * time.Second)
	var after map[string]float64
	for {
		after, err = scrape(admin)
		if err != nil {
			return err
		}
		if after["wsbroker_connections"] >= before["wsbroker_connections"]+float64(n) || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Let the runtime settle: the heap figure is what is live, not garbage
	// of the handshakes.
	time.Sleep(2 * time.Second)
	if after, err = scrape(admin); err != nil {
		return err
	}
	held := after["wsbroker_connections"] - before["wsbroker_connections"]
	rss := after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]
	heap := after["go_memstats_heap_inuse_bytes"] - before["go_memstats_heap_inuse_bytes"]
	stack := after["go_memstats_stack_inuse_bytes"] - before["go_memstats_stack_inuse_bytes"]
	gor := after["go_goroutines"] - before["go_goroutines"]
	fmt.Printf("connections held: %.0f (dialled in %s)\n", held, dialTime.Round(time.Millisecond))
	fmt.Printf("RSS per connection:        %7.0f B\n", rss/held)
	fmt.Printf("Go heap per connection:    %7.0f B\n", heap/held)
	fmt.Printf("Go stacks per connection:  %7.0f B\n", stack/held)
	fmt.Printf("goroutines per connection: %7.3f\n", gor/held)
	if fanout > 0 {
		return fanOut(conns, fanout)
	}
	return nil
}

// fanOut subscribes every connection to "bench", then publishes msgs
// messages one at a time from the first connection, each carrying its send
// time, and reports deliveries/s and the p50/p99 delivery latency.
func fanOut(conns []net.Conn, msgs int) error {
	for i, c := range conns {
		if err := wsutil.WriteClientText(c, []byte(`{"type":"subscribe","channel":"bench","id":1}`)); err != nil {
			return fmt.Errorf("subscribe %d: %w", i, err)
		}
	}
	lat := make(chan time.Duration, len(conns)*msgs)
	errc := make(chan error, len(conns))
	for _, c := range conns {
		go func(c net.Conn) {
			// Skip the subscribe ack (and the publisher's acks), then
			// time each message.
			got := 0
			for got < msgs {
				_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
				data, err := wsutil.ReadServerText(c)
				if err != nil {
					errc <- err
					return
				}
				var m struct {
					Type string `json:"type"`
					Data int64  `json:"data"`
				}
				if json.Unmarshal(data, &m) != nil || m.Type != "message" {
					continue
				}
				lat <- time.Since(time.Unix(0, m.Data))
				got++
			}
			errc <- nil
		}(c)
	}
	time.Sleep(2 * time.Second) // every subscribe handled before the first publish
	start := time.Now()
	for i := 0; i < msgs; i++ {
		msg := fmt.Sprintf(`{"type":"publish","channel":"bench","data":%d}`, time.Now().UnixNano())
		if err := wsutil.WriteClientText(conns[0], []byte(msg)); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for range conns {
		if err := <-errc; err != nil {
			return fmt.Errorf("subscriber: %w", err)
		}
	}
	elapsed := time.Since(start)
	close(lat)
	var all []time.Duration
	for d := range lat {
		all = append(all, d)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	fmt.Printf("fan-out: %d messages to %d subscribers, %d deliveries in %s\n", msgs, len(conns), len(all), elapsed.Round(time.Millisecond))
	fmt.Printf("delivery latency p50 %s  p99 %s  max %s\n", all[len(all)/2].Round(time.Microsecond), all[len(all)*99/100].Round(time.Microsecond), all[len(all)-1].Round(time.Microsecond))
	// Throughput of one burst: the last delivery of a message after its send.
	fmt.Printf("deliveries/s within a burst: %.0f\n", float64(len(conns))/all[len(all)-1].Seconds())
	return nil
}

// scrape reads the gauges it needs from the broker's /metrics.
func scrape(admin string) (map[string]float64, error) {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	want := map[string]bool{
		"wsbroker_connections": true, "process_resident_memory_bytes": true,
		"go_memstats_heap_inuse_bytes": true, "go_memstats_stack_inuse_bytes": true, "go_goroutines": true,
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 || !want[f[0]] {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err == nil {
			out[f[0]] = v
		}
	}
	return out, sc.Err()
}
