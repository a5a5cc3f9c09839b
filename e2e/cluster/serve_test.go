package clustere2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// serveProc is a running `wsbroker serve`.
type serveProc struct {
	cmd       *exec.Cmd
	stderr    *testkit.SyncBuffer
	done      chan struct{}
	ws, admin string
}

// buildWsbroker builds ./cmd/wsbroker into a temporary directory.
func buildWsbroker(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	bin := filepath.Join(t.TempDir(), "wsbroker")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/wsbroker")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/wsbroker: %v\n%s",
			err, out)
	}
	return bin
}

func startServe(t *testing.T, bin string, args ...string) *serveProc {
	t.Helper()
	p := &serveProc{stderr: &testkit.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, append([]string{
		"serve",
		"--listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0",
		"--log-format", "json",
		"--shutdown-drain", "2s",
	}, args...)...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WSBROKER_") && !strings.HasPrefix(kv, "OTEL_") {
			env = append(env, kv)
		}
	}
	p.cmd.Env = env
	p.cmd.Dir = t.TempDir()
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start wsbroker serve: %v",
			err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() { p.stop(syscall.SIGTERM) })
	testkit.CheckFor(t, 60*time.Second, 20*time.Millisecond, func() error {
		select {
		case <-p.done:
			return fmt.Errorf("wsbroker serve exited: %s", p.stderr.String())
		default:
		}
		sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
		for sc.Scan() {
			var l struct {
				Msg   string `json:"msg"`
				WS    string `json:"ws"`
				Admin string `json:"admin"`
			}
			if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "wsbroker started" {
				p.ws, p.admin = l.WS, l.Admin
				return nil
			}
		}
		return fmt.Errorf("no start line yet")
	})
	return p
}

// stop signals the process and waits for it (SIGKILL after 15s).
func (p *serveProc) stop(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// presence reads /v1/presence of the admin API.
func (p *serveProc) presence() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/v1/presence", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var pr struct {
		Connections int `json:"connections"`
	}
	if err := json.Unmarshal(b, &pr); err != nil {
		return 0, fmt.Errorf("presence %q: %w", b, err)
	}
	return pr.Connections, nil
}

// TestServeCluster runs the real binary: three `wsbroker serve` on the
// three-server NATS cluster with the flags of docs/cluster.md; messages
// cross the processes, presence covers them all, and a SIGKILLed process's
// connections leave presence within the lease.
func TestServeCluster(t *testing.T) {
	bin := buildWsbroker(t)
	nc := startNATSCluster(t, 3)
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, testSecret, 0o600); err != nil {
		t.Fatalf("write the secret: %v",
			err)
	}
	const lease = 3 * time.Second
	var procs []*serveProc
	for i := range 3 {
		procs = append(procs, startServe(t, bin,
			"--node-id", fmt.Sprintf("proc-%d", i),
			"--jwt-hmac-secret-file", secret,
			"--nats-url", strings.Join(nc.urls, ","),
			"--stream-replicas", "3",
			"--history-messages", "10",
			"--history-age", "1h",
			"--node-lease", lease.String(),
		))
	}
	var clients []*client
	for i, p := range procs {
		c := dial(t, p.ws, fmt.Sprintf("user-%d", i))
		c.subscribe("room.1", nil)
		clients = append(clients, c)
	}
	exchange(t, "room.1", clients, true)
	for i, p := range procs {
		testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			n, err := p.presence()
			if err != nil {
				return err
			}
			if n != 3 {
				return fmt.Errorf("proc-%d presence: %d connections, want 3", i, n)
			}
			return nil
		})
	}
	procs[1].stop(syscall.SIGKILL)
	killed := time.Now()
	testkit.CheckFor(t, lease+lease/3+3*time.Second, 20*time.Millisecond, func() error {
		for _, i := range []int{0, 2} {
			n, err := procs[i].presence()
			if err != nil {
				return err
			}
			if n != 2 {
				return fmt.Errorf("proc-%d presence: %d connections, want 2", i, n)
			}
		}
		return nil
	})
	t.Logf("the SIGKILLed process's connection left presence %s after the kill (lease %s)",
		time.Since(killed).Round(10*time.Millisecond), lease)
}
