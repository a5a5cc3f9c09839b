package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gobwas/ws"
	"github.com/spf13/cobra"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker/eventlog"
	"github.com/wsbroker/wsbroker/internal/wsframe"
)

// Bounds of a soak: it must stay a test, not become a flood.
const (
	soakMaxConns    = 15000 // under the 20,000 open files of one process
	soakMaxDuration = time.Hour
	soakMaxSources  = 64
	soakChannel     = "soak"
)

type soakOptions struct {
	url, adminURL      string
	hmacSecretFile     string
	issuer             string
	brokerBin          string
	serveFlags         []string
	duration           time.Duration
	conns              int
	badRatio           float64
	publishRate        float64
	publishers         int
	hold               time.Duration
	sourceAddrs        int
	settle             time.Duration
	maxGoroutineGrowth int
	maxHeapGrowth      int64
	dialTimeout        time.Duration
	jsonOut            bool
}

func newSoakCmd() *cobra.Command {
	o := &soakOptions{}
	cmd := &cobra.Command{
		Use:   "soak",
		Short: "Churn thousands of good and bad connections against a broker for a bounded time and check it holds up",
		Long: "Start a broker (this binary's serve, in its own process and temporary directory) or target one with " +
			"--url and --admin-url, then for --duration keep --conns connections churning: each worker opens a good " +
			"connection (subscribed to the channel soak, held about --hold, closed) or, with probability --bad-ratio, " +
			"a broken upgrade of one of the kinds of wsbroker loadgen. --publishers long-lived connections publish " +
			"--publish-rate messages per second to soak and must each receive every one.\n\n" +
			"The report gives the connections held at peak, the events counted against what the clients did (metrics, " +
			"the admin API's rejections and presence, and, for a broker it started, the stream itself after a SIGTERM), " +
			"messages delivered against sent, the broker's goroutines and heap before and after the churn (from its " +
			"/metrics) with a bound on their growth, and the errors by reason. It exits 1 when a check fails.\n\n" +
			"Loopback only; connections are spread over --source-addrs source addresses 127.0.0.x. Every flag can " +
			"also be set as WSBROKER_<FLAG_IN_UPPER_SNAKE>.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bindEnv(cmd, os.Getenv); err != nil {
				return err
			}
			return runSoak(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "", "WebSocket URL of a running broker on loopback (default: start one)")
	f.StringVar(&o.adminURL, "admin-url", "", "admin URL of that broker (/metrics, /v1/...); required with --url")
	f.StringVar(&o.hmacSecretFile, "jwt-hmac-secret-file", "", "that broker's HS256 secret, to mint tokens; required with --url")
	f.StringVar(&o.issuer, "jwt-issuer", "", "iss of good tokens (that broker's --jwt-issuer)")
	f.StringVar(&o.brokerBin, "broker-bin", "", "wsbroker binary to start when --url is empty (default: this one)")
	f.StringArrayVar(&o.serveFlags, "serve-flag", nil, "extra flag of the broker the soak starts, e.g. --serve-flag=--events=false (repeatable)")
	f.DurationVar(&o.duration, "duration", time.Minute, "how long the churn runs (at most 1h)")
	f.IntVar(&o.conns, "conns", 1000, "concurrent churning clients (at most 15000)")
	f.Float64Var(&o.badRatio, "bad-ratio", 0.2, "share of attempts that are broken upgrades")
	f.Float64Var(&o.publishRate, "publish-rate", 50, "messages per second published to the channel soak, over all publishers")
	f.IntVar(&o.publishers, "publishers", 4, "long-lived connections that publish and check they receive every message")
	f.DurationVar(&o.hold, "hold", 2*time.Second, "mean lifetime of a good churning connection (± 50%)")
	f.IntVar(&o.sourceAddrs, "source-addrs", 8, "source addresses 127.0.0.1 to 127.0.0.N the connections are spread over")
	f.DurationVar(&o.settle, "settle", 20*time.Second, "wait at most this long after the churn for the broker to return to its baseline")
	f.IntVar(&o.maxGoroutineGrowth, "max-goroutine-growth", 50, "goroutines the broker may have gained after the churn")
	f.Int64Var(&o.maxHeapGrowth, "max-heap-growth", 64<<20, "bytes of in-use heap the broker may have gained after the churn")
	f.DurationVar(&o.dialTimeout, "dial-timeout", 10*time.Second, "bound on connecting and on each handshake")
	f.BoolVar(&o.jsonOut, "json", false, "print the report as JSON")
	return cmd
}

func (o *soakOptions) validate() error {
	switch {
	case o.conns < 1 || o.conns > soakMaxConns:
		return fmt.Errorf("soak: --conns %d, want 1 to %d (one process may hold 20,000 files)", o.conns, soakMaxConns)
	case o.duration <= 0 || o.duration > soakMaxDuration:
		return fmt.Errorf("soak: --duration %s, want more than 0 and at most %s", o.duration, soakMaxDuration)
	case o.badRatio < 0 || o.badRatio > 1:
		return fmt.Errorf("soak: --bad-ratio %g, want 0 to 1", o.badRatio)
	case o.publishRate < 0 || o.publishRate > 10000:
		return fmt.Errorf("soak: --publish-rate %g, want 0 to 10000", o.publishRate)
	case o.publishers < 0 || o.publishers > 100:
		return fmt.Errorf("soak: --publishers %d, want 0 to 100", o.publishers)
	case o.publishRate > 0 && o.publishers == 0:
		return errors.New("soak: --publish-rate needs --publishers > 0")
	case o.hold <= 0:
		return fmt.Errorf("soak: --hold %s, want > 0", o.hold)
	case o.sourceAddrs < 1 || o.sourceAddrs > soakMaxSources:
		return fmt.Errorf("soak: --source-addrs %d, want 1 to %d", o.sourceAddrs, soakMaxSources)
	case o.url != "" && (o.adminURL == "" || o.hmacSecretFile == ""):
		return errors.New("soak: --url needs --admin-url and --jwt-hmac-secret-file")
	}
	return nil
}

// soakCheck is one verdict of the report.
type soakCheck struct {
	Name string `json:"name"`
	Got  string `json:"got"`
	Want string `json:"want"`
	OK   bool   `json:"ok"`
}

// soakResources are the broker's own figures from its /metrics.
type soakResources struct {
	Goroutines     float64 `json:"goroutines"`
	HeapInuseBytes float64 `json:"heap_inuse_bytes"`
}

// soakReport is what soak prints.
type soakReport struct {
	Target      string  `json:"target"`
	Duration    string  `json:"duration"`
	Conns       int     `json:"conns"`
	BadRatio    float64 `json:"bad_ratio"`
	PublishRate float64 `json:"publish_rate"`
	SourceAddrs int     `json:"source_addrs"`
	// PeakServer is the largest wsbroker_connections seen, PeakClient the
	// most connections the soak held open at once.
	PeakServer    float64 `json:"peak_connections_server"`
	PeakClient    int64   `json:"peak_connections_client"`
	GoodUpgrades  uint64  `json:"good_upgrades"`
	BadAttempts   uint64  `json:"bad_attempts"`
	UpgradesPerS  float64 `json:"upgrades_per_second"`
	Published     uint64  `json:"published"`
	Delivered     uint64  `json:"delivered_to_publishers"`
	WantDelivered uint64  `json:"want_delivered_to_publishers"`
	// ChurnReceived counts the messages the churning connections got.
	ChurnReceived uint64            `json:"churn_received"`
	Start         soakResources     `json:"start"`
	End           soakResources     `json:"end"`
	Peak          soakResources     `json:"peak"`
	Errors        map[string]uint64 `json:"errors_by_reason"`
	Closes        map[string]uint64 `json:"closes_by_reason"`
	Handshake     map[string]uint64 `json:"handshake_errors_by_kind"`
	Dropped       map[string]uint64 `json:"messages_dropped_by_reason"`
	// PublishErrors are events the log could not take
	// (wsbroker_event_publish_errors_total); QueueDepthPeak is the largest
	// wsbroker_event_queue_depth seen.
	PublishErrors  uint64            `json:"event_publish_errors"`
	QueueDepthPeak float64           `json:"event_queue_depth_peak"`
	Events         map[string]uint64 `json:"events_by_type"`
	Stored         map[string]uint64 `json:"stored_by_type,omitempty"`
	Checks         []soakCheck       `json:"checks"`
}

func (r *soakReport) check(name string, ok bool, got, want any) {
	r.Checks = append(r.Checks, soakCheck{Name: name, Got: fmt.Sprint(got), Want: fmt.Sprint(want), OK: ok})
}

func (r *soakReport) failed() int {
	n := 0
	for _, c := range r.Checks {
		if !c.OK {
			n++
		}
	}
	return n
}

// soakBroker is a broker the soak started.
type soakBroker struct {
	dir     string
	dataDir string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

func startSoakBroker(ctx context.Context, o *soakOptions) (*soakBroker, error) {
	bin := o.brokerBin
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("soak: this executable: %w", err)
		}
	}
	dir, err := os.MkdirTemp("", "wsbroker-soak-")
	if err != nil {
		return nil, fmt.Errorf("soak: temp dir: %w", err)
	}
	secret := make([]byte, 32)
	_, _ = rand.Read(secret)
	o.hmacSecretFile = filepath.Join(dir, "secret")
	if err := os.WriteFile(o.hmacSecretFile, []byte(hex.EncodeToString(secret)), 0o600); err != nil {
		return nil, fmt.Errorf("soak: secret: %w", err)
	}
	wsPort, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	adminPort, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	o.url = "ws://127.0.0.1:" + strconv.Itoa(wsPort) + "/ws"
	o.adminURL = "http://127.0.0.1:" + strconv.Itoa(adminPort)
	o.issuer = "wsbroker-soak"
	logf, err := os.Create(filepath.Join(dir, "broker.log"))
	if err != nil {
		return nil, fmt.Errorf("soak: broker log: %w", err)
	}
	b := &soakBroker{dir: dir, dataDir: filepath.Join(dir, "data"), exited: make(chan struct{})}
	b.cmd = exec.Command(bin, "serve",
		"--listen", "127.0.0.1:"+strconv.Itoa(wsPort),
		"--admin-listen", "127.0.0.1:"+strconv.Itoa(adminPort),
		"--jwt-hmac-secret-file", o.hmacSecretFile,
		"--jwt-issuer", o.issuer,
		"--data-dir", b.dataDir,
		"--node-id", "soak",
		"--log-level", "error",
		"--max-conns-per-subject", "0",
		"--failure-burst", "0",
		"--shutdown-drain", "10s",
	)
	b.cmd.Args = append(b.cmd.Args, o.serveFlags...)
	b.cmd.Dir = dir
	b.cmd.Stdout, b.cmd.Stderr = logf, logf
	if err := b.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("soak: start %s serve: %w", bin, err)
	}
	go func() {
		b.waitErr = b.cmd.Wait()
		logf.Close()
		close(b.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(o.adminURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return b, nil
			}
		}
		select {
		case <-b.exited:
			return nil, fmt.Errorf("soak: the broker exited at start (%v); its log: %s", b.waitErr, filepath.Join(dir, "broker.log"))
		case <-ctx.Done():
			b.kill()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.kill()
			return nil, fmt.Errorf("soak: the broker is not ready after 30s; its log: %s", filepath.Join(dir, "broker.log"))
		}
	}
}

func (b *soakBroker) kill() {
	select {
	case <-b.exited:
	default:
		_ = b.cmd.Process.Kill()
		<-b.exited
	}
}

// stop sends SIGTERM and waits at most d; it returns the exit code.
func (b *soakBroker) stop(d time.Duration) (int, error) {
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return -1, fmt.Errorf("soak: SIGTERM: %w", err)
	}
	select {
	case <-b.exited:
	case <-time.After(d):
		b.kill()
		return -1, fmt.Errorf("soak: the broker did not exit within %s of SIGTERM", d)
	}
	var ee *exec.ExitError
	if errors.As(b.waitErr, &ee) {
		return ee.ExitCode(), nil
	}
	if b.waitErr != nil {
		return -1, b.waitErr
	}
	return 0, nil
}

func freeLoopbackPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("soak: free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// soak is one run.
type soak struct {
	o     *soakOptions
	admin string
	lgs   []*loadgen
	next  atomic.Uint64

	good, goodFailed        atomic.Uint64
	open, peakClient        atomic.Int64
	published, churnRecv    atomic.Uint64
	goodErrs                tally
	peakMu                  sync.Mutex
	peakConns, peakG, peakH float64
	peakDepth               float64
}

func runSoak(ctx context.Context, o *soakOptions, stdout, stderr io.Writer) error {
	if err := o.validate(); err != nil {
		return err
	}
	var sb *soakBroker
	target := o.url
	if o.url == "" {
		var err error
		if sb, err = startSoakBroker(ctx, o); err != nil {
			return err
		}
		defer func() {
			sb.kill()
			os.RemoveAll(sb.dir)
		}()
		target = "wsbroker serve (pid " + strconv.Itoa(sb.cmd.Process.Pid) + ") on " + o.url
	}
	u, err := url.Parse(o.url)
	if err != nil || u.Scheme != "ws" {
		return fmt.Errorf("soak: --url %q: want ws://host:port/path", o.url)
	}
	ip := net.ParseIP(u.Hostname())
	if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("soak: --url %q: the soak runs on loopback only", o.url)
	}
	secret, err := authn.LoadHMACSecret(o.hmacSecretFile)
	if err != nil {
		return fmt.Errorf("soak: %w", err)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	s := &soak{o: o, admin: strings.TrimRight(o.adminURL, "/")}
	m := &minter{secret: secret, issuer: o.issuer, ttl: time.Hour, queryParam: "access_token"}
	lo := &loadgenOptions{dialTimeout: o.dialTimeout}
	for i := range o.sourceAddrs {
		lg := &loadgen{o: lo, addr: addr, host: u.Host, path: path, m: m, kinds: make([]tally, len(badKinds))}
		if ip != nil && ip.To4() != nil {
			lg.localAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+i))}
		}
		s.lgs = append(s.lgs, lg)
	}

	base, err := scrapeMetrics(s.admin)
	if err != nil {
		return fmt.Errorf("soak: admin-url: %w", err)
	}
	baseRej, rejErr := s.rejections()
	rep := &soakReport{
		Target: target, Conns: o.conns, BadRatio: o.badRatio, PublishRate: o.publishRate, SourceAddrs: o.sourceAddrs,
		Start: soakResources{Goroutines: base["go_goroutines"], HeapInuseBytes: base["go_memstats_heap_inuse_bytes"]},
	}

	pubs, err := s.startPublishers(ctx)
	if err != nil {
		for _, p := range pubs {
			p.c.Close()
		}
		return err
	}
	runCtx, cancel := context.WithTimeout(ctx, o.duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.worker(ctx, runCtx, w)
		}()
	}
	sampleDone := make(chan struct{})
	go func() {
		defer close(sampleDone)
		s.sample(runCtx)
	}()
	var pubWG sync.WaitGroup
	if o.publishRate > 0 {
		every := time.Duration(float64(time.Second) * float64(len(pubs)) / o.publishRate)
		for _, p := range pubs {
			pubWG.Add(1)
			go func() {
				defer pubWG.Done()
				s.publishLoop(runCtx, p, every)
			}()
		}
	}
	wg.Wait()
	pubWG.Wait()
	<-sampleDone
	elapsed := time.Since(start)
	rep.Duration = elapsed.Round(time.Millisecond).String()

	// Every publisher must receive every message published (all of them
	// subscribed before the first publish).
	rep.Published = s.published.Load()
	rep.WantDelivered = rep.Published * uint64(len(pubs))
	waitUntil(ctx, 15*time.Second, func() bool { return deliveredTo(pubs) >= rep.WantDelivered })
	rep.Delivered = deliveredTo(pubs)
	for _, p := range pubs {
		p.close()
	}

	// Settle: the broker should give back what the churn took.
	var end map[string]float64
	waitUntil(ctx, o.settle, func() bool {
		end, err = scrapeMetrics(s.admin)
		return err == nil && end["wsbroker_connections"] == base["wsbroker_connections"] &&
			end["go_goroutines"] <= base["go_goroutines"]+float64(o.maxGoroutineGrowth) &&
			end["go_memstats_heap_inuse_bytes"] <= base["go_memstats_heap_inuse_bytes"]+float64(o.maxHeapGrowth)
	})
	if end == nil {
		return fmt.Errorf("soak: admin-url after the churn: %w", err)
	}
	rep.End = soakResources{Goroutines: end["go_goroutines"], HeapInuseBytes: end["go_memstats_heap_inuse_bytes"]}
	s.peakMu.Lock()
	rep.PeakServer = s.peakConns
	rep.Peak = soakResources{Goroutines: s.peakG, HeapInuseBytes: s.peakH}
	rep.QueueDepthPeak = s.peakDepth
	s.peakMu.Unlock()
	rep.PeakClient = s.peakClient.Load()
	rep.GoodUpgrades = s.good.Load()
	rep.ChurnReceived = s.churnRecv.Load()

	// Refused upgrades by the reason the broker answered ("401 expired");
	// "error: ..." results got no answer.
	badByReason := map[string]uint64{}
	var answered uint64
	rep.Errors = map[string]uint64{}
	for _, lg := range s.lgs {
		for i := range badKinds {
			for res, n := range lg.kinds[i].snapshot() {
				rep.Errors["bad "+badKinds[i].name+": "+res] += n
				rep.BadAttempts += n
				if f := strings.Fields(res); len(f) == 2 && !strings.HasPrefix(res, "error") {
					badByReason[f[1]] += n
					answered += n
				}
			}
		}
	}
	rep.UpgradesPerS = math.Round(float64(rep.GoodUpgrades+rep.BadAttempts)/elapsed.Seconds()*10) / 10
	for res, n := range s.goodErrs.snapshot() {
		rep.Errors["good: "+res] += n
	}
	rep.Closes = deltas(base, end, "wsbroker_connection_closes_total{reason=")
	rep.Events = deltas(base, end, "wsbroker_events_total{type=")
	rep.Handshake = deltas(base, end, "wsbroker_handshake_errors_total{kind=")
	rep.Dropped = deltas(base, end, "wsbroker_messages_dropped_total{reason=")
	if d := end["wsbroker_event_publish_errors_total"] - base["wsbroker_event_publish_errors_total"]; d > 0 {
		rep.PublishErrors = uint64(d)
	}

	accepted := rep.GoodUpgrades + uint64(len(pubs))
	rep.check("every good upgrade accepted", s.goodFailed.Load() == 0, s.goodFailed.Load(), "0 failed")
	wrong := uint64(0)
	for _, lg := range s.lgs {
		for i, k := range badKinds {
			for res, n := range lg.kinds[i].snapshot() {
				if sb != nil && res != strconv.Itoa(k.want.Status())+" "+k.want.String() {
					wrong += n
				}
			}
		}
	}
	if sb != nil {
		rep.check("every bad upgrade refused with its reason", wrong == 0, fmt.Sprintf("%d other answers", wrong), "0")
	}
	rep.check("messages delivered to the publishers", rep.Delivered == rep.WantDelivered, rep.Delivered, rep.WantDelivered)
	rep.check("connection.opened events = accepted upgrades", rep.Events["connection.opened"] == accepted, rep.Events["connection.opened"], accepted)
	rep.check("connection.closed events = connection.opened", rep.Events["connection.closed"] == rep.Events["connection.opened"],
		rep.Events["connection.closed"], rep.Events["connection.opened"])
	rep.check("upgrade.rejected events = refused upgrades", rep.Events["upgrade.rejected"] == answered,
		rep.Events["upgrade.rejected"], answered)
	rep.check("connections back to the baseline", end["wsbroker_connections"] == base["wsbroker_connections"],
		end["wsbroker_connections"], base["wsbroker_connections"])
	gGrowth := end["go_goroutines"] - base["go_goroutines"]
	rep.check("goroutine growth after the churn", gGrowth <= float64(o.maxGoroutineGrowth), gGrowth, fmt.Sprintf("<= %d", o.maxGoroutineGrowth))
	hGrowth := end["go_memstats_heap_inuse_bytes"] - base["go_memstats_heap_inuse_bytes"]
	rep.check("heap in use growth after the churn", hGrowth <= float64(o.maxHeapGrowth),
		fmt.Sprintf("%.1f MiB", hGrowth/(1<<20)), fmt.Sprintf("<= %.1f MiB", float64(o.maxHeapGrowth)/(1<<20)))
	if rejErr == nil {
		// The log's fold: sampled rejections carry a suppressed count, so
		// its totals by reason are exact once the held ones are released.
		var got map[string]uint64
		ok := waitUntil(ctx, 10*time.Second, func() bool {
			now, err := s.rejections()
			if err != nil {
				return false
			}
			got = subCounts(now, baseRej)
			return equalCounts(got, badByReason)
		})
		rep.check("rejections in the event log by reason = refused upgrades", ok, countsSummary(got, badByReason), countsSummary(badByReason, got))
		if p, err := s.presence(); err == nil {
			rep.check("presence in the event log after the churn", p == 0, p, 0)
		}
	}
	if sb != nil {
		code, err := sb.stop(30 * time.Second)
		rep.check("broker exits 0 on SIGTERM", err == nil && code == 0, fmt.Sprintf("%d %v", code, err), 0)
		// No /v1/rejections: the event log is off (--serve-flag=--events=false).
		if err == nil && rejErr == nil {
			stored, err := storedByType(ctx, sb.dataDir)
			if err != nil {
				rep.check("event stream readable", false, err, "nil")
			} else {
				rep.Stored = stored
				rep.check("stored connection.opened = accepted upgrades", stored["connection_opened"] == accepted, stored["connection_opened"], accepted)
				rep.check("stored connection.closed = stored connection.opened", stored["connection_closed"] == stored["connection_opened"],
					stored["connection_closed"], stored["connection_opened"])
				rep.check("stored node.started and node.stopped", stored["node_started"] == 1 && stored["node_stopped"] == 1,
					fmt.Sprintf("%d, %d", stored["node_started"], stored["node_stopped"]), "1, 1")
			}
		}
	}
	soakHTTP.CloseIdleConnections()
	if err := rep.write(stdout, o.jsonOut); err != nil {
		return err
	}
	if n := rep.failed(); n > 0 {
		return fmt.Errorf("soak: %d of %d checks failed", n, len(rep.Checks))
	}
	return nil
}

// worker churns one client slot until run ends. Handshakes run under ctx,
// not run: one under way when the run ends completes, so that the clients'
// counts and the broker's agree exactly.
func (s *soak) worker(ctx, run context.Context, w int) {
	rng := mrand.New(mrand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
	lg := s.lgs[w%len(s.lgs)]
	for n := 0; run.Err() == nil; n++ {
		if rng.Float64() < s.o.badRatio {
			lg.bad(ctx, int(s.next.Add(1)%uint64(len(badKinds))))
			continue
		}
		s.goodSession(ctx, run, lg, fmt.Sprintf("soak-%d-%d", w, n), rng)
	}
}

// goodSession opens a good connection, subscribes, holds it, closes it.
func (s *soak) goodSession(ctx, run context.Context, lg *loadgen, sub string, rng *mrand.Rand) {
	tok, err := lg.m.good(sub)
	if err != nil {
		s.goodErrs.add("mint: " + err.Error())
		s.goodFailed.Add(1)
		return
	}
	req := bearer(tok)
	if rng.IntN(2) == 1 {
		req = upgradeRequest{protocols: authn.Protocol + ", bearer." + tok}
	}
	res, c, err := lg.handshake(ctx, req)
	if err != nil {
		if !ended(ctx) {
			s.goodErrs.add(shortError(err))
			s.goodFailed.Add(1)
		}
		return
	}
	if c == nil {
		s.goodErrs.add(string(res))
		s.goodFailed.Add(1)
		return
	}
	s.good.Add(1)
	for n, p := s.open.Add(1), s.peakClient.Load(); n > p && !s.peakClient.CompareAndSwap(p, n); p = s.peakClient.Load() {
	}
	defer s.open.Add(-1)
	defer c.Close()
	if err := c.writeFrame(ws.NewTextFrame([]byte(`{"type":"subscribe","channel":"` + soakChannel + `","id":1}`))); err != nil {
		s.goodErrs.add("subscribe: " + shortError(err))
		return
	}
	done := make(chan error, 1)
	go func() { done <- drainFrames(c, &s.churnRecv) }()
	hold := time.NewTimer(s.o.hold/2 + time.Duration(rng.Int64N(int64(s.o.hold)+1)))
	defer hold.Stop()
	select {
	case err := <-done:
		// The server ended it early: that is a finding.
		s.goodErrs.add("closed by the server: " + shortError(err))
		return
	case <-hold.C:
	case <-run.Done():
	}
	_ = c.writeFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "soak")))
	_ = c.c.SetReadDeadline(time.Now().Add(s.o.dialTimeout))
	if err := <-done; err != nil && !errors.Is(err, errClosedNormally) {
		s.goodErrs.add("close: " + shortError(err))
	}
}

var errClosedNormally = errors.New("closed normally")

// drainFrames reads until the connection ends, counting data frames and
// answering pings; it returns errClosedNormally on a 1000 close.
func drainFrames(c *wsConn, recv *atomic.Uint64) error {
	for {
		h, err := ws.ReadHeader(c.br)
		if err != nil {
			return err
		}
		if !h.OpCode.IsControl() {
			if _, err := io.CopyN(io.Discard, c.br, h.Length); err != nil {
				return err
			}
			if h.OpCode != ws.OpContinuation {
				recv.Add(1)
			}
			continue
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, p); err != nil {
			return err
		}
		switch h.OpCode {
		case ws.OpPing:
			_ = c.writeFrame(ws.NewPongFrame(p))
		case ws.OpClose:
			code, text := ws.ParseCloseFrameData(p)
			if code == ws.StatusNormalClosure {
				return errClosedNormally
			}
			_ = c.writeFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, "")))
			return fmt.Errorf("close %d %s", code, text)
		}
	}
}

// publisher is a long-lived connection that publishes to soak and counts
// what it receives from it.
type publisher struct {
	c        *wsConn
	i        int
	received atomic.Uint64
	done     chan error
}

func (s *soak) startPublishers(ctx context.Context) ([]*publisher, error) {
	var out []*publisher
	for i := range s.o.publishers {
		lg := s.lgs[i%len(s.lgs)]
		tok, err := lg.m.good("soak-publisher-" + strconv.Itoa(i))
		if err != nil {
			return out, fmt.Errorf("soak: publisher token: %w", err)
		}
		res, c, err := lg.handshake(ctx, bearer(tok))
		if err != nil {
			return out, fmt.Errorf("soak: publisher %d: %w", i, err)
		}
		if c == nil {
			return out, fmt.Errorf("soak: publisher %d refused: %s", i, res)
		}
		p := &publisher{c: c, i: i, done: make(chan error, 1)}
		out = append(out, p)
		if err := c.writeFrame(ws.NewTextFrame([]byte(`{"type":"subscribe","channel":"` + soakChannel + `","id":1}`))); err != nil {
			return out, fmt.Errorf("soak: publisher %d subscribe: %w", i, err)
		}
		// The ack: subscribed before anyone publishes.
		_ = c.c.SetReadDeadline(time.Now().Add(s.o.dialTimeout))
		for {
			f, err := wsframe.Read(c.br, wsframe.DefaultLimit)
			if err != nil {
				return out, fmt.Errorf("soak: publisher %d subscribe ack: %w", i, err)
			}
			var m struct{ Type string }
			if f.Header.OpCode == ws.OpText && json.Unmarshal(f.Payload, &m) == nil {
				if m.Type == "ack" {
					break
				}
				return out, fmt.Errorf("soak: publisher %d subscribe: %s", i, f.Payload)
			}
		}
		_ = c.c.SetReadDeadline(time.Time{})
		go func() { p.done <- p.read() }()
	}
	return out, nil
}

// read counts the messages of soak until the connection ends.
func (p *publisher) read() error {
	for {
		f, err := wsframe.Read(p.c.br, wsframe.DefaultLimit)
		if err != nil {
			return err
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			_ = p.c.writeFrame(ws.NewPongFrame(f.Payload))
		case ws.OpClose:
			return nil
		case ws.OpText:
			if bytes.Contains(f.Payload, []byte(`"type":"message"`)) {
				p.received.Add(1)
			}
		}
	}
}

func (p *publisher) close() {
	_ = p.c.writeFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "soak done")))
	_ = p.c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	<-p.done
	p.c.Close()
}

func (s *soak) publishLoop(ctx context.Context, p *publisher, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		msg := `{"type":"publish","channel":"` + soakChannel + `","id":` + strconv.Itoa(n+1) +
			`,"data":{"p":` + strconv.Itoa(p.i) + `,"n":` + strconv.Itoa(n) + `}}`
		if err := p.c.writeFrame(ws.NewTextFrame([]byte(msg))); err != nil {
			return
		}
		s.published.Add(1)
	}
}

func deliveredTo(pubs []*publisher) uint64 {
	var n uint64
	for _, p := range pubs {
		n += p.received.Load()
	}
	return n
}

// sample records the broker's peak connections, goroutines and heap.
func (s *soak) sample(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m, err := scrapeMetrics(s.admin)
		if err != nil {
			continue
		}
		s.peakMu.Lock()
		s.peakConns = max(s.peakConns, m["wsbroker_connections"])
		s.peakG = max(s.peakG, m["go_goroutines"])
		s.peakH = max(s.peakH, m["go_memstats_heap_inuse_bytes"])
		s.peakDepth = max(s.peakDepth, m["wsbroker_event_queue_depth"])
		s.peakMu.Unlock()
	}
}

var soakHTTP = &http.Client{Timeout: 10 * time.Second}

// scrapeMetrics returns every sample of the broker's /metrics by its line
// key (name and labels as printed).
func scrapeMetrics(admin string) (map[string]float64, error) {
	resp, err := soakHTTP.Get(admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// deltas returns end-base of every sample whose key starts with prefix,
// keyed by the first label's value.
func deltas(base, end map[string]float64, prefix string) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range end {
		if !strings.HasPrefix(k, prefix) {
			continue
		}
		rest := strings.TrimPrefix(k, prefix)
		label := strings.Trim(strings.SplitN(rest, ",", 2)[0], `"}`)
		if d := v - base[k]; d > 0 {
			out[label] += uint64(d)
		}
	}
	return out
}

func (s *soak) rejections() (map[string]uint64, error) {
	resp, err := soakHTTP.Get(s.admin + "/v1/rejections")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/rejections: %s", resp.Status)
	}
	var r struct {
		ByReason map[string]uint64 `json:"by_reason"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("GET /v1/rejections: %w", err)
	}
	return r.ByReason, nil
}

func (s *soak) presence() (int, error) {
	resp, err := soakHTTP.Get(s.admin + "/v1/presence")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /v1/presence: %s", resp.Status)
	}
	var p struct {
		Connections int `json:"connections"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		return 0, fmt.Errorf("GET /v1/presence: %w", err)
	}
	return p.Connections, nil
}

func subCounts(now, base map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range now {
		if d := v - base[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// countsSummary is "N reasons, T in all", plus the reasons where a
// differs from b.
func countsSummary(a, b map[string]uint64) string {
	var total uint64
	var diff []string
	for k, v := range a {
		total += v
		if b[k] != v {
			diff = append(diff, k+" "+strconv.FormatUint(v, 10))
		}
	}
	sort.Strings(diff)
	out := fmt.Sprintf("%d reasons, %d in all", len(a), total)
	if len(diff) > 0 {
		out += " (" + strings.Join(diff, ", ") + ")"
	}
	return out
}

func equalCounts(a, b map[string]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// waitUntil polls f until it is true or d passes; it reports the last
// result.
func waitUntil(ctx context.Context, d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if f() {
			return true
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// storedByType opens the stopped broker's store read-only and counts the
// stored events by type (the subject token: connection_opened, ...).
func storedByType(ctx context.Context, dataDir string) (map[string]uint64, error) {
	octx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	l, err := eventlog.Open(octx, eventlog.Config{DataDir: dataDir, ReadOnly: true, Node: "soak-reader"})
	if err != nil {
		return nil, fmt.Errorf("soak: read the event log: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = l.Close(cctx)
	}()
	out, err := l.CountByType(octx)
	if err != nil {
		return nil, fmt.Errorf("soak: count the stored events: %w", err)
	}
	return out, nil
}

func (r *soakReport) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "target\t%s\n", r.Target)
	fmt.Fprintf(tw, "run\t%s, %d churning clients over %d source addresses, bad ratio %g, %g publishes/s\n",
		r.Duration, r.Conns, r.SourceAddrs, r.BadRatio, r.PublishRate)
	fmt.Fprintf(tw, "upgrades\t%d good, %d bad (%.1f/s)\n", r.GoodUpgrades, r.BadAttempts, r.UpgradesPerS)
	fmt.Fprintf(tw, "connections at peak\t%.0f on the broker, %d held by the clients\n", r.PeakServer, r.PeakClient)
	fmt.Fprintf(tw, "messages\t%d published, %d of %d delivered to the publishers, %d to the churning clients\n",
		r.Published, r.Delivered, r.WantDelivered, r.ChurnReceived)
	fmt.Fprintf(tw, "goroutines\t%.0f at start, %.0f at peak, %.0f after the churn\n", r.Start.Goroutines, r.Peak.Goroutines, r.End.Goroutines)
	fmt.Fprintf(tw, "heap in use\t%.1f MiB at start, %.1f MiB at peak, %.1f MiB after the churn\n",
		r.Start.HeapInuseBytes/(1<<20), r.Peak.HeapInuseBytes/(1<<20), r.End.HeapInuseBytes/(1<<20))
	fmt.Fprintf(tw, "events (metrics)\t%s\n", formatCounts(r.Events))
	if r.Stored != nil {
		fmt.Fprintf(tw, "events (stream)\t%s\n", formatCounts(r.Stored))
	}
	fmt.Fprintf(tw, "closes by reason\t%s\n", formatCounts(r.Closes))
	fmt.Fprintf(tw, "handshake errors\t%s\n", formatCounts(r.Handshake))
	fmt.Fprintf(tw, "messages dropped\t%s\n", formatCounts(r.Dropped))
	fmt.Fprintf(tw, "event log\t%d publish errors (events not stored), queue depth at peak %.0f\n", r.PublishErrors, r.QueueDepthPeak)
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "answers and errors\tcount")
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%d\n", k, r.Errors[k])
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "check\tgot\twant\tresult")
	for _, c := range r.Checks {
		res := "ok"
		if !c.OK {
			res = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, c.Got, c.Want, res)
	}
	return tw.Flush()
}

func formatCounts(m map[string]uint64) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %d", k, m[k])
	}
	return b.String()
}
