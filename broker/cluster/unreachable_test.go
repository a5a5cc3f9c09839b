package cluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/internal/testkit"
)

// startNATSOn runs a NATS server with o on a fixed loopback port.
func startNATSOn(t *testing.T, port int, o server.Options) {
	t.Helper()
	o.Port = port
	testkit.StartNATS(t, o)
}

// TestOpenNATSUnreachable: the node opens while no NATS answers. Open
// succeeds; a watch made meanwhile takes effect when NATS comes (a message
// another node publishes then arrives); with history, a publish fails at
// once with ErrBusUnavailable rather than waiting, and succeeds once the
// history stream is set up; the lease is put.
func TestOpenNATSUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	port := testkit.FreePort(t)
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	open := func(node string, history int) *Cluster {
		t.Helper()
		begin := time.Now()
		c, err := Open(ctx, Config{NATSURLs: []string{url}, Node: node, Epoch: 1, HistoryMessages: history, Lease: time.Second})
		if err != nil {
			t.Fatalf("Open %s with NATS down: %v",
				node, err)
		}
		if took := time.Since(begin); took > 5*time.Second {
			t.Fatalf("Open %s took %s with NATS down",
				node, took)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	live := open("n1", 0)
	hist := open("n2", 5)
	if live.Ready() || hist.Ready() {
		t.Fatalf("Ready with NATS down")
	}
	got := make(chan string, 16)
	live.Start(func(channel string, _ uint64, data []byte) { got <- channel + " " + string(data) })
	live.Watch("news")
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	err := live.Sync(sctx, "news")
	scancel()
	if !errors.Is(err, broker.ErrBusUnavailable) {
		t.Fatalf("Sync with NATS down: %v, want ErrBusUnavailable",
			err)
	}
	if !hist.History() {
		t.Fatalf("History() false before the stream is set up")
	}
	begin := time.Now()
	_, err = hist.Publish(ctx, "news", []byte(`"early"`))
	if !errors.Is(err, broker.ErrBusUnavailable) || !strings.Contains(err.Error(), "NATS unreachable at "+url) {
		t.Fatalf("history Publish with NATS down: %v, want ErrBusUnavailable naming %s",
			err, url)
	}
	if took := time.Since(begin); took > time.Second {
		t.Fatalf("history Publish with NATS down took %s",
			took)
	}
	if _, _, err := hist.Recover(ctx, "news", 1); !errors.Is(err, broker.ErrBusUnavailable) {
		t.Fatalf("Recover with NATS down: %v, want ErrBusUnavailable",
			err)
	}

	startNATSOn(t, port, server.Options{JetStream: true})
	testkit.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if !live.Ready() || !hist.Ready() {
			return errors.New("not ready")
		}
		return live.Sync(ctx, "news")
	})
	for _, c := range []*Cluster{live, hist} {
		alive, err := c.alive(ctx, NodeEpoch{Node: c.cfg.Node, Epoch: 1})
		if err != nil || !alive {
			t.Fatalf("lease of %s: %v, %v",
				c.cfg.Node, alive, err)
		}
	}
	off, err := hist.Publish(ctx, "news", []byte(`"late"`))
	if err != nil || off == 0 {
		t.Fatalf("history Publish with NATS back: %d, %v",
			off, err)
	}
	// The watch made while NATS was down now receives what others publish.
	select {
	case m := <-got:
		if m != `news "late"` {
			t.Fatalf("delivered %q, want the late message",
				m)
		}
	case <-ctx.Done():
		t.Fatalf("the watch made with NATS down received nothing")
	}
}

// TestOpenNATSNeverComes: Close of a node whose NATS never answered
// returns at once and leaves no goroutine (goleak in TestMain).
func TestOpenNATSNeverComes(t *testing.T) {
	c, err := Open(t.Context(), Config{
		NATSURLs:        []string{fmt.Sprintf("nats://127.0.0.1:%d", testkit.FreePort(t))},
		Node:            "n1",
		Epoch:           1,
		HistoryMessages: 3,
	})
	if err != nil {
		t.Fatalf("Open with NATS down: %v",
			err)
	}
	c.Watch("a")
	begin := time.Now()
	c.Close()
	if took := time.Since(begin); took > 2*time.Second {
		t.Fatalf("Close took %s",
			took)
	}
}

// TestOpenNATSMisconfigured: a NATS that answers but is not usable as
// configured, or an unreadable credentials file, stops Open at once.
func TestOpenNATSMisconfigured(t *testing.T) {
	if _, err := NATSOptions(filepath.Join(t.TempDir(), "missing.creds"), ""); err == nil || !strings.Contains(err.Error(), "nats-creds") {
		t.Fatalf("NATSOptions with a missing creds file: %v, want an error naming nats-creds",
			err)
	}
	tests := []struct {
		name    string
		opts    server.Options
		history int
		want    string
	}{
		{
			name: "authorization",
			opts: server.Options{JetStream: true, Authorization: "s3cr3t"},
			want: "Authorization Violation",
		},
		{
			name:    "JetStream disabled",
			opts:    server.Options{},
			history: 3,
			want:    "JetStream is not enabled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			port := testkit.FreePort(t)
			startNATSOn(t, port, tt.opts)
			c, err := Open(t.Context(), Config{
				NATSURLs:        []string{fmt.Sprintf("nats://127.0.0.1:%d", port)},
				Node:            "n1",
				HistoryMessages: tt.history,
				Options:         []nats.Option{nats.Timeout(2 * time.Second)},
			})
			if err == nil {
				c.Close()
				t.Fatalf("Open succeeded, want an error with %q",
					tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Open: %v, want an error with %q",
					err, tt.want)
			}
		})
	}
}
