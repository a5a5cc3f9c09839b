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
func serveWithEvents(t *testing.T, dataDir string) (admin string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stderr := &lockedBuffer{}
	root := newRoot()
	root.SetArgs([]string{
		"serve", "--dev", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
		"--data-dir", dataDir, "--log-format", "json", "--node-id", "cmd-test", "--shutdown-drain", "1s",
	})
	root.SetOut(io.Discard)
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
				Admin string `json:"admin"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "wsbroker started" {
				admin = l.Admin
				return nil
			}
		}
		return fmt.Errorf("no start line yet")
	})
	return admin, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v: %s",
				err, stderr.String())
		}
	}
}

func TestServeEventLogAndEventsCommand(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	admin, stop := serveWithEvents(t, dataDir)
	resp, err := http.Get("http://" + admin + "/v1/events?type=node.started")
	if err != nil {
		t.Fatalf("GET /v1/events: %v",
			err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"wsbroker.node.started"`) {
		t.Fatalf("GET /v1/events: %d %s",
			resp.StatusCode, body)
	}
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
