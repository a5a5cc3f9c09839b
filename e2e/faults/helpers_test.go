// Package faults injects faults into real components: the wsbroker binary,
// built once for the package and run as a child process (each in its own
// temporary directory), an embedded nats-server on a loopback port, an
// httptest JWKS endpoint, a tmpfs data dir. Each test names the fault, what
// a user expects, and checks it on the broker's own surfaces: the upgrade
// answer, /readyz, /metrics, the exit code and stderr, the event log.
package faults

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/internal/wsframe"
)

// bin is the wsbroker binary built by TestMain.
var bin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "wsbroker-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin = filepath.Join(dir, "wsbroker")
	build := exec.Command("go", "build", "-o", bin, "github.com/wsbroker/wsbroker/cmd/wsbroker")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: go build ./cmd/wsbroker:", err)
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "faults: leaked goroutines:", err)
			return 1
		}
	}
	return code
}

// secret is the HS256 secret of the tests' brokers.
const secret = "faults-secret-0123456789abcdef-0123456789abcdef"

// broker is a wsbroker serve child process.
type broker struct {
	t       testing.TB
	dir     string
	dataDir string
	wsAddr  string
	admin   string // http://host:port
	cmd     *exec.Cmd
	stderr  *testkit.SyncBuffer
	exited  chan struct{}
	waitErr error
}

// brokerOpts configures startBroker.
type brokerOpts struct {
	// args are extra serve flags.
	args []string
	// noSecret leaves out --jwt-hmac-secret-file (JWKS tests).
	noSecret bool
	// dataDir overrides the default t.TempDir()/data.
	dataDir string
}

// launch starts wsbroker serve without waiting for it.
func launch(t testing.TB, o brokerOpts) *broker {
	t.Helper()
	dir := t.TempDir()
	b := &broker{
		t:       t,
		dir:     dir,
		dataDir: o.dataDir,
		wsAddr:  "127.0.0.1:" + strconv.Itoa(testkit.FreePort(t)),
		admin:   "http://127.0.0.1:" + strconv.Itoa(testkit.FreePort(t)),
		stderr:  &testkit.SyncBuffer{},
		exited:  make(chan struct{}),
	}
	if b.dataDir == "" {
		b.dataDir = filepath.Join(dir, "data")
	}
	args := []string{
		"serve",
		"--listen", b.wsAddr,
		"--admin-listen", strings.TrimPrefix(b.admin, "http://"),
		"--data-dir", b.dataDir,
		"--node-id", "faults",
		"--log-level", "warn",
		"--log-format", "text",
		"--max-conns-per-subject", "0",
		"--failure-burst", "0",
	}
	if !o.noSecret {
		sf := filepath.Join(dir, "secret")
		if err := os.WriteFile(sf, []byte(secret), 0o600); err != nil {
			t.Fatalf("secret file: %v",
				err)
		}
		args = append(args, "--jwt-hmac-secret-file", sf)
	}
	args = append(args, o.args...)
	b.cmd = exec.Command(bin, args...)
	b.cmd.Dir = dir
	b.cmd.Stdout = io.Discard
	b.cmd.Stderr = b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v",
			bin, err)
	}
	go func() {
		b.waitErr = b.cmd.Wait()
		close(b.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-b.exited:
			return
		default:
		}
		_ = b.cmd.Process.Kill()
		<-b.exited
		if t.Failed() {
			t.Logf("broker stderr:\n%s", b.stderr.String())
		}
	})
	return b
}

// startBroker starts wsbroker serve and waits until its admin API answers
// /healthz.
func startBroker(t testing.TB, o brokerOpts) *broker {
	t.Helper()
	b := launch(t, o)
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		select {
		case <-b.exited:
			t.Fatalf("broker exited at start (%v):\n%s",
				b.waitErr, b.stderr.String())
		default:
		}
		_, err := b.get("/healthz")
		return err
	})
	return b
}

// get returns the status of an admin GET, an error if not 200.
func (b *broker) get(path string) ([]byte, error) {
	resp, err := http.Get(b.admin + path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("GET %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// metric returns the sum of the samples of name whose labels contain every
// one of labels (e.g. `result="accepted"`), from the broker's /metrics.
func (b *broker) metric(name string, labels ...string) (float64, error) {
	body, err := b.get("/metrics")
	if err != nil {
		return 0, err
	}
	return sumMetric(body, name, labels...)
}

func sumMetric(body []byte, name string, labels ...string) (float64, error) {
	var sum float64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		ok := true
		for _, l := range labels {
			if !strings.Contains(rest, l) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		fields := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: %q: %w", name, line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s%v: no sample", name, labels)
	}
	return sum, nil
}

// signal sends sig to the broker.
func (b *broker) signal(sig os.Signal) {
	b.t.Helper()
	if err := b.cmd.Process.Signal(sig); err != nil {
		b.t.Fatalf("signal %v: %v",
			sig, err)
	}
}

// wait waits at most d for the broker to exit and returns its exit code.
func (b *broker) wait(d time.Duration) int {
	b.t.Helper()
	select {
	case <-b.exited:
	case <-time.After(d):
		b.t.Fatalf("broker still running %s after the signal:\n%s",
			d, b.stderr.String())
	}
	var ee *exec.ExitError
	switch {
	case b.waitErr == nil:
		return 0
	case errors.As(b.waitErr, &ee):
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	b.t.Fatalf("wait: %v",
		b.waitErr)
	return -1
}

// stop sends SIGTERM and expects exit code 0.
func (b *broker) stop() {
	b.t.Helper()
	b.signal(syscall.SIGTERM)
	if code := b.wait(30 * time.Second); code != 0 {
		b.t.Fatalf("exit code %d after SIGTERM, want 0:\n%s",
			code, b.stderr.String())
	}
}

// hsToken returns an HS256 token for sub signed with the brokers' secret.
func hsToken(t testing.TB, sub string) string {
	t.Helper()
	now := time.Now()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":      sub,
		"exp":      now.Add(time.Hour).Unix(),
		"iat":      now.Unix(),
		"channels": []string{"*"},
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatalf("sign: %v",
			err)
	}
	return s
}

// answer is what an upgrade got back.
type answer struct {
	status     int
	reason     string // X-Wsbroker-Reason
	retryAfter string
	conn       *wsConn // when upgraded
}

// wsConn is an upgraded client connection.
type wsConn struct {
	c  net.Conn
	br *bufio.Reader
	mu sync.Mutex
}

// upgrade sends an upgrade with tok as a bearer token ("" for none) and
// reads the answer.
func upgrade(ctx context.Context, addr, tok string) (answer, error) {
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return answer{}, fmt.Errorf("dial %s: %w", addr, err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var key [16]byte
	_, _ = rand.Read(key[:])
	req := "GET /ws HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " +
		base64.StdEncoding.EncodeToString(key[:]) + "\r\nSec-WebSocket-Protocol: wsbroker.v1\r\n"
	if tok != "" {
		req += "Authorization: Bearer " + tok + "\r\n"
	}
	req += "\r\n"
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return answer{}, fmt.Errorf("send handshake: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return answer{}, fmt.Errorf("read handshake answer: %w", err)
	}
	a := answer{status: resp.StatusCode, reason: resp.Header.Get("X-Wsbroker-Reason"), retryAfter: resp.Header.Get("Retry-After")}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		resp.Body.Close()
		c.Close()
		return a, nil
	}
	_ = c.SetDeadline(time.Time{})
	a.conn = &wsConn{c: c, br: br}
	return a, nil
}

func (w *wsConn) Close() error { return w.c.Close() }

func (w *wsConn) send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return ws.WriteFrame(w.c, ws.MaskFrameInPlace(ws.NewTextFrame(b)))
}

// closeCode reads frames until the server's close frame and returns its
// code, answering pings; an error if the connection ends without one or
// within d.
func (w *wsConn) closeCode(d time.Duration) (ws.StatusCode, error) {
	_ = w.c.SetReadDeadline(time.Now().Add(d))
	for {
		f, err := wsframe.Read(w.br, wsframe.DefaultLimit)
		if err != nil {
			return 0, fmt.Errorf("no close frame: %w", err)
		}
		switch f.Header.OpCode {
		case ws.OpClose:
			code, _ := ws.ParseCloseFrameData(f.Payload)
			w.mu.Lock()
			_ = ws.WriteFrame(w.c, ws.MaskFrameInPlace(ws.NewCloseFrame(ws.NewCloseFrameBody(code, ""))))
			w.mu.Unlock()
			return code, nil
		case ws.OpPing:
			w.mu.Lock()
			_ = ws.WriteFrame(w.c, ws.MaskFrameInPlace(ws.NewPongFrame(f.Payload)))
			w.mu.Unlock()
		}
	}
}

// readEvents prints the stopped broker's log with wsbroker events replay
// --json and returns the events.
func readEvents(t testing.TB, dataDir string) []cloudEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "events", "replay", "--data-dir", dataDir, "--json").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("wsbroker events replay: %v: %s",
				err, ee.Stderr)
		}
		t.Fatalf("wsbroker events replay: %v",
			err)
	}
	var evs []cloudEvent
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var e cloudEvent
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("event %q: %v",
				line, err)
		}
		evs = append(evs, e)
	}
	return evs
}

// cloudEvent is the part of a CloudEvent the tests read.
type cloudEvent struct {
	ID   string         `json:"id"`
	Type string         `json:"type"`
	Data map[string]any `json:"data"`
}

// connID returns the event's connection id.
func (e cloudEvent) connID() string {
	for _, k := range []string{"conn_id", "conn", "connection_id"} {
		if v, ok := e.Data[k]; ok {
			return fmt.Sprint(v)
		}
	}
	return ""
}

// next reads frames until a text frame, answering pings, and returns it
// decoded; the test fails if none comes within d.
func (w *wsConn) next(t testing.TB, d time.Duration) map[string]any {
	t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(d))
	defer w.c.SetReadDeadline(time.Time{})
	for {
		f, err := wsframe.Read(w.br, wsframe.DefaultLimit)
		if err != nil {
			t.Fatalf("no frame within %s: %v",
				d, err)
		}
		switch f.Header.OpCode {
		case ws.OpText:
			var m map[string]any
			if err := json.Unmarshal(f.Payload, &m); err != nil {
				t.Fatalf("frame %q: %v",
					f.Payload, err)
			}
			return m
		case ws.OpPing:
			w.mu.Lock()
			_ = ws.WriteFrame(w.c, ws.MaskFrameInPlace(ws.NewPongFrame(f.Payload)))
			w.mu.Unlock()
		case ws.OpClose:
			t.Fatalf("closed by the server while waiting for a frame")
		}
	}
}
