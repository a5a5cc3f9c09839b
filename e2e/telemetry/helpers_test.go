// Package telemetrye2e checks the broker's telemetry against the real
// components that consume it: Jaeger (traces), Prometheus with the shipped
// rules and dashboards (metrics and exemplars), and the logs, metrics, spans
// and responses together for token leaks. The broker and the load generator
// run as the real wsbroker binary, built once per test run; Jaeger comes
// from <repo>/.bin/jaeger (tools/jaeger/build.sh) and Prometheus from
// /usr/bin/prometheus (Debian's prometheus package). A missing binary fails
// the test: it does not skip.
package telemetrye2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// testSecret is the HS256 secret of every broker the tests start.
var testSecret = []byte("e2e-telemetry-secret-0123456789abcdef-0123456789")

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// wsbrokerBin builds ./cmd/wsbroker once per test run and returns its path.
func wsbrokerBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			buildErr = err
			return
		}
		binDir, err = os.MkdirTemp("", "wsbroker-e2e-")
		if err != nil {
			buildErr = fmt.Errorf("temp dir: %w", err)
			return
		}
		binPath = filepath.Join(binDir, "wsbroker")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/wsbroker")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/wsbroker: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build the broker: %v",
			buildErr)
	}
	return binPath
}

// repoRoot is the directory of the main module's go.mod, above the package.
func repoRoot() (string, error) {
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", fmt.Errorf("repo root: %w", err)
	}
	if !bytes.Contains(data, []byte("module github.com/wsbroker/wsbroker\n")) {
		return "", fmt.Errorf("repo root: %s/go.mod is not the wsbroker module", dir)
	}
	return dir, nil
}

// writeSecret writes testSecret to a file for --jwt-hmac-secret-file.
func writeSecret(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hmac-secret")
	if err := os.WriteFile(path, testSecret, 0o600); err != nil {
		t.Fatalf("write the secret: %v",
			err)
	}
	return path
}

// process is a running child process whose output is captured.
type process struct {
	name   string
	cmd    *exec.Cmd
	stdout *testkit.SyncBuffer
	stderr *testkit.SyncBuffer
	done   chan struct{}
	once   sync.Once
	err    error
}

// startProcess runs bin with args and env (added to the environment without
// OTEL_* and WSBROKER_* variables) in a directory of its own (a broker's
// default --data-dir is relative), and stops it at the end of the test.
func startProcess(t testing.TB, name, bin string, args, env []string) *process {
	t.Helper()
	p := &process{name: name, stdout: &testkit.SyncBuffer{}, stderr: &testkit.SyncBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = append(cleanEnv(os.Environ()), env...)
	p.cmd.Dir = t.TempDir()
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v",
			name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("stop %s: %v\nstderr:\n%s",
				name, err, tail(p.stderr.String(), 4000))
		}
	})
	return p
}

func cleanEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "OTEL_") && !strings.HasPrefix(kv, "WSBROKER_") {
			out = append(out, kv)
		}
	}
	return out
}

// stop sends SIGTERM and waits for the exit (killing after 15s); it may be
// called more than once.
func (p *process) stop() error {
	var err error
	p.once.Do(func() {
		select {
		case <-p.done:
			return
		default:
		}
		if e := p.cmd.Process.Signal(syscall.SIGTERM); e != nil {
			err = fmt.Errorf("signal: %w", e)
			return
		}
		timer := time.NewTimer(15 * time.Second)
		defer timer.Stop()
		select {
		case <-p.done:
		case <-timer.C:
			_ = p.cmd.Process.Kill()
			<-p.done
			err = fmt.Errorf("%s did not exit within 15s of SIGTERM; killed", p.name)
		}
	})
	return err
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// brokerProc is a running `wsbroker serve`.
type brokerProc struct {
	*process
	ws, admin string // host:port
}

// startBroker runs `wsbroker serve` on loopback ports chosen by the kernel
// with extra flags and environment, and waits for its start log line.
func startBroker(t testing.TB, flags, env []string) *brokerProc {
	t.Helper()
	args := []string{
		"serve",
		"--listen", "127.0.0.1:0",
		"--admin-listen", "127.0.0.1:0",
		"--jwt-hmac-secret-file", writeSecret(t),
		"--log-format", "json",
		"--node-id", "e2e",
		"--failure-burst", "0",
		"--shutdown-drain", "2s",
	}
	p := startProcess(t, "wsbroker serve", wsbrokerBin(t), append(args, flags...), env)
	b := &brokerProc{process: p}
	testkit.CheckFor(t, 30*time.Second, 20*time.Millisecond, func() error {
		if p.exited() {
			return fmt.Errorf("broker exited (%v): %s", p.err, p.stderr.String())
		}
		ws, admin, ok := startedLine(p.stderr.String())
		if !ok {
			return fmt.Errorf("no \"wsbroker started\" line yet")
		}
		b.ws, b.admin = ws, admin
		return nil
	})
	return b
}

// startedLine finds the JSON start line and returns its ws and admin
// addresses.
func startedLine(logs string) (ws, admin string, ok bool) {
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg   string `json:"msg"`
			WS    string `json:"ws"`
			Admin string `json:"admin"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "wsbroker started" && l.WS != "" && l.Admin != "" {
			return l.WS, l.Admin, true
		}
	}
	return "", "", false
}

// otelEnv points the broker's OTLP exporter at endpoint, flushing fast.
func otelEnv(endpoint string) []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + endpoint,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}
}

// upgradeReq is a raw WebSocket upgrade request.
type upgradeReq struct {
	target    string // path and query; /ws if empty
	headers   [][2]string
	protocols string
}

// upgradeResp is the answer to an upgrade.
type upgradeResp struct {
	status int
	header http.Header
	body   []byte
	// raw is every byte read from the server: status line, headers, body.
	raw []byte
}

// doUpgrade sends req over a new TCP connection to addr and reads the
// answer; an upgraded connection is closed at once.
func doUpgrade(t testing.TB, addr string, req upgradeReq) upgradeResp {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v",
			addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	target := req.target
	if target == "" {
		target = "/ws"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wsbroker-e2e\r\n", target, addr)
	if req.protocols != "" {
		fmt.Fprintf(&b, "Sec-WebSocket-Protocol: %s\r\n", req.protocols)
	}
	for _, h := range req.headers {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatalf("send the upgrade: %v",
			err)
	}
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read the upgrade answer: %v",
			err)
	}
	out := upgradeResp{status: resp.StatusCode, header: resp.Header}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		out.body, err = io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read the rejection body: %v",
				err)
		}
	}
	resp.Body.Close()
	out.raw = raw.Bytes()
	return out
}

// token signs claims with HS256 and key (testSecret if nil).
func token(t testing.TB, claims jwt.MapClaims, key []byte) string {
	t.Helper()
	if key == nil {
		key = testSecret
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v",
			err)
	}
	return s
}

// claims are valid claims for sub, changed by opts.
func claims(sub string, opts ...func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{"sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "channels": []string{"*"}}
	for _, o := range opts {
		o(c)
	}
	return c
}

func expired(c jwt.MapClaims) {
	now := time.Now()
	c["iat"], c["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
}

// unsigned returns an alg=none token.
func unsigned(c jwt.MapClaims) string {
	payload, _ := json.Marshal(c)
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc.EncodeToString(payload) + "."
}

// signature returns the last segment of a JWT.
func signature(tok string) string {
	return tok[strings.LastIndexByte(tok, '.')+1:]
}

// httpGet fetches u and returns the body; non-200 answers are errors.
func httpGet(ctx context.Context, client *http.Client, u string, header http.Header) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", u, err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("get %s: HTTP %d: %s", u, resp.StatusCode, tail(string(body), 500))
	}
	return body, nil
}

// newHTTPClient returns a client whose idle connections are closed at the
// end of the test (goleak).
func newHTTPClient(t testing.TB) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}
