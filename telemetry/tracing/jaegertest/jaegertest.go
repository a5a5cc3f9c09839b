// Package jaegertest runs a real Jaeger (v2 all-in-one, in-memory storage)
// for tests, on free loopback ports, and reads traces back from its query API.
//
// The binary is $WSBROKER_JAEGER_BIN or <repo>/.bin/jaeger, built by
// tools/jaeger/build.sh. A test that calls Start fails, rather than skips,
// when the binary is missing: CI builds it first.
package jaegertest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// BinEnv names the environment variable that overrides the binary's path.
const BinEnv = "WSBROKER_JAEGER_BIN"

const (
	modulePath    = "github.com/wsbroker/wsbroker"
	startAttempts = 3
	startTimeout  = 60 * time.Second
	stopTimeout   = 15 * time.Second
	pollInterval  = 50 * time.Millisecond
	logTailBytes  = 4000
)

// Jaeger is a running Jaeger process.
type Jaeger struct {
	ports  ports
	client *http.Client
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited
	logs   *logBuffer
}

type ports struct {
	OTLPGRPC  int
	OTLPHTTP  int
	QueryHTTP int
	QueryGRPC int
	Health    int
}

// Start runs Jaeger for the rest of the test and stops it in t.Cleanup.
func Start(t testing.TB) *Jaeger {
	t.Helper()
	bin, err := Binary()
	if err != nil {
		t.Fatalf("jaegertest: %v",
			err)
	}
	dir := t.TempDir()
	var last error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		j, err := start(t, bin, dir, attempt)
		if err == nil {
			return j
		}
		last = err
		// Another process may have taken a port between choosing and binding
		// it: try again with new ones.
		if !errors.Is(err, errExited) {
			break
		}
	}
	t.Fatalf("jaegertest: start %s: %v",
		bin, last)
	return nil
}

// Binary returns the path of the Jaeger binary, or an error saying how to
// build it.
func Binary() (string, error) {
	if bin := os.Getenv(BinEnv); bin != "" {
		if err := executable(bin); err != nil {
			return "", fmt.Errorf("%s=%s: %w (unset it to use <repo>/.bin/jaeger, built by tools/jaeger/build.sh)", BinEnv, bin, err)
		}
		return bin, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", fmt.Errorf("find the jaeger binary (set %s): %w", BinEnv, err)
	}
	bin := filepath.Join(root, ".bin", "jaeger")
	if err := executable(bin); errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("no jaeger binary at %s: build it with tools/jaeger/build.sh, or set %s", bin, BinEnv)
	} else if err != nil {
		return "", fmt.Errorf("jaeger binary %s: %w", bin, err)
	}
	return bin, nil
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory whose go.mod declares the main module.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && declaresModule(data, modulePath) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of module %s above the working directory", modulePath)
		}
		dir = parent
	}
}

func declaresModule(gomod []byte, path string) bool {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == path {
			return true
		}
	}
	return false
}

var errExited = errors.New("jaeger exited")

func start(t testing.TB, bin, dir string, attempt int) (*Jaeger, error) {
	t.Helper()
	p, err := freePorts()
	if err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "jaeger-"+strconv.Itoa(attempt)+".yaml")
	if err := writeConfig(cfgPath, p); err != nil {
		return nil, err
	}

	logs := &logBuffer{}
	cmd := exec.Command(bin, "--config", cfgPath)
	cmd.Dir = dir
	cmd.Env = withoutOTELEnv(os.Environ())
	cmd.Stdout = logs
	cmd.Stderr = logs
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	j := &Jaeger{
		ports:  p,
		client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second},
		cmd:    cmd,
		done:   make(chan struct{}),
		logs:   logs,
	}
	go func() {
		_ = cmd.Wait()
		close(j.done)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := j.waitReady(ctx); err != nil {
		j.stop()
		return nil, fmt.Errorf("%w\njaeger output (tail):\n%s", err, logs.tail(logTailBytes))
	}
	t.Cleanup(func() {
		if err := j.stop(); err != nil {
			t.Errorf("jaegertest: stop: %v\njaeger output (tail):\n%s",
				err, logs.tail(logTailBytes))
		}
	})
	return j, nil
}

// waitReady polls the health check and the query API until both answer.
func (j *Jaeger) waitReady(ctx context.Context) error {
	health := fmt.Sprintf("http://127.0.0.1:%d/status", j.ports.Health)
	services := j.QueryURL() + "/api/services"
	return Poll(ctx, pollInterval, func(ctx context.Context) (bool, error) {
		select {
		case <-j.done:
			return false, fmt.Errorf("%w before it was ready (%s)", errExited, j.cmd.ProcessState)
		default:
		}
		for _, u := range []string{health, services} {
			if err := j.get(ctx, u, io.Discard); err != nil {
				return false, nil
			}
		}
		return true, nil
	})
}

func (j *Jaeger) stop() error {
	defer j.client.CloseIdleConnections()
	select {
	case <-j.done:
		return nil
	default:
	}
	if err := j.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal: %w", err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-j.done:
		return nil
	case <-timer.C:
		_ = j.cmd.Process.Kill()
		<-j.done
		return fmt.Errorf("did not exit within %s of SIGTERM; killed", stopTimeout)
	}
}

// OTLPHTTPEndpoint is the base URL of the OTLP/HTTP receiver, for
// OTEL_EXPORTER_OTLP_ENDPOINT (traces are posted to /v1/traces under it).
func (j *Jaeger) OTLPHTTPEndpoint() string {
	return fmt.Sprintf("http://127.0.0.1:%d", j.ports.OTLPHTTP)
}

// OTLPGRPCEndpoint is the URL of the OTLP/gRPC receiver.
func (j *Jaeger) OTLPGRPCEndpoint() string {
	return fmt.Sprintf("http://127.0.0.1:%d", j.ports.OTLPGRPC)
}

// QueryURL is the base URL of the query API (and of the UI, which a binary
// built from the Go module serves as a placeholder page).
func (j *Jaeger) QueryURL() string {
	return fmt.Sprintf("http://127.0.0.1:%d", j.ports.QueryHTTP)
}

// Logs returns what Jaeger has printed so far.
func (j *Jaeger) Logs() string { return j.logs.String() }

// Traces returns the traces of a service from /api/traces?service=, which
// searches the last hour.
func (j *Jaeger) Traces(ctx context.Context, service string) ([]Trace, error) {
	q := url.Values{}
	q.Set("service", service)
	q.Set("limit", "1000")
	q.Set("lookback", "1h")
	var resp response
	if err := j.getJSON(ctx, j.QueryURL()+"/api/traces?"+q.Encode(), &resp); err != nil {
		return nil, fmt.Errorf("traces of service %q: %w", service, err)
	}
	if err := resp.err(); err != nil {
		return nil, fmt.Errorf("traces of service %q: %w", service, err)
	}
	return resp.Data, nil
}

// ErrNotFound is returned by Trace for a trace id Jaeger does not have.
var ErrNotFound = errors.New("trace not found")

// Trace returns one trace by its hex id from /api/traces/{id}.
func (j *Jaeger) Trace(ctx context.Context, traceID string) (Trace, error) {
	var resp response
	err := j.getJSON(ctx, j.QueryURL()+"/api/traces/"+url.PathEscape(traceID), &resp)
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusNotFound {
		return Trace{}, fmt.Errorf("trace %s: %w", traceID, ErrNotFound)
	}
	if err != nil {
		return Trace{}, fmt.Errorf("trace %s: %w", traceID, err)
	}
	if len(resp.Data) == 0 {
		return Trace{}, fmt.Errorf("trace %s: %w", traceID, ErrNotFound)
	}
	return resp.Data[0], nil
}

// WaitForTrace polls Traces until one trace of the service satisfies match,
// or ctx ends; then the error says what was last seen.
func (j *Jaeger) WaitForTrace(ctx context.Context, service string, match func(Trace) bool) (Trace, error) {
	var found Trace
	var last error
	var seen int
	err := Poll(ctx, pollInterval, func(ctx context.Context) (bool, error) {
		traces, err := j.Traces(ctx, service)
		if err != nil {
			last = err
			return false, nil
		}
		seen = len(traces)
		for _, tr := range traces {
			if match(tr) {
				found = tr
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return Trace{}, fmt.Errorf("no matching trace of service %q among %d seen (last query error: %v): %w", service, seen, last, err)
	}
	return found, nil
}

type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.code, e.body)
}

func (j *Jaeger) get(ctx context.Context, u string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("request %s: %w", u, err)
	}
	resp, err := j.client.Do(req)
	if err != nil {
		return fmt.Errorf("get %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return &statusError{code: resp.StatusCode, body: strings.TrimSpace(string(body))}
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("read %s: %w", u, err)
	}
	return nil
}

func (j *Jaeger) getJSON(ctx context.Context, u string, v any) error {
	var buf bytes.Buffer
	if err := j.get(ctx, u, &buf); err != nil {
		return err
	}
	if err := json.Unmarshal(buf.Bytes(), v); err != nil {
		return fmt.Errorf("decode %s: %w", u, err)
	}
	return nil
}

// Poll calls cond every interval (first at once) until it reports done or an
// error, or ctx ends. It is the way to wait for something in a test: never a
// sleep.
func Poll(ctx context.Context, interval time.Duration, cond func(context.Context) (bool, error)) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		done, err := cond(ctx)
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("poll: %w", context.Cause(ctx))
		case <-ticker.C:
		}
	}
}

// freePorts reserves distinct loopback ports by listening on port 0, all at
// once, and releases them for Jaeger to bind.
func freePorts() (ports, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	nums := make([]int, 5)
	for i := range nums {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return ports{}, fmt.Errorf("reserve a loopback port: %w", err)
		}
		ls = append(ls, l)
		nums[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports{
		OTLPGRPC:  nums[0],
		OTLPHTTP:  nums[1],
		QueryHTTP: nums[2],
		QueryGRPC: nums[3],
		Health:    nums[4],
	}, nil
}

// configTemplate is tools/jaeger/config.yaml with fixed ports and without
// Jaeger's own metrics endpoint.
var configTemplate = template.Must(template.New("jaeger").Parse(`# generated by jaegertest
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: "127.0.0.1:{{.QueryHTTP}}"
    grpc:
      endpoint: "127.0.0.1:{{.QueryGRPC}}"
  healthcheckv2:
    use_v2: true
    http:
      endpoint: "127.0.0.1:{{.Health}}"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "127.0.0.1:{{.OTLPGRPC}}"
      http:
        endpoint: "127.0.0.1:{{.OTLPHTTP}}"
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`))

func writeConfig(path string, p ports) error {
	var buf bytes.Buffer
	if err := configTemplate.Execute(&buf, p); err != nil {
		return fmt.Errorf("render config: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// withoutOTELEnv drops OTEL_* variables so the test's exporter settings do
// not leak into Jaeger's own telemetry.
func withoutOTELEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "OTEL_") {
			out = append(out, kv)
		}
	}
	return out
}

// logBuffer collects the process output, safe for the two writers.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) tail(n int) string {
	s := b.String()
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
