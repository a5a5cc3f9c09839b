package browser

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/broker/brokertest"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/internal/wsframe"
	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/tracing"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-browser-e2e")

// chromiumPath is Debian's Chromium, or $WSBROKER_CHROMIUM.
func chromiumPath() string {
	if p := os.Getenv("WSBROKER_CHROMIUM"); p != "" {
		return p
	}
	return "/usr/bin/chromium"
}

// newBrowser starts one headless Chromium for the test and returns its
// browser context; tabs are made from it with newTab.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := chromiumPath()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("chromium not found (CI installs the chromium package; set WSBROKER_CHROMIUM to another binary): %v",
			err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelBrowser()
		cancelAlloc()
	})
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start chromium %s: %v",
			path, err)
	}
	return bctx
}

// page is one tab on the test page, in a browser context of its own (no
// cookies shared with other tabs).
type page struct {
	t   *testing.T
	ctx context.Context
}

func newTab(t *testing.T, bctx context.Context, pageURL string) *page {
	t.Helper()
	ctx, cancel := chromedp.NewContext(bctx, chromedp.WithNewBrowserContext())
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("navigate %s: %v",
			pageURL, err)
	}
	p := &page{t: t, ctx: ctx}
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.ready === true`))
		if err != nil || !ok {
			return fmt.Errorf("page script not ready (%v)", err)
		}
		return nil
	})
	return p
}

// call runs fn(args...) on the page (a function of the test page script)
// and returns its JSON result in out (nil to ignore it).
func (p *page) call(out any, fn string, args ...any) {
	p.t.Helper()
	raw, err := json.Marshal(args)
	if err != nil {
		p.t.Fatal(err)
	}
	expr := fmt.Sprintf("(async () => JSON.stringify((await %s(...%s)) ?? null))()", fn, raw)
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](expr, chromedp.EvalAwaitPromise))
	if err != nil {
		p.t.Fatalf("%s: %v",
			fn, err)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(s), out); err != nil {
			p.t.Fatalf("%s result %q: %v",
				fn, s, err)
		}
	}
}

// rawRun is what the page saw of one `new WebSocket(...)`.
type rawRun struct {
	Opened     bool             `json:"opened"`
	Errored    bool             `json:"errored"`
	Closed     bool             `json:"closed"`
	Thrown     string           `json:"thrown"`
	Protocol   string           `json:"protocol"`
	Code       int              `json:"code"`
	Reason     string           `json:"reason"`
	WasClean   bool             `json:"wasClean"`
	Subscribed bool             `json:"subscribed"`
	Messages   []map[string]any `json:"messages"`
}

func (p *page) raw(id string) rawRun {
	p.t.Helper()
	var r rawRun
	p.call(&r, "getRaw", id)
	return r
}

// clientRun is what the page saw of a WsBrokerClient.
type clientRun struct {
	States     []clientState    `json:"states"`
	Errors     []clientError    `json:"errors"`
	Messages   []map[string]any `json:"messages"`
	Connected  bool             `json:"connected"`
	Subscribed bool             `json:"subscribed"`
	Failed     *clientError     `json:"failed"`
	Refreshed  int              `json:"refreshed"`
	TokenCalls int              `json:"tokenCalls"`
}

type clientState struct {
	State  string `json:"state"`
	Reason string `json:"reason"`
	Code   int    `json:"code"`
}

type clientError struct {
	Reason  string `json:"reason"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func (r clientRun) lastState() clientState {
	if len(r.States) == 0 {
		return clientState{}
	}
	return r.States[len(r.States)-1]
}

func (p *page) client(id string) clientRun {
	p.t.Helper()
	var r clientRun
	p.call(&r, "getClient", id)
	return r
}

// testPage is the page the browser loads: it imports the client module and
// exposes small functions the tests call through chromedp.
const testPage = `<!doctype html>
<meta charset="utf-8">
<title>wsbroker browser e2e</title>
<script type="module">
import { WsBrokerClient, refreshDelay, backoffDelay, decodeJwtPayload, tokenExpiry } from "/wsbroker.js";

window.refreshDelay = refreshDelay;
window.decodeJwtPayload = decodeJwtPayload;
window.tokenExpiry = tokenExpiry;
window.backoffWith = (n, opts, r) => backoffDelay(n, opts, () => r);

const runs = {}, sockets = {}, clients = {}, crun = {};

// startRaw opens a plain WebSocket and, once open, subscribes to channel.
window.startRaw = (id, url, protocols, channel) => {
  const r = { opened: false, errored: false, closed: false, thrown: "", protocol: "", code: 0,
    reason: "", wasClean: false, subscribed: false, messages: [] };
  runs[id] = r;
  let ws;
  try {
    ws = protocols === null ? new WebSocket(url) : new WebSocket(url, protocols);
  } catch (e) {
    r.thrown = e.name;
    r.closed = true;
    return r;
  }
  sockets[id] = ws;
  ws.onopen = () => {
    r.opened = true;
    r.protocol = ws.protocol;
    if (channel) ws.send(JSON.stringify({ type: "subscribe", channel, id: 1 }));
  };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "ack" && m.id === 1) r.subscribed = true;
    r.messages.push(m);
  };
  ws.onerror = () => { r.errored = true; };
  ws.onclose = (e) => {
    r.closed = true;
    r.code = e.code;
    r.reason = e.reason;
    r.wasClean = e.wasClean;
  };
  return r;
};
window.getRaw = (id) => runs[id];
window.closeRaw = (id) => { sockets[id] && sockets[id].close(1000); return true; };

window.setCookie = (name, value) => {
  document.cookie = name + "=" + value + "; path=/; SameSite=Lax";
  return true;
};

// startClient runs a WsBrokerClient whose token provider hands out tokens
// in order (the last one forever).
window.startClient = (id, opts) => {
  const r = { states: [], errors: [], messages: [], connected: false, subscribed: false,
    failed: null, refreshed: 0, tokenCalls: 0 };
  crun[id] = r;
  const tokens = opts.tokens || [];
  const c = new WsBrokerClient({
    url: opts.url,
    transport: opts.transport,
    getToken: async () => tokens[Math.min(r.tokenCalls++, tokens.length - 1)],
    onMessage: (m) => r.messages.push(m),
    onStateChange: (s, d) => r.states.push({ state: s, reason: d.reason || "", code: d.code || 0 }),
    onError: (e) => r.errors.push({ reason: e.reason, code: e.code, message: e.message }),
    reconnect: { initialDelayMs: 50, maxDelayMs: 200 },
    refresh: opts.refresh || {},
  });
  clients[id] = c;
  c.connect()
    .then(() => { r.connected = true; return opts.channel ? c.subscribe(opts.channel) : null; })
    .then(() => { r.subscribed = !!opts.channel; })
    .catch((e) => { r.failed = { reason: e.reason, code: e.code, message: e.message }; });
  return true;
};
window.getClient = (id) => crun[id];
window.closeClient = (id) => { clients[id] && clients[id].close(); return true; };
window.clientPublish = async (id, channel, data) => {
  try {
    const ack = await clients[id].publish(channel, data);
    return { ok: true, offset: ack.offset };
  } catch (e) {
    return { ok: false, reason: e.reason, code: e.code, message: String(e) };
  }
};

window.ready = true;
</script>
`

// newPageServer serves the test page and the client module on a loopback
// port of its own (a different origin from the broker's, same host).
func newPageServer(t *testing.T) *httptest.Server {
	t.Helper()
	js, err := os.ReadFile(filepath.Join("..", "..", "clients", "js", "wsbroker.js"))
	if err != nil {
		t.Fatalf("read the JS client: %v",
			err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, testPage)
	})
	mux.HandleFunc("GET /wsbroker.js", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Write(js)
	})
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// testBroker is an in-process broker on a loopback port, wired like
// `wsbroker serve` (extractor, verifier, metrics on a fresh registry,
// event sinks, optionally a tracer with an in-memory exporter).
type testBroker struct {
	t      *testing.T
	srv    *broker.Server
	addr   string
	reg    *prometheus.Registry
	events *eventRecorder
	spans  *tracetest.InMemoryExporter
	tp     *tracing.Provider
}

type brokerOpts struct {
	sources    string
	rejectMode broker.RejectMode
	origins    []string
	tracing    bool
	// addr is the listen address; a free loopback port when empty.
	addr string
}

func newTestBroker(t *testing.T, o brokerOpts) *testBroker {
	t.Helper()
	rec := &eventRecorder{}
	b := &testBroker{t: t, events: rec}
	bo := brokertest.Options{
		Secret:  testSecret,
		Sources: o.sources,
		Origins: o.origins,
		Sinks:   []event.Sink{rec},
		Addr:    o.addr,
		Config: func(c *broker.Config) {
			c.Node = "e2e"
			c.RejectMode = o.rejectMode
		},
	}
	if o.tracing {
		b.spans = tracetest.NewInMemoryExporter()
		tp, err := tracing.NewProvider(context.Background(), tracing.Config{Exporter: b.spans, SuccessRatio: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := tp.Shutdown(context.Background()); err != nil {
				t.Errorf("tracer shutdown: %v",
					err)
			}
		})
		b.tp = tp
		bo.Traces = tp
	}
	bb := brokertest.Start(t, bo)
	b.srv, b.addr, b.reg = bb.Server, bb.Addr, bb.Registry
	return b
}

// url is the broker's WebSocket URL with an optional query.
func (b *testBroker) url(query string) string {
	u := "ws://" + b.addr + "/ws"
	if query != "" {
		u += "?" + query
	}
	return u
}

// upgrades reads wsbroker_upgrades_total{result,reason,source}.
func (b *testBroker) upgrades(result, reason, source string) float64 {
	return testkit.Metric(b.t, b.reg, "wsbroker_upgrades_total", map[string]string{
		"result": result,
		"reason": reason,
		"source": source,
	})
}

// waitUpgrades polls until the counter reaches want: the broker counts
// after it has answered, so the page may see the outcome first.
func (b *testBroker) waitUpgrades(result, reason, source string, want float64) {
	b.t.Helper()
	testkit.CheckFor(b.t, 5*time.Second, 10*time.Millisecond, func() error {
		if got := b.upgrades(result, reason, source); got != want {
			return fmt.Errorf("wsbroker_upgrades_total{result=%q,reason=%q,source=%q} = %v, want %v", result, reason, source, got, want)
		}
		return nil
	})
}

// publish sends a message on channel from a Go client (header token) and
// waits for the ack.
func (b *testBroker) publish(channel string, data any) {
	t := b.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := ws.Dialer{
		Protocols: []string{authn.Protocol},
		Header: ws.HandshakeHeaderHTTP(http.Header{
			"Authorization": []string{"Bearer " + newToken(t, "go-publisher", time.Hour)},
		}),
	}
	c, br, _, err := d.Dial(ctx, b.url(""))
	if err != nil {
		t.Fatalf("publisher dial: %v",
			err)
	}
	defer c.Close()
	if br != nil {
		ws.PutReader(br)
	}
	msg, err := json.Marshal(map[string]any{"type": "publish", "channel": channel, "data": data, "id": 7})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := wsutil.WriteClientText(c, msg); err != nil {
		t.Fatalf("publish: %v",
			err)
	}
	raw, err := wsutil.ReadServerText(c)
	if err != nil {
		t.Fatalf("publish ack: %v",
			err)
	}
	var ack struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &ack); err != nil || ack.Type != "ack" {
		t.Fatalf("publish answered %s (%v), want an ack",
			raw, err)
	}
	_ = wsutil.WriteClientMessage(c, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
}

// eventRecorder keeps copies of the broker's events.
type eventRecorder struct {
	mu     sync.Mutex
	events []event.Event
}

func (r *eventRecorder) Observe(_ context.Context, e *event.Event) {
	r.mu.Lock()
	r.events = append(r.events, *e)
	r.mu.Unlock()
}

// find returns the events of type typ so far.
func (r *eventRecorder) find(typ event.Type) []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []event.Event
	for _, e := range r.events {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// newToken signs an HS256 token for sub valid for ttl (negative: expired).
func newToken(t testing.TB, sub string, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	iat := now
	if ttl < 0 {
		iat = now.Add(2 * ttl)
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":      sub,
		"iat":      iat.Unix(),
		"exp":      now.Add(ttl).Unix(),
		"channels": []string{"*"},
	}).SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fakeServer is a raw TCP server that completes WebSocket handshakes the
// way a misconfigured server or proxy would: answer returns the
// Sec-WebSocket-Protocol value to send ("" sends none) given the offered
// list.
type fakeServer struct {
	t       *testing.T
	ln      net.Listener
	answer  func(offered []string) string
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
	offered [][]string
}

func newFakeServer(t *testing.T, answer func(offered []string) string) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, ln: ln, answer: answer}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *fakeServer) url() string { return "ws://" + f.ln.Addr().String() + "/ws" }

func (f *fakeServer) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		f.wg.Add(1)
		go f.handle(c)
	}
}

// wsGUID is RFC 6455's key suffix.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func (f *fakeServer) handle(c net.Conn) {
	defer f.wg.Done()
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	var offered []string
	for _, line := range req.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(line, ",") {
			offered = append(offered, strings.TrimSpace(p))
		}
	}
	f.mu.Lock()
	f.offered = append(f.offered, offered)
	f.mu.Unlock()
	sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + wsGUID))
	var b strings.Builder
	b.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
	b.WriteString("Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n")
	if p := f.answer(offered); p != "" {
		b.WriteString("Sec-WebSocket-Protocol: " + p + "\r\n")
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		return
	}
	// Hold the connection until the client drops it or the test ends;
	// answer a close frame so that a client close is clean.
	for {
		fr, err := wsframe.Read(br, wsframe.DefaultLimit)
		if err != nil {
			return
		}
		if fr.Header.OpCode == ws.OpClose {
			_ = ws.WriteFrame(c, ws.NewCloseFrame(fr.Payload))
			return
		}
	}
}

func (f *fakeServer) close() {
	f.ln.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// handshakes returns how many upgrade requests reached the fake server.
func (f *fakeServer) handshakes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.offered)
}
