package faults

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// burstConn is one upgraded connection of the burst and what ended it.
type burstConn struct {
	conn *wsConn
	done chan struct{}
	code ws.StatusCode
	err  error
}

// watch reads the connection until the server's close frame.
func (c *burstConn) watch() {
	defer close(c.done)
	c.code, c.err = c.conn.closeCode(60 * time.Second)
	c.conn.Close()
}

// TestSIGTERMDuringBurst: SIGTERM while clients keep upgrading and
// publishing. The process exits 0 within the drain bound; every connection
// that was upgraded gets a 1001 (going away) close; and every connection
// the broker accepted is in its event log with its close, followed by
// node.stopped: nothing accepted before the exit is lost.
func TestSIGTERMDuringBurst(t *testing.T) {
	const (
		initial  = 200
		dialers  = 4
		drain    = 5 * time.Second
		pubEvery = 2 * time.Millisecond
	)
	b := startBroker(t, brokerOpts{args: []string{"--shutdown-drain", drain.String()}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var (
		mu    sync.Mutex
		conns []*burstConn
	)
	open := func(sub string) error {
		a, err := upgrade(ctx, b.wsAddr, hsToken(t, sub))
		if err != nil {
			return err
		}
		if a.status != http.StatusSwitchingProtocols {
			return fmt.Errorf("upgrade answered %d %s", a.status, a.reason)
		}
		c := &burstConn{conn: a.conn, done: make(chan struct{})}
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
		if err := a.conn.send(map[string]any{"type": "subscribe", "channel": "burst", "id": 1}); err != nil {
			// The server may be closing it already: the close is checked
			// below like any other.
			t.Logf("subscribe %s: %v", sub, err)
		}
		go c.watch()
		return nil
	}
	for i := range initial {
		if err := open(fmt.Sprintf("initial-%d", i)); err != nil {
			t.Fatalf("upgrade %d: %v",
				i, err)
		}
	}

	// The burst: dialers keep upgrading, publishers keep publishing, until
	// the broker is gone.
	var (
		wg        sync.WaitGroup
		stopBurst = make(chan struct{})
		upgraded  atomic.Int64
		published atomic.Int64
	)
	for d := range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stopBurst:
					return
				default:
				}
				if open(fmt.Sprintf("burst-%d-%d", d, i)) == nil {
					upgraded.Add(1)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(pubEvery)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-stopBurst:
				return
			case <-tick.C:
			}
			mu.Lock()
			c := conns[i%len(conns)]
			mu.Unlock()
			if c.conn.send(map[string]any{"type": "publish", "channel": "burst", "data": map[string]int{"n": i}}) == nil {
				published.Add(1)
			}
		}
	}()
	testkit.CheckFor(t, 20*time.Second, 20*time.Millisecond, func() error {
		if u, p := upgraded.Load(), published.Load(); u < 100 || p < 100 {
			return fmt.Errorf("burst running: %d upgrades, %d publishes so far", u, p)
		}
		return nil
	})

	sent := time.Now()
	b.signal(syscall.SIGTERM)
	code := b.wait(drain + 15*time.Second)
	took := time.Since(sent)
	close(stopBurst)
	wg.Wait()
	if code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0:\n%s",
			code, b.stderr.String())
	}
	// The drain bound, plus the event log's bounded flush.
	if took > drain+10*time.Second {
		t.Fatalf("exit took %s, want within the drain (%s) plus the flush",
			took, drain)
	}

	mu.Lock()
	all := conns
	mu.Unlock()
	codes := map[ws.StatusCode]int{}
	for i, c := range all {
		<-c.done
		if c.err != nil {
			t.Errorf("connection %d of %d ended without a close frame: %v",
				i, len(all), c.err)
			continue
		}
		codes[c.code]++
	}
	if codes[ws.StatusGoingAway] != len(all) {
		t.Fatalf("close codes %v over %d upgraded connections, want every one 1001",
			codes, len(all))
	}

	evs := readEvents(t, b.dataDir)
	byType := map[string]int{}
	openedIDs := map[string]bool{}
	closedIDs := map[string]string{}
	for _, e := range evs {
		byType[e.Type]++
		switch e.Type {
		case "wsbroker.connection.opened":
			openedIDs[e.connID()] = true
		case "wsbroker.connection.closed":
			closedIDs[e.connID()] = fmt.Sprint(e.Data["close_reason"])
		}
	}
	t.Logf("SIGTERM after %d upgrades and %d publishes; exit in %s; events by type %v",
		len(all), published.Load(), took.Round(time.Millisecond), byType)
	if len(openedIDs) != len(all) {
		t.Fatalf("%d connection.opened events, want one per upgraded connection (%d)",
			len(openedIDs), len(all))
	}
	reasons := map[string]int{}
	for id := range openedIDs {
		r, ok := closedIDs[id]
		if !ok {
			t.Errorf("connection %s opened without a connection.closed event",
				id)
			continue
		}
		reasons[r]++
	}
	if reasons["server_shutdown"] != len(all) {
		t.Fatalf("close reasons %v, want server_shutdown for all %d",
			reasons, len(all))
	}
	if byType["wsbroker.node.stopped"] != 1 || byType["wsbroker.node.started"] != 1 {
		t.Fatalf("node events %v, want one started and one stopped",
			byType)
	}
	if last := evs[len(evs)-1].Type; last != "wsbroker.node.stopped" {
		t.Fatalf("last event %s, want wsbroker.node.stopped",
			last)
	}
}
