package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// lockedBuffer is a bytes.Buffer safe for the broker's log writer and the
// test reading it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func eventsCheckFor(t *testing.T, d time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("checkFor %s: %v",
				d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serve runs `wsbroker serve` with the event log on dataDir and returns the
// admin address and a stop function that waits for the command to return.
func serveWithEvents(t *testing.T, dataDir string, extra ...string) (ws, admin, token string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr, stdout := &lockedBuffer{}, &lockedBuffer{}
	root := newRoot()
	root.SetArgs(append([]string{
		"serve", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--data-dir", dataDir, "--log-format", "json", "--node-id", "cmd-test", "--shutdown-drain", "1s",
	}, extra...))
	root.SetOut(stdout)
	root.SetErr(stderr)
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	eventsCheckFor(t, 30*time.Second, func() error {
		select {
		case err := <-done:
			t.Fatalf("serve returned early: %v: %s",
				err, stderr.String())
		default:
		}
		sc := bufio.NewScanner(strings.NewReader(stderr.String()))
		for sc.Scan() {
			var l struct {
				Msg   string `json:"msg"`
				WS    string `json:"ws"`
				Admin string `json:"admin"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "wsbroker started" {
				ws, admin = l.WS, l.Admin
			}
		}
		// The --dev banner's token is on the line after "A token for".
		lines := strings.Split(stdout.String(), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "A token for") && i+1 < len(lines) {
				token = strings.TrimSpace(lines[i+1])
			}
		}
		if admin == "" || token == "" {
			return fmt.Errorf("no start line or token yet")
		}
		return nil
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v: %s",
					err, stderr.String())
			}
		})
	}
	// Also on a failed test: other tests of the package check for leaked
	// goroutines.
	t.Cleanup(stop)
	return ws, admin, token, stop
}

// httpGet does not keep the connection alive: an idle keep-alive would
// outlive the test as goroutines.
func httpGet(url string) (*http.Response, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	return c.Get(url)
}

func TestServeEventLogAndEventsCommand(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	_, admin, _, stop := serveWithEvents(t, dataDir)
	// The start is appended asynchronously: poll.
	eventsCheckFor(t, 10*time.Second, func() error {
		var recs []json.RawMessage
		getJSON(t, "http://"+admin+"/v1/events?type=node.started", &recs)
		if len(recs) != 1 || !strings.Contains(string(recs[0]), `"wsbroker.node.started"`) {
			return fmt.Errorf("/v1/events?type=node.started: %s", recs)
		}
		return nil
	})
	stop()

	tests := []struct {
		name string
		args []string
		want []string
	}{
		{
			name: "query table",
			args: []string{"events", "query", "--data-dir", dataDir},
			want: []string{"SEQ", "node.started", "node.stopped", "cmd-test"},
		},
		{
			name: "query json by type",
			args: []string{"events", "query", "--data-dir", dataDir, "--type", "node.stopped", "--json"},
			want: []string{`"type": "wsbroker.node.stopped"`, `"sequence": "2"`},
		},
		{
			name: "replay with summary",
			args: []string{"events", "replay", "--data-dir", dataDir, "--summary"},
			want: []string{"node.started", "presence at seq 2: 0 open connections"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			root := newRoot()
			root.SetArgs(tt.args)
			root.SetOut(&out)
			root.SetErr(io.Discard)
			if err := root.ExecuteContext(context.Background()); err != nil {
				t.Fatalf("%v: %v",
					tt.args, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("%v: output lacks %q:\n%s",
						tt.args, w, out.String())
				}
			}
		})
	}

	root := newRoot()
	root.SetArgs([]string{"events", "query", "--data-dir", dataDir, "--since", "yesterday"})
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "since") {
		t.Errorf("bad --since: %v, want an error naming since",
			err)
	}
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := httpGet(url)
	if err != nil {
		t.Fatalf("GET %s: %v",
			url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s",
			url, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v in %s",
			url, err, b)
	}
}

// A real connection and subscription show in presence, through the broker's
// events, the log and the projection; closing it removes them.
func TestServePresence(t *testing.T) {
	wsAddr, admin, token, stop := serveWithEvents(t, filepath.Join(t.TempDir(), "data"))
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := ws.Dialer{
		Protocols: []string{"wsbroker.v1"},
		Header:    ws.HandshakeHeaderHTTP(http.Header{"Authorization": []string{"Bearer " + token}}),
	}
	conn, _, _, err := d.Dial(ctx, "ws://"+wsAddr+"/ws")
	if err != nil {
		t.Fatalf("dial: %v",
			err)
	}
	if err := wsutil.WriteClientText(conn, []byte(`{"type":"subscribe","channel":"news","id":1}`)); err != nil {
		t.Fatalf("subscribe: %v",
			err)
	}
	eventsCheckFor(t, 10*time.Second, func() error {
		var p struct {
			Connections int            `json:"connections"`
			Subjects    map[string]int `json:"subjects"`
		}
		getJSON(t, "http://"+admin+"/v1/presence?channel=news", &p)
		if p.Connections != 1 || p.Subjects["dev-user"] != 1 {
			return fmt.Errorf("presence in news %+v, want dev-user", p)
		}
		return nil
	})
	var cs []struct {
		Subject  string   `json:"sub"`
		Node     string   `json:"node"`
		Channels []string `json:"channels"`
	}
	getJSON(t, "http://"+admin+"/v1/connections?sub=dev-user", &cs)
	if len(cs) != 1 || cs[0].Node != "cmd-test" || len(cs[0].Channels) != 1 || cs[0].Channels[0] != "news" {
		t.Errorf("connections %+v",
			cs)
	}
	conn.Close()
	eventsCheckFor(t, 10*time.Second, func() error {
		var p struct {
			Connections int `json:"connections"`
		}
		getJSON(t, "http://"+admin+"/v1/presence", &p)
		if p.Connections != 0 {
			return fmt.Errorf("presence %+v after close, want none", p)
		}
		return nil
	})
}

// With --nats-url the broker appends to a shared NATS, and `events tail`
// reads it there while the broker runs.
func TestServeEventsOverNATSURL(t *testing.T) {
	url := testkit.StartNATS(t, server.Options{JetStream: true}).ClientURL()

	_, _, _, stop := serveWithEvents(t, filepath.Join(t.TempDir(), "unused"), "--nats-url", url)
	defer stop()

	var out bytes.Buffer
	root := newRoot()
	root.SetArgs([]string{"events", "tail", "--nats-url", url, "--since", "1", "--limit", "1", "--type", "node.started", "--json"})
	root.SetOut(&out)
	root.SetErr(io.Discard)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("events tail: %v",
			err)
	}
	if !strings.Contains(out.String(), `"type":"wsbroker.node.started"`) || !strings.Contains(out.String(), `"source":"wsbroker/cmd-test"`) {
		t.Fatalf("events tail printed %s",
			out.String())
	}
}
