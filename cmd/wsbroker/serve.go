package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"time"

	"github.com/spf13/cobra"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/broker/cluster"
	"github.com/wsbroker/wsbroker/broker/eventlog"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
	"github.com/wsbroker/wsbroker/telemetry/tracing"
)

type serveOptions struct {
	listen, wsPath, adminListen  string
	hmacSecretFile               string
	keyFiles                     []string
	jwksURL                      string
	algs                         string
	issuer, audience             string
	leeway                       time.Duration
	sources                      string
	queryParam, cookie           string
	allowedOrigins               []string
	maxTokenBytes                int
	dev                          bool
	rejectMode                   string
	nodeID                       string
	logFormat, logLevel          string
	trustedProxies               string
	handshakeTimeout             time.Duration
	maxHandshakeBytes            int
	maxConnsPerSubject, maxConns int
	pingInterval, idleTimeout    time.Duration
	frameTimeout                 time.Duration
	adminPprof                   bool
	maxMessageSize               int
	sendQueue                    int
	channelClaim                 string
	subscribeClaim, publishClaim string
	maxSubscriptions             int
	shutdownDrain                time.Duration
	traceSuccessRatio            float64
	traceFailureRate             float64
	failureBurst                 int
	failureRate                  float64
	devTokenTTL                  time.Duration
	devTokenSub                  string
	expiryLeeway, jwksMinRefresh time.Duration
	writeTimeout                 time.Duration
	maxHandshakes                int
	// Event log (broker/eventlog).
	events         bool
	dataDir        string
	natsURLs       []string
	eventsMaxAge   time.Duration
	eventsMaxBytes int64
	eventsDedup    time.Duration
	// Cluster (broker/cluster, docs/cluster.md).
	natsCreds, natsTLSCA string
	streamReplicas       int
	historyMessages      int
	historyAge           time.Duration
	nodeLease            time.Duration
}

func newServeCmd() *cobra.Command {
	o := &serveOptions{}
	d := broker.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the broker",
		Long: "Run the broker. Every flag can also be set as WSBROKER_<FLAG_IN_UPPER_SNAKE>, " +
			"e.g. WSBROKER_JWT_ISSUER; a flag on the command line wins.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bindEnv(cmd, os.Getenv); err != nil {
				return err
			}
			return runServe(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr(), nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", ":8080", "WebSocket listen address (raw TCP, not net/http)")
	f.StringVar(&o.wsPath, "ws-path", d.WSPath, "the only path upgraded")
	f.StringVar(&o.adminListen, "admin-listen", ":9090", "admin HTTP address: /metrics, /healthz, /readyz, /v1/...")
	f.StringVar(&o.hmacSecretFile, "jwt-hmac-secret-file", "", "file holding the HS256/384/512 secret (surrounding white space trimmed)")
	f.StringArrayVar(&o.keyFiles, "jwt-key-file", nil, "PEM public key or JWKS JSON file (repeatable)")
	f.StringVar(&o.jwksURL, "jwks-url", "", "JWKS URL, refreshed hourly and on an unknown kid (rate-limited)")
	f.DurationVar(&o.jwksMinRefresh, "jwks-min-refresh", time.Minute, "minimum interval between unknown-kid JWKS refreshes")
	f.StringVar(&o.algs, "jwt-algs", "", "comma list of allowed algorithms (default: every algorithm of the configured keys' types; never none)")
	f.StringVar(&o.issuer, "jwt-issuer", "", "required iss")
	f.StringVar(&o.audience, "jwt-audience", "", "required aud")
	f.DurationVar(&o.leeway, "jwt-leeway", 30*time.Second, "clock skew tolerated on exp, nbf and iat")
	f.StringVar(&o.sources, "token-sources", "header,subprotocol", "enabled token sources in precedence order: header, subprotocol, query, cookie")
	f.StringVar(&o.queryParam, "token-query-param", "access_token", "query parameter of the query source")
	f.StringVar(&o.cookie, "token-cookie", "access_token", "cookie name of the cookie source")
	f.StringSliceVar(&o.allowedOrigins, "allowed-origins", nil, "allowed Origin values (scheme://host[:port], https://*.example.com, or *); required by the cookie source")
	f.IntVar(&o.maxTokenBytes, "max-token-bytes", 8192, "largest accepted token")
	f.BoolVar(&o.dev, "dev", false, "development mode: an ephemeral HS256 secret, and a ready token printed at start")
	f.StringVar(&o.devTokenSub, "dev-token-sub", "dev-user", "subject of the token printed by --dev")
	f.DurationVar(&o.devTokenTTL, "dev-token-ttl", time.Hour, "lifetime of the token printed by --dev")
	f.StringVar(&o.rejectMode, "reject-mode", "http", "how refusals reach the client: http (status + JSON body) or close (upgrade, then close 4000+status with the reason)")
	f.StringVar(&o.nodeID, "node-id", hostnameOr("node-1"), "this node's name in events and NATS subjects")
	f.StringVar(&o.logFormat, "log-format", "json", "log format: json or text")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&o.trustedProxies, "trusted-proxies", "", "comma list of proxy addresses or CIDRs whose X-Forwarded-For is believed")
	f.DurationVar(&o.handshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "bound on reading a handshake")
	f.IntVar(&o.maxHandshakeBytes, "max-handshake-bytes", d.MaxHandshakeBytes, "bound on a handshake's request line and headers")
	f.IntVar(&o.maxHandshakes, "max-handshakes", d.MaxHandshakes, "concurrent handshakes")
	f.IntVar(&o.failureBurst, "failure-burst", d.FailureBurst, "failed attempts allowed per client address before rate_limited (0 disables)")
	f.Float64Var(&o.failureRate, "failure-rate", d.FailureRate, "failed attempts per second regained per client address")
	f.IntVar(&o.maxConnsPerSubject, "max-conns-per-subject", d.MaxConnsPerSubject, "connections one subject may hold (0: no cap)")
	f.IntVar(&o.maxConns, "max-conns", d.MaxConns, "connections this node may hold")
	f.BoolVar(&o.adminPprof, "admin-pprof", false, "serve Go's /debug/pprof/ on the admin listener (CPU and heap profiles of a running broker)")
	f.DurationVar(&o.frameTimeout, "frame-timeout", d.FrameTimeout, "bound on receiving the rest of a frame once it started (slowloris)")
	f.DurationVar(&o.pingInterval, "ping-interval", d.PingInterval, "ping a connection quiet for this long")
	f.DurationVar(&o.idleTimeout, "idle-timeout", d.IdleTimeout, "close a connection quiet for this long (idle_timeout)")
	f.DurationVar(&o.writeTimeout, "write-timeout", d.WriteTimeout, "bound on one write to a connection")
	f.DurationVar(&o.expiryLeeway, "expiry-leeway", 0, "grace after a token's exp before an open connection is closed (token_expired)")
	f.IntVar(&o.maxMessageSize, "max-message-size", d.MaxMessageSize, "largest client message (message_too_large)")
	f.IntVar(&o.sendQueue, "send-queue", d.SendQueue, "queued outgoing messages before a connection is closed as slow_consumer")
	f.StringVar(&o.channelClaim, "channel-claim", d.ChannelClaim, "claim with the channel patterns a token may subscribe and publish to")
	f.StringVar(&o.subscribeClaim, "subscribe-claim", "", "claim with subscribe-only patterns (replaces channel-claim for subscribe)")
	f.StringVar(&o.publishClaim, "publish-claim", "", "claim with publish-only patterns (replaces channel-claim for publish)")
	f.IntVar(&o.maxSubscriptions, "max-subscriptions", d.MaxSubscriptions, "subscriptions per connection")
	f.DurationVar(&o.shutdownDrain, "shutdown-drain", d.ShutdownDrain, "bound on the wait for connections to close on SIGTERM")
	f.Float64Var(&o.traceSuccessRatio, "trace-success-ratio", 0.01, "share of successful upgrades whose traces are exported (failures always are, up to --trace-failure-rate)")
	f.Float64Var(&o.traceFailureRate, "trace-failure-rate", d.TraceFailureRate, "rejection traces exported per second and reason, at most (metrics and events still count every one; negative: no cap)")
	f.BoolVar(&o.events, "events", true, "append every event to the event log (NATS JetStream) and serve /v1/presence, /v1/connections, /v1/events")
	f.StringVar(&o.dataDir, "data-dir", defaultDataDir, "directory of the embedded event store (one process owns it)")
	f.StringSliceVar(&o.natsURLs, "nats-url", nil, "NATS URLs (comma list) of a NATS cluster: the event log, and channels shared with the other nodes (docs/cluster.md); default: a single node, NATS embedded on --data-dir")
	f.DurationVar(&o.eventsMaxAge, "events-max-age", 168*time.Hour, "events older than this are dropped from the log")
	f.Int64Var(&o.eventsMaxBytes, "events-max-bytes", 1<<30, "the log drops its oldest events beyond this size")
	f.DurationVar(&o.eventsDedup, "events-dedup-window", eventlog.DefaultDuplicatesWindow, "how long the log remembers a message id to drop a retried append (covers the 5s publish timeout and its retries; each id costs memory in NATS)")
	f.StringVar(&o.natsCreds, "nats-creds", "", "NATS credentials file (JWT and NKey seed) for --nats-url")
	f.StringVar(&o.natsTLSCA, "nats-tls-ca", "", "PEM file of the CA that signed the NATS servers' certificates (tls:// URLs)")
	f.IntVar(&o.streamReplicas, "stream-replicas", 1, "replicas of the event stream, the history stream and the node leases on a NATS cluster (3 for a three-server cluster)")
	f.IntVar(&o.historyMessages, "history-messages", 0, "messages kept per channel for subscribe since recovery (0: no history; needs --nats-url)")
	f.DurationVar(&o.historyAge, "history-age", 0, "age beyond which channel history is dropped (0: no age limit)")
	f.DurationVar(&o.nodeLease, "node-lease", cluster.DefaultLease, "a node whose lease in the NATS KV bucket wsbroker_nodes is not renewed for this long is dead: its connections leave presence (renewed every lease/3)")
	return cmd
}

func hostnameOr(def string) string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return def
	}
	for i := 0; i < len(h); i++ {
		if h[i] == '.' {
			return h[:i]
		}
	}
	return h
}

// running is a started broker, for tests of the command.
type running struct {
	wsAddr, adminAddr net.Addr
	devToken          string
}

// runServe starts everything, blocks until ctx ends, then drains. started,
// if not nil, is called once both listeners are up.
func runServe(ctx context.Context, o *serveOptions, stdout, stderr io.Writer, started func(running)) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return fmt.Errorf("log-level: %w", err)
	}
	logger, err := telemetry.NewLogger(stderr, o.logFormat, level)
	if err != nil {
		return err
	}
	sources, err := authn.ParseSources(o.sources)
	if err != nil {
		return fmt.Errorf("token-sources: %w", err)
	}
	ex, err := authn.NewExtractor(authn.ExtractConfig{
		Sources: sources, QueryParam: o.queryParam, Cookie: o.cookie, MaxTokenBytes: o.maxTokenBytes,
	})
	if err != nil {
		return err
	}
	origins, err := authn.ParseOrigins(o.allowedOrigins)
	if err != nil {
		return err
	}
	algs, err := authn.ParseAlgs(o.algs)
	if err != nil {
		return err
	}
	rejectMode, err := broker.ParseRejectMode(o.rejectMode)
	if err != nil {
		return err
	}
	proxies, err := broker.ParseProxies(o.trustedProxies)
	if err != nil {
		return err
	}

	reg := telemetry.NewRegistry()
	metrics := telemetry.NewMetrics(reg, buildVersion())

	tp, err := tracing.NewProvider(ctx, tracing.Config{
		ServiceVersion: buildVersion(), NodeID: o.nodeID, SuccessRatio: ratioOrNone(o.traceSuccessRatio),
	})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(sctx)
	}()

	vcfg := authn.VerifyConfig{
		Algs: algs, Issuer: o.issuer, Audience: o.audience, Leeway: o.leeway,
		KeyFiles: o.keyFiles, JWKSURL: o.jwksURL, JWKSMinRefresh: o.jwksMinRefresh,
		OnRefresh: keysRefreshHook(tp, metrics),
	}
	if o.hmacSecretFile != "" {
		if vcfg.HMACSecret, err = authn.LoadHMACSecret(o.hmacSecretFile); err != nil {
			return err
		}
	}
	if o.dev && len(vcfg.HMACSecret) == 0 {
		vcfg.HMACSecret = make([]byte, 32)
		if _, err := rand.Read(vcfg.HMACSecret); err != nil {
			return fmt.Errorf("dev secret: %w", err)
		}
	}
	verifier, err := authn.NewVerifier(ctx, vcfg)
	if err != nil {
		return err
	}

	cfg := broker.DefaultConfig()
	cfg.Node, cfg.WSPath, cfg.RejectMode, cfg.TrustedProxies = o.nodeID, o.wsPath, rejectMode, proxies
	cfg.HandshakeTimeout, cfg.MaxHandshakeBytes, cfg.MaxHandshakes = o.handshakeTimeout, o.maxHandshakeBytes, o.maxHandshakes
	cfg.FailureBurst, cfg.FailureRate = o.failureBurst, o.failureRate
	cfg.MaxConnsPerSubject, cfg.MaxConns = o.maxConnsPerSubject, o.maxConns
	cfg.PingInterval, cfg.IdleTimeout, cfg.WriteTimeout = o.pingInterval, o.idleTimeout, o.writeTimeout
	cfg.FrameTimeout = o.frameTimeout
	cfg.TraceFailureRate = o.traceFailureRate
	cfg.ExpiryLeeway, cfg.MaxMessageSize, cfg.SendQueue = o.expiryLeeway, o.maxMessageSize, o.sendQueue
	cfg.ChannelClaim, cfg.SubscribeClaim, cfg.PublishClaim = o.channelClaim, o.subscribeClaim, o.publishClaim
	cfg.MaxSubscriptions, cfg.ShutdownDrain = o.maxSubscriptions, o.shutdownDrain

	epoch := uint64(time.Now().UnixNano())
	sink := event.Sinks{metrics, telemetry.NewEventLogger(logger)}
	evlog, err := openEventLog(ctx, o, metrics, logger)
	if err != nil {
		return err
	}
	if evlog != nil {
		sink = append(sink, evlog)
		// Deferred: runs after srv.Shutdown below, so the stop follows
		// every close of the drain.
		defer stopEventLog(evlog, sink, o.nodeID, epoch, logger)
		startEventLog(ctx, sink, o.nodeID, epoch)
	}
	bus, err := openCluster(ctx, o, epoch, sink, evlog, logger)
	if err != nil {
		return err
	}
	if bus != nil {
		// Deferred after the event log's stop: runs before it, once the
		// server has drained.
		defer bus.Close()
	}
	deps := broker.Deps{
		Extractor: ex, Verifier: verifier, Origins: origins, Metrics: metrics,
		Sink:     sink,
		Logger:   logger,
		Redactor: redact.New(o.queryParam),
		Epoch:    epoch,
	}
	if bus != nil {
		deps.Bus = bus
	}
	if tp.Enabled() {
		deps.Traces = tp
	}
	srv, err := broker.New(cfg, deps)
	if err != nil {
		return err
	}
	wsLn, err := broker.Listen(ctx, o.listen)
	if err != nil {
		srv.Close()
		return fmt.Errorf("listen: %w", err)
	}
	adminLn, err := net.Listen("tcp", o.adminListen)
	if err != nil {
		wsLn.Close()
		srv.Close()
		return fmt.Errorf("admin-listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", telemetry.Handler(reg))
	if o.adminPprof {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case !srv.Ready():
			http.Error(w, "not ready: not accepting connections", http.StatusServiceUnavailable)
			return
		case !verifier.KeysLoaded(r.Context()):
			// Every token would be keys_unavailable: keep the load
			// balancer away until the JWKS has been fetched once.
			http.Error(w, "not ready: no verification key loaded yet (JWKS not fetched)", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
		// NATS unreachable does not make the node unready: it accepts
		// and serves connections (channels local to it) and queues its
		// events. Say so, for an operator reading /readyz.
		if evlog != nil && !evlog.Ready() {
			io.WriteString(w, evlog.Status()+"\n")
		}
		if bus != nil && !bus.Ready() {
			io.WriteString(w, "cluster not ready: NATS not set up yet; channels are local to this node\n")
		}
	})
	if evlog != nil {
		evlog.Register(mux)
	}
	admin := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(wsLn) }()
	go func() {
		if err := admin.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("admin: %w", err)
		}
	}()
	logger.Info("wsbroker started", "ws", wsLn.Addr().String(), "path", cfg.WSPath, "admin", adminLn.Addr().String(),
		"node", cfg.Node, "sources", o.sources, "algs", verifier.Algs(), "reject_mode", rejectMode.String(),
		"tracing", tp.Exporter())
	r := running{wsAddr: wsLn.Addr(), adminAddr: adminLn.Addr()}
	if o.dev {
		tok, err := devToken(vcfg.HMACSecret, o)
		if err != nil {
			return err
		}
		r.devToken = tok
		printDevBanner(stdout, wsLn.Addr(), cfg.WSPath, o.devTokenSub, tok)
	}
	if started != nil {
		started(r)
	}
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	logger.Info("wsbroker stopping", "drain", cfg.ShutdownDrain.String())
	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownDrain)
	defer cancel()
	serr := srv.Shutdown(sctx)
	_ = admin.Shutdown(sctx)
	return errors.Join(err, serr)
}

func ratioOrNone(r float64) float64 {
	if r <= 0 {
		return tracing.NoSuccesses
	}
	return r
}

func printDevBanner(w io.Writer, addr net.Addr, path, sub, tok string) {
	host := addr.String()
	if ta, ok := addr.(*net.TCPAddr); ok && ta.IP.IsUnspecified() {
		host = fmt.Sprintf("localhost:%d", ta.Port)
	}
	url := "ws://" + host + path
	fmt.Fprintf(w, `
wsbroker is running in --dev mode with an ephemeral HS256 secret.

A token for %q, valid for the next hour (channels: *):
  %s

From a browser console:
  const ws = new WebSocket(%q, ["wsbroker.v1", "bearer." + %q]);
  ws.onmessage = (e) => console.log(e.data);
  ws.onopen = () => ws.send(JSON.stringify({type: "subscribe", channel: "news", id: 1}));

From a terminal:
  wsbroker probe %s --token %s

`, sub, tok, url, tok, url, "<token>")
}

// openCluster joins the NATS cluster of --nats-url as this node: channel
// messages cross nodes, history when --history-messages > 0, and the node
// lease that lets the others reap this node's connections if it dies. No
// --nats-url: a single node, nil.
func openCluster(ctx context.Context, o *serveOptions, epoch uint64, sink event.Sink, evlog *eventlog.Log, logger *slog.Logger) (*cluster.Cluster, error) {
	if len(o.natsURLs) == 0 {
		if o.historyMessages > 0 {
			return nil, errors.New("history-messages: channel history lives in NATS JetStream; set --nats-url")
		}
		return nil, nil
	}
	if o.streamReplicas < 1 {
		return nil, fmt.Errorf("stream-replicas: %d, want >= 1", o.streamReplicas)
	}
	nopts, err := cluster.NATSOptions(o.natsCreds, o.natsTLSCA)
	if err != nil {
		return nil, err
	}
	cfg := cluster.Config{
		NATSURLs:        o.natsURLs,
		Options:         nopts,
		Node:            o.nodeID,
		Epoch:           epoch,
		HistoryMessages: o.historyMessages,
		HistoryAge:      o.historyAge,
		Replicas:        o.streamReplicas,
		Lease:           o.nodeLease,
		Logger:          logger,
	}
	if evlog != nil && evlog.Projection() != nil {
		proj := evlog.Projection()
		cfg.Sink = sink
		cfg.Present = func() []cluster.NodeEpoch {
			conns := proj.Connections("")
			out := make([]cluster.NodeEpoch, 0, len(conns))
			for _, c := range conns {
				out = append(out, cluster.NodeEpoch{Node: c.Node, Epoch: c.Epoch})
			}
			return out
		}
	}
	c, err := cluster.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// keysRefreshHook counts every JWKS fetch and traces it as keys.refresh
// (a trace of its own: fetches run in the background or on an unknown kid,
// whose upgrade's spans are only built afterwards, from its event).
func keysRefreshHook(tp *tracing.Provider, m *telemetry.Metrics) authn.RefreshHook {
	return func(ctx context.Context) func(error) {
		if !tp.Enabled() {
			return m.KeysRefresh
		}
		_, span := tp.Tracer().Start(ctx, "keys.refresh", trace.WithSpanKind(trace.SpanKindClient))
		return func(err error) {
			m.KeysRefresh(err)
			if err != nil {
				span.SetStatus(codes.Error, err.Error())
				span.SetAttributes(attribute.String("error.type", "keys_refresh_failed"))
			}
			span.End()
		}
	}
}
