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
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gobwas/ws"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:8080/ws", "broker WebSocket URL")
	admin := flag.String("admin", "http://127.0.0.1:9090", "broker admin URL")
	token := flag.String("token", "", "token (subprotocol bearer.<token>)")
	n := flag.Int("n", 10000, "connections to hold")
	sources := flag.Int("sources", 4, "127.0.0.x source addresses to spread over")
	flag.Parse()
	if err := run(*url, *admin, *token, *n, *sources); err != nil {
		fmt.Fprintln(os.Stderr, "holdconns:", err)
		os.Exit(1)
	}
}

func run(url, admin, token string, n, sources int) error {
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
