package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"
	"github.com/spf13/cobra"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/wsframe"
)

type loadgenOptions struct {
	url             string
	hmacSecretFile  string
	good            int
	badPerReason    int
	duration        time.Duration
	interval        time.Duration
	publishInterval time.Duration
	issuer          string
	audience        string
	tokenTTL        time.Duration
	queryParam      string
	origin          string
	dialTimeout     time.Duration
	jsonSummary     bool
}

func newLoadgenCmd() *cobra.Command {
	o := &loadgenOptions{}
	cmd := &cobra.Command{
		Use:   "loadgen",
		Short: "Generate good and bad upgrades against a broker (demo and tests)",
		Long: "Open --good long-lived connections that subscribe to the channel demo and publish now and " +
			"then, and every --interval send --bad-per-reason broken upgrades of each kind (one per rejection " +
			"reason a client can cause: " + strings.Join(badKindNames(), ", ") + "). " +
			"At the end (--duration, or SIGINT/SIGTERM) print what each kind got back.\n\n" +
			"Some kinds only fail when the broker is configured for them: wrong_issuer needs serve --jwt-issuer " +
			"(pass the same value as --jwt-issuer here so that good tokens carry it), source_disabled needs the " +
			"query source to be disabled (the default). The summary shows what was observed, not what was wanted.\n\n" +
			"Every flag can also be set as WSBROKER_<FLAG_IN_UPPER_SNAKE>.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := bindEnv(cmd, os.Getenv); err != nil {
				return err
			}
			return runLoadgen(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "ws://127.0.0.1:8080/ws", "broker WebSocket URL (ws:// only)")
	f.StringVar(&o.hmacSecretFile, "jwt-hmac-secret-file", "", "file holding the broker's HS256 secret, to mint tokens (required)")
	f.StringVar(&o.hmacSecretFile, "hmac-secret-file", "", "alias of --jwt-hmac-secret-file")
	_ = f.MarkHidden("hmac-secret-file")
	f.IntVar(&o.good, "good", 1, "long-lived good connections")
	f.IntVar(&o.badPerReason, "bad-per-reason", 1, "bad upgrades of each kind per --interval")
	f.DurationVar(&o.duration, "duration", 0, "how long to run (0: until SIGINT/SIGTERM)")
	f.DurationVar(&o.interval, "interval", time.Second, "period of the bad upgrades")
	f.DurationVar(&o.publishInterval, "publish-interval", 5*time.Second, "mean period of each good connection's publish to demo (0: never)")
	f.StringVar(&o.issuer, "jwt-issuer", "", "iss of good tokens (the broker's --jwt-issuer)")
	f.StringVar(&o.audience, "jwt-audience", "", "aud of good tokens (the broker's --jwt-audience)")
	f.DurationVar(&o.tokenTTL, "token-ttl", time.Hour, "lifetime of good tokens; a connection closed at expiry reconnects with a new one")
	f.StringVar(&o.queryParam, "token-query-param", "access_token", "query parameter of the source_disabled kind (the broker's --token-query-param)")
	f.StringVar(&o.origin, "origin", "", "Origin header of every upgrade (none if empty)")
	f.DurationVar(&o.dialTimeout, "dial-timeout", 5*time.Second, "bound on connecting and on each handshake")
	f.BoolVar(&o.jsonSummary, "json", false, "print the summary as JSON")
	return cmd
}

// badKind is one way of getting an upgrade refused.
type badKind struct {
	name string
	// want is the reason a broker configured for it answers.
	want authn.Reason
	req  func(m *minter) (upgradeRequest, error)
}

// upgradeRequest is the variable part of a handshake.
type upgradeRequest struct {
	query     string // "" or "?..."
	headers   [][2]string
	protocols string
}

var badKinds = []badKind{
	{
		name: "missing_token",
		want: authn.ReasonMissingToken,
		req: func(*minter) (upgradeRequest, error) {
			return upgradeRequest{protocols: authn.Protocol}, nil
		},
	},
	{
		name: "source_disabled",
		want: authn.ReasonSourceDisabled,
		req: func(m *minter) (upgradeRequest, error) {
			tok, err := m.good("loadgen-query")
			return upgradeRequest{query: "?" + url.QueryEscape(m.queryParam) + "=" + tok, protocols: authn.Protocol}, err
		},
	},
	{
		name: "malformed_authorization",
		want: authn.ReasonMalformedAuthorization,
		req: func(*minter) (upgradeRequest, error) {
			return upgradeRequest{headers: [][2]string{{"Authorization", "Basic bG9hZGdlbjpub3QtYS1iZWFyZXI="}}}, nil
		},
	},
	{
		name: "malformed_subprotocol",
		want: authn.ReasonMalformedSubprotocol,
		req: func(*minter) (upgradeRequest, error) {
			return upgradeRequest{protocols: authn.Protocol + ", bearer."}, nil
		},
	},
	{
		name: "protocol_not_offered",
		want: authn.ReasonProtocolNotOffered,
		req: func(m *minter) (upgradeRequest, error) {
			tok, err := m.good("loadgen-subprotocol")
			return upgradeRequest{protocols: "bearer." + tok}, err
		},
	},
	{
		name: "ambiguous_token",
		want: authn.ReasonAmbiguousToken,
		req: func(m *minter) (upgradeRequest, error) {
			a, err := m.good("loadgen-a")
			if err != nil {
				return upgradeRequest{}, err
			}
			b, err := m.good("loadgen-b")
			return upgradeRequest{headers: [][2]string{{"Authorization", "Bearer " + a}}, protocols: authn.Protocol + ", bearer." + b}, err
		},
	},
	{
		name: "malformed_token",
		want: authn.ReasonMalformedToken,
		req: func(*minter) (upgradeRequest, error) {
			return bearer("this-is-not-a-jwt"), nil
		},
	},
	{
		name: "alg_not_allowed",
		want: authn.ReasonAlgNotAllowed,
		req: func(m *minter) (upgradeRequest, error) {
			return bearer(m.unsigned(m.claims("loadgen-none"))), nil
		},
	},
	{
		name: "bad_signature",
		want: authn.ReasonBadSignature,
		req: func(m *minter) (upgradeRequest, error) {
			tok, err := signToken("HS256", "", m.claims("loadgen-forged"), []byte("not-the-broker-secret-loadgen-0123456789"))
			return bearer(tok), err
		},
	},
	{
		name: "expired",
		want: authn.ReasonExpired,
		req: func(m *minter) (upgradeRequest, error) {
			c := m.claims("loadgen-expired")
			now := time.Now()
			c["iat"], c["exp"] = now.Add(-2*time.Hour).Unix(), now.Add(-time.Hour).Unix()
			return m.signed(c)
		},
	},
	{
		name: "not_yet_valid",
		want: authn.ReasonNotYetValid,
		req: func(m *minter) (upgradeRequest, error) {
			c := m.claims("loadgen-early")
			c["nbf"] = time.Now().Add(time.Hour).Unix()
			return m.signed(c)
		},
	},
	{
		name: "wrong_issuer",
		want: authn.ReasonWrongIssuer,
		req: func(m *minter) (upgradeRequest, error) {
			c := m.claims("loadgen-issuer")
			c["iss"] = "https://wrong-issuer.loadgen.invalid"
			return m.signed(c)
		},
	},
	{
		name: "missing_claim",
		want: authn.ReasonMissingClaim,
		req: func(m *minter) (upgradeRequest, error) {
			c := m.claims("")
			delete(c, "sub")
			return m.signed(c)
		},
	},
}

func badKindNames() []string {
	out := make([]string, len(badKinds))
	for i, k := range badKinds {
		out[i] = k.name
	}
	return out
}

func bearer(tok string) upgradeRequest {
	return upgradeRequest{headers: [][2]string{{"Authorization", "Bearer " + tok}}}
}

// minter mints the tokens of the load.
type minter struct {
	secret     []byte
	issuer     string
	audience   string
	ttl        time.Duration
	queryParam string
	seq        atomic.Uint64
}

func (m *minter) claims(sub string) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"sub":      sub,
		"iat":      now.Unix(),
		"exp":      now.Add(m.ttl).Unix(),
		"jti":      strconv.FormatUint(m.seq.Add(1), 36),
		"channels": []string{"*"},
	}
	if m.issuer != "" {
		c["iss"] = m.issuer
	}
	if m.audience != "" {
		c["aud"] = m.audience
	}
	return c
}

func (m *minter) good(sub string) (string, error) {
	return signToken("HS256", "", m.claims(sub), m.secret)
}

func (m *minter) signed(c jwt.MapClaims) (upgradeRequest, error) {
	tok, err := signToken("HS256", "", c, m.secret)
	return bearer(tok), err
}

// unsigned returns an alg=none token, which the broker always refuses.
func (m *minter) unsigned(c jwt.MapClaims) string {
	payload, _ := json.Marshal(c)
	enc := base64.RawURLEncoding
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc.EncodeToString(payload) + "."
}

// upgradeResult is what one handshake got back: "101" when upgraded, else
// the status and the X-Wsbroker-Reason ("401 expired"); in reject mode
// close, "close 4401 expired".
type upgradeResult string

// loadSummary is the report printed at the end.
type loadSummary struct {
	Duration string        `json:"duration"`
	Good     goodSummary   `json:"good"`
	Bad      []kindSummary `json:"bad"`
}

type goodSummary struct {
	Clients   int    `json:"clients"`
	Connects  uint64 `json:"connects"`
	Failures  uint64 `json:"failures"`
	Published uint64 `json:"published"`
	Received  uint64 `json:"received"`
	// Results counts handshake outcomes of the good connections.
	Results map[string]uint64 `json:"results"`
}

type kindSummary struct {
	Kind     string            `json:"kind"`
	Want     string            `json:"want"`
	Attempts uint64            `json:"attempts"`
	Results  map[string]uint64 `json:"results"`
}

// tally counts results by key, safe for concurrent use.
type tally struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (t *tally) add(k string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]uint64{}
	}
	t.m[k]++
}

func (t *tally) snapshot() map[string]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]uint64, len(t.m))
	for k, v := range t.m {
		out[k] = v
	}
	return out
}

type loadgen struct {
	o      *loadgenOptions
	addr   string // host:port
	host   string // Host header
	path   string // path and query of the URL
	m      *minter
	kinds  []tally
	goodRs tally
	// localAddr, if set, is the source address of every dial (soak spreads
	// its connections over several loopback addresses).
	localAddr net.Addr

	connects, failures, published, received atomic.Uint64
}

func runLoadgen(ctx context.Context, o *loadgenOptions, stdout io.Writer) error {
	if o.hmacSecretFile == "" {
		return errors.New("loadgen: --jwt-hmac-secret-file is required to mint tokens")
	}
	if o.good < 0 || o.badPerReason < 0 {
		return fmt.Errorf("loadgen: --good %d and --bad-per-reason %d must not be negative", o.good, o.badPerReason)
	}
	if o.interval <= 0 {
		return fmt.Errorf("loadgen: --interval %s must be positive", o.interval)
	}
	u, err := url.Parse(o.url)
	if err != nil {
		return fmt.Errorf("loadgen: --url: %w", err)
	}
	if u.Scheme != "ws" {
		return fmt.Errorf("loadgen: --url %q: only ws:// is supported", o.url)
	}
	secret, err := authn.LoadHMACSecret(o.hmacSecretFile)
	if err != nil {
		return fmt.Errorf("loadgen: %w", err)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	lg := &loadgen{
		o:     o,
		addr:  addr,
		host:  u.Host,
		path:  path,
		m:     &minter{secret: secret, issuer: o.issuer, audience: o.audience, ttl: o.tokenTTL, queryParam: o.queryParam},
		kinds: make([]tally, len(badKinds)),
	}
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < o.good; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lg.goodClient(ctx, i)
		}()
	}
	if o.badPerReason > 0 && len(badKinds) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lg.badLoop(ctx)
		}()
	}
	wg.Wait()
	return lg.summary(time.Since(start)).write(stdout, o.jsonSummary)
}

// badLoop sends every kind badPerReason times per interval, the first round
// at once; a round still running when the next is due delays it.
func (lg *loadgen) badLoop(ctx context.Context) {
	ticker := time.NewTicker(lg.o.interval)
	defer ticker.Stop()
	for {
		var wg sync.WaitGroup
		for i := range badKinds {
			for j := 0; j < lg.o.badPerReason; j++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					lg.bad(ctx, i)
				}()
			}
		}
		wg.Wait()
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

func (lg *loadgen) bad(ctx context.Context, i int) {
	k := badKinds[i]
	req, err := k.req(lg.m)
	if err != nil {
		lg.kinds[i].add("error: " + err.Error())
		return
	}
	res, c, err := lg.handshake(ctx, req)
	if err != nil {
		if ended(ctx) {
			return // cut off by the end of the run: not an attempt
		}
		lg.kinds[i].add("error: " + shortError(err))
		return
	}
	if c != nil {
		res = closeResult(c, lg.o.dialTimeout)
		c.Close()
	}
	lg.kinds[i].add(string(res))
}

// closeResult tells an upgrade refused in reject mode close (a close frame
// at once) from an accepted one (nothing within a short wait).
func closeResult(c *wsConn, timeout time.Duration) upgradeResult {
	_ = c.c.SetReadDeadline(time.Now().Add(min(timeout, 500*time.Millisecond)))
	for {
		f, err := wsframe.Read(c.br, wsframe.DefaultLimit)
		if err != nil {
			return "101"
		}
		if f.Header.OpCode == ws.OpClose {
			code, text := ws.ParseCloseFrameData(f.Payload)
			return upgradeResult("close " + strconv.Itoa(int(code)) + " " + text)
		}
	}
}

// ended reports whether the run is over. A dial bounded by the run's
// deadline may fail with a timeout a moment before ctx itself says so.
func ended(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

func shortError(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.Is(err, errRefused):
		return "connection refused"
	}
	return err.Error()
}

var errRefused = errors.New("connection refused")

// wsConn is an upgraded client connection.
type wsConn struct {
	c  net.Conn
	br *bufio.Reader
	mu sync.Mutex // serialises frame writes (data and pongs)
}

func (w *wsConn) Close() error { return w.c.Close() }

func (w *wsConn) writeFrame(f ws.Frame) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	_ = w.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return ws.WriteFrame(w.c, ws.MaskFrameInPlace(f))
}

// handshake sends one upgrade request and reads the answer. It returns a
// connection only when the server switched protocols.
func (lg *loadgen) handshake(ctx context.Context, req upgradeRequest) (upgradeResult, *wsConn, error) {
	d := net.Dialer{Timeout: lg.o.dialTimeout, LocalAddr: lg.localAddr}
	c, err := d.DialContext(ctx, "tcp", lg.addr)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "dial" && !oe.Timeout() && ctx.Err() == nil {
			return "", nil, fmt.Errorf("dial %s: %w", lg.addr, errRefused)
		}
		return "", nil, fmt.Errorf("dial %s: %w", lg.addr, err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	_ = c.SetDeadline(time.Now().Add(lg.o.dialTimeout))
	var key [16]byte
	_, _ = rand.Read(key[:])
	var b strings.Builder
	b.WriteString("GET ")
	b.WriteString(lg.path)
	if req.query != "" {
		if strings.Contains(lg.path, "?") {
			b.WriteString("&" + req.query[1:])
		} else {
			b.WriteString(req.query)
		}
	}
	b.WriteString(" HTTP/1.1\r\nHost: ")
	b.WriteString(lg.host)
	b.WriteString("\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ")
	b.WriteString(base64.StdEncoding.EncodeToString(key[:]))
	b.WriteString("\r\nUser-Agent: wsbroker-loadgen/")
	b.WriteString(buildVersion())
	b.WriteString("\r\n")
	if lg.o.origin != "" {
		b.WriteString("Origin: " + lg.o.origin + "\r\n")
	}
	if req.protocols != "" {
		b.WriteString("Sec-WebSocket-Protocol: " + req.protocols + "\r\n")
	}
	for _, h := range req.headers {
		b.WriteString(h[0] + ": " + h[1] + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		c.Close()
		return "", nil, fmt.Errorf("send handshake: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return "", nil, fmt.Errorf("read handshake answer: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		c.Close()
		res := strconv.Itoa(resp.StatusCode)
		if r := resp.Header.Get("X-Wsbroker-Reason"); r != "" {
			res += " " + r
		}
		return upgradeResult(res), nil, nil
	}
	_ = c.SetDeadline(time.Time{})
	return "101", &wsConn{c: c, br: br}, nil
}

// goodClient keeps one good connection open: subscribe to demo, publish
// now and then, answer pings, reconnect (after a pause) when it ends.
func (lg *loadgen) goodClient(ctx context.Context, i int) {
	sub := "loadgen-" + strconv.Itoa(i)
	for ctx.Err() == nil {
		err := lg.goodSession(ctx, i, sub)
		if ended(ctx) {
			return
		}
		if err != nil {
			lg.failures.Add(1)
		}
		pause := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			pause.Stop()
			return
		case <-pause.C:
		}
	}
}

func (lg *loadgen) goodSession(ctx context.Context, i int, sub string) error {
	tok, err := lg.m.good(sub)
	if err != nil {
		return err
	}
	// Half the clients use the Authorization header, half the subprotocol,
	// so that both sources show up in the metrics.
	req := bearer(tok)
	if i%2 == 1 {
		req = upgradeRequest{protocols: authn.Protocol + ", bearer." + tok}
	}
	res, c, err := lg.handshake(ctx, req)
	if err != nil {
		if !ended(ctx) {
			lg.goodRs.add("error: " + shortError(err))
		}
		return err
	}
	lg.goodRs.add(string(res))
	if c == nil {
		return fmt.Errorf("good upgrade refused: %s", res)
	}
	lg.connects.Add(1)
	defer c.Close()
	stop := context.AfterFunc(ctx, func() {
		_ = c.writeFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "loadgen done")))
		_ = c.c.SetReadDeadline(time.Now().Add(time.Second))
	})
	defer stop()
	if err := c.writeFrame(ws.NewTextFrame([]byte(`{"type":"subscribe","channel":"demo","id":1}`))); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- lg.publishLoop(ctx, c, i) }()
	rerr := lg.readLoop(c)
	c.Close()
	perr := <-done
	if ctx.Err() != nil {
		return nil
	}
	return errors.Join(rerr, perr)
}

// readLoop reads until the connection ends, answering pings and closes.
func (lg *loadgen) readLoop(c *wsConn) error {
	for {
		f, err := wsframe.Read(c.br, wsframe.DefaultLimit)
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		switch f.Header.OpCode {
		case ws.OpPing:
			if err := c.writeFrame(ws.NewPongFrame(f.Payload)); err != nil {
				return fmt.Errorf("pong: %w", err)
			}
		case ws.OpClose:
			code, text := ws.ParseCloseFrameData(f.Payload)
			_ = c.writeFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(code, "")))
			if code == ws.StatusNormalClosure {
				return nil
			}
			return fmt.Errorf("closed by the server: %d %s", code, text)
		case ws.OpText, ws.OpBinary, ws.OpContinuation:
			lg.received.Add(1)
		}
	}
}

func (lg *loadgen) publishLoop(ctx context.Context, c *wsConn, i int) error {
	if lg.o.publishInterval <= 0 {
		return nil
	}
	for n := 1; ; n++ {
		t := time.NewTimer(jitter(lg.o.publishInterval))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		msg := fmt.Sprintf(`{"type":"publish","channel":"demo","id":%d,"data":{"from":"loadgen-%d","n":%d}}`, n+1, i, n)
		if err := c.writeFrame(ws.NewTextFrame([]byte(msg))); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("publish: %w", err)
		}
		lg.published.Add(1)
	}
}

// jitter returns d ± 50%.
func jitter(d time.Duration) time.Duration {
	n, err := rand.Int(rand.Reader, big.NewInt(int64(d)))
	if err != nil {
		return d
	}
	return d/2 + time.Duration(n.Int64())
}

func (lg *loadgen) summary(elapsed time.Duration) loadSummary {
	s := loadSummary{
		Duration: elapsed.Round(time.Millisecond).String(),
		Good: goodSummary{
			Clients:   lg.o.good,
			Connects:  lg.connects.Load(),
			Failures:  lg.failures.Load(),
			Published: lg.published.Load(),
			Received:  lg.received.Load(),
			Results:   lg.goodRs.snapshot(),
		},
	}
	for i, k := range badKinds {
		ks := kindSummary{Kind: k.name, Want: k.want.String(), Results: lg.kinds[i].snapshot()}
		for _, n := range ks.Results {
			ks.Attempts += n
		}
		s.Bad = append(s.Bad, ks)
	}
	return s
}

func (s loadSummary) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(s); err != nil {
			return fmt.Errorf("loadgen: write summary: %w", err)
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "loadgen ran %s\n\n", s.Duration)
	fmt.Fprintf(tw, "good clients %d: %d connects, %d failures, %d published, %d received; handshakes: %s\n\n",
		s.Good.Clients, s.Good.Connects, s.Good.Failures, s.Good.Published, s.Good.Received, formatResults(s.Good.Results))
	fmt.Fprintln(tw, "KIND\tATTEMPTS\tWANT\tOBSERVED\t")
	for _, k := range s.Bad {
		mark := ""
		if k.Attempts > 0 && !k.got() {
			mark = "  (never the wanted reason: is the broker configured for it?)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s%s\t\n", k.Kind, k.Attempts, k.Want, formatResults(k.Results), mark)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("loadgen: write summary: %w", err)
	}
	if s.rateLimited() {
		_, err := fmt.Fprintln(w, "\nSome attempts were refused as rate_limited: the broker limits failed attempts per client "+
			"address (serve --failure-burst, --failure-rate); run it with --failure-burst 0 to see every reason.")
		if err != nil {
			return fmt.Errorf("loadgen: write summary: %w", err)
		}
	}
	return nil
}

// rateLimited reports whether any attempt was refused as rate_limited.
func (s loadSummary) rateLimited() bool {
	for _, k := range s.Bad {
		for r := range k.Results {
			if strings.HasSuffix(r, " "+authn.ReasonRateLimited.String()) {
				return true
			}
		}
	}
	return false
}

// got reports whether the wanted reason was observed at least once.
func (k kindSummary) got() bool {
	for r := range k.Results {
		if strings.HasSuffix(r, " "+k.Want) {
			return true
		}
	}
	return false
}

func formatResults(m map[string]uint64) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + " ×" + strconv.FormatUint(m[k], 10)
	}
	return strings.Join(parts, ", ")
}
