package faults

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// mountTmpfs mounts a tmpfs of size (mount's -o size=, e.g. "1m") on a new
// directory and unmounts it at cleanup. It skips the calling test when the
// mount is not permitted (not root, no CAP_SYS_ADMIN, a container's
// seccomp profile): those scenarios cannot be simulated without it.
func mountTmpfs(t *testing.T, size string, readOnly bool) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("mkdir: %v",
			err)
	}
	opts := "size=" + size
	if readOnly {
		opts += ",ro"
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("NOT TESTED: mount -t tmpfs -o %s is not permitted here (%v: %s); the scenario needs a small or read-only file system",
			opts, err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s",
				dir, err, out)
		}
	})
	return dir
}

// wantStartError runs a broker that must refuse to start: exit code 1 and
// every one of want in its error.
func wantStartError(t *testing.T, dataDir string, args []string, want ...string) {
	t.Helper()
	b := launch(t, brokerOpts{dataDir: dataDir, args: args})
	if code := b.wait(60 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1:\n%s",
			code, b.stderr.String())
	}
	stderr := b.stderr.String()
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Fatalf("stderr lacks %q:\n%s",
				w, stderr)
		}
	}
}

// TestDataDirUnusable: a data dir the broker cannot write stops it at start
// with an error naming --data-dir and the path, exit code 1, rather than a
// broker that runs and silently logs nothing.
func TestDataDirUnusable(t *testing.T) {
	tests := []struct {
		name    string
		dataDir func(t *testing.T) string
		want    []string
	}{
		{
			name: "under a regular file",
			dataDir: func(t *testing.T) string {
				f := filepath.Join(t.TempDir(), "file")
				if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
					t.Fatalf("write: %v",
						err)
				}
				return filepath.Join(f, "data")
			},
			want: []string{
				"wsbroker: data-dir",
				"is not writable",
				"not a directory",
			},
		},
		{
			name: "read-only file system",
			dataDir: func(t *testing.T) string {
				return mountTmpfs(t, "1m", true)
			},
			want: []string{
				"wsbroker: data-dir",
				"is not writable",
				"read-only file system",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.dataDir(t)
			want := append([]string{fmt.Sprintf("%q", dir)}, tt.want...)
			wantStartError(t, dir, nil, want...)
		})
	}
}

// TestDiskFullAtStart: a file system too small for --events-max-bytes is
// refused at start (JetStream reserves the stream's size), naming the flag.
func TestDiskFullAtStart(t *testing.T) {
	dir := mountTmpfs(t, "1m", false)
	wantStartError(t, filepath.Join(dir, "data"), nil,
		"wsbroker: data-dir",
		"events-max-bytes 1073741824",
		"insufficient storage")
}

// TestDiskFullWhileRunning: the disk fills up under a running broker. The
// broker keeps accepting and serving connections, counts what it cannot
// log (publish errors, queue depth), and still stops cleanly on SIGTERM.
func TestDiskFullWhileRunning(t *testing.T) {
	dir := mountTmpfs(t, "4m", false)
	b := startBroker(t, brokerOpts{
		dataDir: filepath.Join(dir, "data"),
		args:    []string{"--events-max-bytes", "1048576", "--shutdown-drain", "3s"},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Fill the rest of the file system.
	filler, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatalf("filler: %v",
			err)
	}
	chunk := make([]byte, 64<<10)
	for {
		if _, err := filler.Write(chunk); err != nil {
			break
		}
	}
	filler.Close()

	var opened []*wsConn
	defer func() {
		for _, c := range opened {
			c.Close()
		}
	}()
	for i := range 200 {
		a, err := upgrade(ctx, b.wsAddr, hsToken(t, fmt.Sprintf("full-%d", i)))
		if err != nil {
			t.Fatalf("upgrade %d with the disk full: %v",
				i, err)
		}
		if a.status != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade %d with the disk full: %d %s",
				i, a.status, a.reason)
		}
		if err := a.conn.send(map[string]any{"type": "subscribe", "channel": "news", "id": 1}); err != nil {
			t.Fatalf("subscribe %d: %v",
				i, err)
		}
		opened = append(opened, a.conn)
	}
	testkit.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		n, err := b.metric("wsbroker_connections")
		if err != nil {
			return err
		}
		if n != 200 {
			return fmt.Errorf("wsbroker_connections = %v, want 200", n)
		}
		return nil
	})
	// The events of those 200 connections (400 with the subscriptions)
	// could not all be stored: they wait in the queue or were counted as
	// errors; nothing hangs.
	testkit.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		depth, err := b.metric("wsbroker_event_queue_depth")
		if err != nil {
			return err
		}
		errs, err := b.metric("wsbroker_event_publish_errors_total")
		if err != nil {
			return err
		}
		if depth == 0 && errs == 0 {
			return fmt.Errorf("queue depth 0 and no publish error with a full disk")
		}
		return nil
	})
	if _, err := b.get("/healthz"); err != nil {
		t.Fatalf("healthz with a full disk: %v",
			err)
	}
	b.signal(os.Interrupt)
	// Drain (3s) plus the bounded flush of the event log (10s).
	if code := b.wait(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGINT with a full disk, want 0:\n%s",
			code, b.stderr.String())
	}
	t.Logf("broker stderr at exit:\n%s", lastLines(b.stderr.String(), 5))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
