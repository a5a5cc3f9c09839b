// Command benchtable compares wsbroker with the baseline server
// (bench/baseline: net/http + gorilla/websocket + golang-jwt, a reader and a
// writer goroutine per connection) on one machine. It builds both servers
// and the load client (bench/loadclient), then runs rounds in which every
// server variant is started fresh, measured, and stopped, in an order that
// alternates from round to round. Each figure is reported as the median and
// the min–max over the rounds, and each comparison as the median (min–max)
// of the per-round ratios, so that a noisy neighbour slows both sides of a
// ratio rather than one.
//
//	go run ./bench/cmd/benchtable -rounds 3 -duration 3s    (make bench-compare)
//
// Variants: baseline; wsbroker (OTEL_TRACES_EXPORTER=none); wsbroker-traced
// (OTLP/HTTP to a sink in this process that discards, --trace-success-ratio
// 0.01); wsbroker-noevents (--events=false, when the binary has the flag).
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

var handshakeCases = []string{"accept-hs256", "accept-rs256", "reject-missing", "reject-badsig"}

type options struct {
	root       string
	rounds     int
	duration   time.Duration
	workers    int
	conns      int
	fanout     int
	raw        string
	skipEvents bool
	pin        bool
	ref        string
}

func main() {
	var o options
	flag.StringVar(&o.root, "root", ".", "repository root")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds (each runs every variant once, order alternating)")
	flag.DurationVar(&o.duration, "duration", 3*time.Second, "length of one handshake run")
	flag.IntVar(&o.workers, "workers", 32, "concurrent handshake loops")
	flag.IntVar(&o.conns, "conns", 10000, "idle connections for memory and fan-out")
	flag.IntVar(&o.fanout, "fanout", 5, "messages published to every connection")
	flag.StringVar(&o.raw, "raw", "", "also write every run's JSON here")
	flag.BoolVar(&o.skipEvents, "skip-noevents", false, "skip the wsbroker --events=false variant")
	flag.StringVar(&o.ref, "ref", "", "build this git commit (git archive) instead of the work tree, e.g. HEAD")
	flag.BoolVar(&o.pin, "pin", false, "pin the server to the last CPU and the load client to the others (taskset)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

// env is what every run shares: binaries, key material, the OTLP sink.
type env struct {
	dir, wsbroker, baseline, client string
	secret, rsaKey, rsaPub          string
	sinkURL                         string
	sinkPosts                       *atomic.Int64
	hasEvents                       bool
	// serverCPUs and clientCPUs are taskset lists; empty means unpinned.
	serverCPUs, clientCPUs string
}

type variant struct {
	name   string
	mem    bool // memory and fan-out too
	server func(e *env, round int) (*server, error)
}

func run(o options) error {
	start := time.Now()
	dir, err := os.MkdirTemp("", "benchtable-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	root := o.root
	if o.ref != "" {
		if root, err = export(o.root, o.ref, dir); err != nil {
			return err
		}
	}
	e, err := prepare(root, dir)
	if err != nil {
		return err
	}
	if o.pin {
		n := runtime.NumCPU()
		if n < 2 {
			return errors.New("-pin needs at least 2 CPUs")
		}
		e.serverCPUs, e.clientCPUs = fmt.Sprint(n-1), fmt.Sprintf("0-%d", n-2)
	}
	stopSink, err := e.startSink()
	if err != nil {
		return err
	}
	defer stopSink()
	variants := []variant{
		{name: "baseline", mem: true, server: (*env).baselineServer},
		{name: "wsbroker", mem: true, server: func(e *env, r int) (*server, error) { return e.wsbrokerServer(r, false, true) }},
		{name: "wsbroker-traced", server: func(e *env, r int) (*server, error) { return e.wsbrokerServer(r, true, true) }},
	}
	if e.hasEvents && !o.skipEvents {
		variants = append(variants, variant{name: "wsbroker-noevents", mem: true, server: func(e *env, r int) (*server, error) { return e.wsbrokerServer(r, false, false) }})
	}
	fmt.Printf("machine: %d CPUs (%s), GOMAXPROCS %d, %s\n", runtime.NumCPU(), cpuModel(), runtime.GOMAXPROCS(0), runtime.Version())
	if o.pin {
		fmt.Printf("pinned: server on CPU %s, load client on CPU %s\n", e.serverCPUs, e.clientCPUs)
	}
	fmt.Printf("plan: %d rounds × %v; handshakes: %d workers × %s per case; memory/fan-out: %d connections, %d messages\n",
		o.rounds, names(variants), o.workers, o.duration, o.conns, o.fanout)
	res := results{}
	var raw bytes.Buffer
	for r := range o.rounds {
		order := slices.Clone(variants)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, v := range order {
			fmt.Printf("round %d: %s\n", r+1, v.name)
			if err := e.measure(o, v, r, res, &raw); err != nil {
				fmt.Printf("  %s round %d: %v\n", v.name, r+1, err)
			}
		}
	}
	if o.raw != "" {
		if err := os.WriteFile(o.raw, raw.Bytes(), 0o644); err != nil {
			return fmt.Errorf("raw: %w", err)
		}
	}
	fmt.Printf("\nOTLP sink received %d export requests from wsbroker-traced\n", e.sinkPosts.Load())
	fmt.Println()
	res.print(os.Stdout, e.hasEvents && !o.skipEvents)
	fmt.Printf("\ntotal time %s\n", time.Since(start).Round(time.Second))
	return nil
}

func names(vs []variant) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.name
	}
	return out
}

// measure runs one variant's round: a fresh server for memory and
// fan-out, then a fresh one for the handshake cases.
func (e *env) measure(o options, v variant, round int, res results, raw *bytes.Buffer) error {
	if v.mem {
		s, err := v.server(e, round)
		if err != nil {
			return err
		}
		out, err := e.loadclient("hold", "-url", s.wsURL, "-metrics", s.metricsURL, "-hmac-secret-file", e.secret,
			"-n", fmt.Sprint(o.conns), "-fanout", fmt.Sprint(o.fanout))
		s.stop()
		if err != nil {
			return fmt.Errorf("hold: %w", err)
		}
		fmt.Fprintf(raw, "%s round %d hold %s", v.name, round+1, out)
		var h struct {
			RSS, Heap, Goroutines, DeliveriesPerS, P50, P99, SocketP50, SocketP99 float64
		}
		var j map[string]float64
		if err := json.Unmarshal(out, &j); err != nil {
			return fmt.Errorf("hold output %q: %w", out, err)
		}
		h.RSS, h.Heap, h.Goroutines = j["rss_per_conn"], j["heap_per_conn"], j["goroutines_per_conn"]
		h.DeliveriesPerS, h.P50, h.P99 = j["deliveries_per_sec"], j["p50_ms"], j["p99_ms"]
		h.SocketP50, h.SocketP99 = j["socket_p50_ms"], j["socket_p99_ms"]
		res.add(v.name, "rss_per_conn", round, h.RSS)
		res.add(v.name, "heap_per_conn", round, h.Heap)
		res.add(v.name, "rss_marginal_per_conn", round, j["rss_marginal_per_conn"])
		res.add(v.name, "heap_marginal_per_conn", round, j["heap_marginal_per_conn"])
		res.add(v.name, "goroutines_per_conn", round, h.Goroutines)
		if o.fanout > 0 {
			res.add(v.name, "fanout_deliveries_per_sec", round, h.DeliveriesPerS)
			res.add(v.name, "fanout_p50_ms", round, h.P50)
			res.add(v.name, "fanout_p99_ms", round, h.P99)
			res.add(v.name, "fanout_socket_p50_ms", round, h.SocketP50)
			res.add(v.name, "fanout_socket_p99_ms", round, h.SocketP99)
		}
		fmt.Printf("  memory: RSS %.0f B/conn (%.0f from n/2 to n), heap %.0f B/conn (%.0f), %.2f goroutines/conn; fan-out p50 %.1f ms p99 %.1f ms (at the socket: p50 %.1f ms p99 %.1f ms)\n",
			h.RSS, j["rss_marginal_per_conn"], h.Heap, j["heap_marginal_per_conn"], h.Goroutines, h.P50, h.P99, h.SocketP50, h.SocketP99)
	}
	s, err := v.server(e, round)
	if err != nil {
		return err
	}
	defer s.stop()
	for _, c := range handshakeCases {
		cpu0, cpuErr := s.cpuSeconds()
		out, err := e.loadclient("handshake", "-url", s.wsURL, "-hmac-secret-file", e.secret, "-rsa-key-file", e.rsaKey,
			"-case", c, "-workers", fmt.Sprint(o.workers), "-duration", o.duration.String())
		cpu1, cpuErr1 := s.cpuSeconds()
		if err != nil {
			fmt.Printf("  %s: %v\n", c, err)
			continue
		}
		fmt.Fprintf(raw, "%s round %d handshake %s", v.name, round+1, out)
		var h struct {
			PerSec     float64 `json:"per_sec"`
			OK         float64 `json:"ok"`
			Unexpected int64   `json:"unexpected"`
			Errors     int64   `json:"errors"`
			FirstError string  `json:"first_error"`
		}
		if err := json.Unmarshal(out, &h); err != nil {
			return fmt.Errorf("handshake output %q: %w", out, err)
		}
		res.add(v.name, c, round, h.PerSec)
		cpuNote := ""
		if ops := h.OK; cpuErr == nil && cpuErr1 == nil && ops > 0 {
			us := (cpu1 - cpu0) / ops * 1e6
			res.add(v.name, "cpu-"+c, round, us)
			cpuNote = fmt.Sprintf("  %6.1f µs server CPU/op", us)
		}
		note := ""
		if h.Unexpected+h.Errors > 0 {
			note = fmt.Sprintf(" (%d unexpected, %d errors: %s)", h.Unexpected, h.Errors, h.FirstError)
		}
		fmt.Printf("  %-15s %8.0f /s%s%s\n", c, h.PerSec, cpuNote, note)
	}
	return nil
}

func (e *env) loadclient(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.client, args...)
	pin(cmd, e.clientCPUs)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("loadclient %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// export writes the tree of ref into dir/src and returns that path.
func export(root, ref, dir string) (string, error) {
	src := filepath.Join(dir, "src")
	tar := filepath.Join(dir, "src.tar")
	if err := os.Mkdir(src, 0o755); err != nil {
		return "", fmt.Errorf("export: %w", err)
	}
	if out, err := exec.Command("git", "-C", root, "archive", "--format=tar", "-o", tar, ref).CombinedOutput(); err != nil {
		return "", fmt.Errorf("git archive %s: %w: %s", ref, err, out)
	}
	if out, err := exec.Command("tar", "-xf", tar, "-C", src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("untar %s: %w: %s", ref, err, out)
	}
	rev, _ := exec.Command("git", "-C", root, "rev-parse", "--short", ref).Output()
	fmt.Printf("building %s (%s)\n", ref, strings.TrimSpace(string(rev)))
	return src, nil
}

// prepare builds the three binaries and writes the key material.
func prepare(root, dir string) (*env, error) {
	e := &env{
		dir:       dir,
		wsbroker:  filepath.Join(dir, "wsbroker"),
		baseline:  filepath.Join(dir, "baseline"),
		client:    filepath.Join(dir, "loadclient"),
		secret:    filepath.Join(dir, "secret"),
		rsaKey:    filepath.Join(dir, "rsa.pem"),
		rsaPub:    filepath.Join(dir, "rsa.pub.pem"),
		sinkPosts: new(atomic.Int64),
	}
	builds := [][]string{
		{"build", "-o", e.wsbroker, "./cmd/wsbroker"},
		{"build", "-o", e.client, "./bench/loadclient"},
		{"build", "-C", "bench/baseline", "-o", e.baseline, "."},
	}
	for _, b := range builds {
		cmd := exec.Command("go", b...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(b, " "), err, out)
		}
	}
	secret := make([]byte, 48)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	if err := os.WriteFile(e.secret, []byte(base64.StdEncoding.EncodeToString(secret)+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("secret: %w", err)
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("rsa key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("rsa key: %w", err)
	}
	if err := os.WriteFile(e.rsaKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		return nil, fmt.Errorf("rsa key: %w", err)
	}
	if err := os.WriteFile(e.rsaPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600); err != nil {
		return nil, fmt.Errorf("rsa key: %w", err)
	}
	help, _ := exec.Command(e.wsbroker, "serve", "--help").CombinedOutput()
	e.hasEvents = bytes.Contains(help, []byte("--events"))
	return e, nil
}

// startSink serves OTLP/HTTP posts and discards them (an empty protobuf
// ExportTraceServiceResponse is an empty body).
func (e *env) startSink() (func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("otlp sink: %w", err)
	}
	e.sinkURL = "http://" + ln.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		e.sinkPosts.Add(1)
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	})}
	go func() { _ = srv.Serve(ln) }()
	return func() { _ = srv.Close() }, nil
}

// server is one running server process.
type server struct {
	cmd                *exec.Cmd
	wsURL, metricsURL  string
	exited             chan struct{}
	stderr             *bytes.Buffer
	name               string
	readyURL           string
	startedAt, readyAt time.Time
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (e *env) baselineServer(int) (*server, error) {
	p, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	cmd := exec.Command(e.baseline, "--listen", addr, "--hmac-secret-file", e.secret, "--rsa-pub-file", e.rsaPub)
	pin(cmd, e.serverCPUs)
	return start("baseline", cmd, "ws://"+addr+"/ws", "http://"+addr+"/metrics", "http://"+addr+"/readyz")
}

func (e *env) wsbrokerServer(round int, traced, events bool) (*server, error) {
	p, err := freePort()
	if err != nil {
		return nil, err
	}
	a, err := freePort()
	if err != nil {
		return nil, err
	}
	addr, admin := fmt.Sprintf("127.0.0.1:%d", p), fmt.Sprintf("127.0.0.1:%d", a)
	args := []string{"serve", "--listen", addr, "--admin-listen", admin,
		"--jwt-hmac-secret-file", e.secret, "--jwt-key-file", e.rsaPub,
		"--max-conns-per-subject", "0", "--failure-burst", "0", "--log-level", "error",
		"--shutdown-drain", "1s", "--trace-success-ratio", "0.01"}
	if e.hasEvents {
		if events {
			args = append(args, "--data-dir", filepath.Join(e.dir, fmt.Sprintf("data-%d-%d", round, time.Now().UnixNano())))
		} else {
			args = append(args, "--events=false")
		}
	}
	cmd := exec.Command(e.wsbroker, args...)
	pin(cmd, e.serverCPUs)
	cmd.Env = os.Environ()
	if traced {
		cmd.Env = append(cmd.Env, "OTEL_EXPORTER_OTLP_ENDPOINT="+e.sinkURL, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", "OTEL_TRACES_EXPORTER=otlp")
	} else {
		cmd.Env = append(cmd.Env, "OTEL_TRACES_EXPORTER=none", "OTEL_EXPORTER_OTLP_ENDPOINT=", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=")
	}
	cmd.Dir = e.dir
	return start("wsbroker", cmd, "ws://"+addr+"/ws", "http://"+admin+"/metrics", "http://"+admin+"/readyz")
}

func start(name string, cmd *exec.Cmd, wsURL, metricsURL, readyURL string) (*server, error) {
	s := &server{cmd: cmd, wsURL: wsURL, metricsURL: metricsURL, readyURL: readyURL, name: name, exited: make(chan struct{}), stderr: new(bytes.Buffer)}
	cmd.Stdout = io.Discard
	cmd.Stderr = s.stderr
	s.startedAt = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { _ = cmd.Wait(); close(s.exited) }()
	client := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case <-s.exited:
			return nil, fmt.Errorf("%s exited at start: %s", name, strings.TrimSpace(s.stderr.String()))
		default:
		}
		resp, err := client.Get(readyURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				s.readyAt = time.Now()
				time.Sleep(500 * time.Millisecond) // start-up work settles
				return s, nil
			}
		}
	}
	s.stop()
	return nil, errors.New(name + " not ready within 20s")
}

// cpuSeconds is the user+system CPU time the server process has used, from
// /proc/<pid>/stat (clock ticks of 1/100 s). Unlike throughput it hardly
// depends on what else the machine runs.
func (s *server) cpuSeconds() (float64, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0, fmt.Errorf("cpu: %w", err)
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line.
	_, rest, ok := strings.Cut(string(raw), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("cpu: short stat %q", raw)
	}
	var ut, st float64
	if _, err := fmt.Sscan(f[11], &ut); err != nil {
		return 0, fmt.Errorf("cpu: utime: %w", err)
	}
	if _, err := fmt.Sscan(f[12], &st); err != nil {
		return 0, fmt.Errorf("cpu: stime: %w", err)
	}
	return (ut + st) / 100, nil
}

func (s *server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// pin runs cmd under taskset -c cpus when cpus is set. The process's
// GOMAXPROCS follows its affinity mask.
func pin(cmd *exec.Cmd, cpus string) {
	if cpus == "" {
		return
	}
	cmd.Args = append([]string{"taskset", "-c", cpus}, cmd.Args...)
	cmd.Path = "/usr/bin/taskset"
	if p, err := exec.LookPath("taskset"); err == nil {
		cmd.Path = p
	}
}

func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
