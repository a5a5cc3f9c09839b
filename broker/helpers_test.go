package broker

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/internal/wsframe"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-test-secret")

// testBroker is a Server on a loopback port with its registry and a record
// of its events.
type testBroker struct {
	t       testing.TB
	srv     *Server
	addr    string
	reg     *prometheus.Registry
	events  *eventRecorder
	rsaKey  *rsa.PrivateKey
	keyFile string
}

type brokerOpts struct {
	cfg     func(*Config)
	extract func(*authn.ExtractConfig)
	verify  func(*authn.VerifyConfig)
	origins []string
	now     func() time.Time
	bus     Bus
	traces  Traces
	// openHook is the server's testHookOpen.
	openHook func()
}

// eventRecorder is a sink that keeps copies of events.
type eventRecorder struct {
	ch chan event.Event
}

func (r *eventRecorder) Observe(_ context.Context, e *event.Event) {
	select {
	case r.ch <- *e:
	default:
	}
}

// next returns the next event of type t, skipping others.
func (r *eventRecorder) next(t testing.TB, typ event.Type) event.Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case e := <-r.ch:
			if e.Type == typ {
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event within 5s", typ)
		}
	}
}

func newTestBroker(t testing.TB, o brokerOpts) *testBroker {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "jwks.json")
	writeJWKS(t, keyFile, &key.PublicKey, "k1")

	ecfg := authn.DefaultExtractConfig()
	if o.extract != nil {
		o.extract(&ecfg)
	}
	ex, err := authn.NewExtractor(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	vcfg := authn.VerifyConfig{HMACSecret: testSecret, KeyFiles: []string{keyFile}, Now: o.now}
	if o.verify != nil {
		o.verify(&vcfg)
	}
	vctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ver, err := authn.NewVerifier(vctx, vcfg)
	if err != nil {
		t.Fatal(err)
	}
	origins, err := authn.ParseOrigins(o.origins)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := telemetry.NewMetrics(reg, "test")
	rec := &eventRecorder{ch: make(chan event.Event, 1024)}
	cfg := DefaultConfig()
	cfg.Node = "test"
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	srv, err := New(cfg, Deps{
		Extractor: ex, Verifier: ver, Origins: origins, Metrics: m,
		Sink: event.Sinks{m, rec}, Now: o.now, Traces: o.traces, Bus: o.bus,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.testHookOpen = o.openHook
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return &testBroker{t: t, srv: srv, addr: ln.Addr().String(), reg: reg, events: rec, rsaKey: key, keyFile: keyFile}
}

func writeJWKS(t testing.TB, path string, pub *rsa.PublicKey, kid string) {
	t.Helper()
	n := base64.RawURLEncoding.EncodeToString(pub.N.Bytes())
	e := base64.RawURLEncoding.EncodeToString([]byte{1, 0, 1})
	doc := fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":%q,"alg":"RS256","use":"sig","n":%q,"e":%q}]}`, kid, n, e)
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hsToken signs claims with HS256 and the test secret.
func hsToken(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func validClaims(sub string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{"sub": sub, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "channels": []string{"*"}}
}

// handshakeReq is a raw upgrade request.
type handshakeReq struct {
	path      string
	headers   [][2]string
	protocols string
}

type handshakeResp struct {
	resp *http.Response
	body rejectionBody
	conn net.Conn
	br   *bufio.Reader
}

// doHandshake sends req over a real TCP connection and parses the answer.
func (b *testBroker) doHandshake(req handshakeReq) handshakeResp {
	t := b.t
	t.Helper()
	c, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	path := req.path
	if path == "" {
		path = "/ws"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n", path, b.addr)
	if req.protocols != "" {
		fmt.Fprintf(&sb, "Sec-WebSocket-Protocol: %s\r\n", req.protocols)
	}
	for _, h := range req.headers {
		fmt.Fprintf(&sb, "%s: %s\r\n", h[0], h[1])
	}
	sb.WriteString("\r\n")
	if _, err := io.WriteString(c, sb.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	out := handshakeResp{resp: resp, conn: c, br: br}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		raw, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(raw, &out.body); err != nil {
			t.Fatalf("body %q: %v", raw, err)
		}
		c.Close()
	} else {
		t.Cleanup(func() { c.Close() })
	}
	return out
}

// wsClient is a minimal client over an upgraded connection.
type wsClient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func (h handshakeResp) client(t testing.TB) *wsClient {
	return &wsClient{t: t, c: h.conn, br: h.br}
}

func (w *wsClient) send(v any) {
	w.t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		w.t.Fatal(err)
	}
	_ = w.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := wsutil.WriteClientText(w.c, b); err != nil {
		w.t.Fatalf("send: %v", err)
	}
}

// read returns the next data message as a map; control frames are handled.
func (w *wsClient) read() map[string]any {
	w.t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rd := wsutil.Reader{Source: w.br, State: ws.StateClientSide, CheckUTF8: true, OnIntermediate: wsutil.ControlFrameHandler(w.c, ws.StateClientSide)}
	for {
		h, err := rd.NextFrame()
		if err != nil {
			w.t.Fatalf("read: %v", err)
		}
		if h.OpCode.IsControl() {
			if err := wsutil.ControlFrameHandler(w.c, ws.StateClientSide)(h, &rd); err != nil {
				w.t.Fatalf("control frame: %v", err)
			}
			continue
		}
		raw, err := io.ReadAll(&rd)
		if err != nil {
			w.t.Fatalf("read payload: %v", err)
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			w.t.Fatalf("message %q: %v", raw, err)
		}
		return m
	}
}

// readClose waits for the server's close frame and returns its code and text.
func (w *wsClient) readClose() (ws.StatusCode, string) {
	w.t.Helper()
	_ = w.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := wsframe.Read(w.br, wsframe.DefaultLimit)
		if err != nil {
			w.t.Fatalf("waiting for close: %v", err)
		}
		if f.Header.OpCode == ws.OpClose {
			code, text := ws.ParseCloseFrameData(f.Payload)
			return code, text
		}
	}
}

func bufioReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func wantCounter(b *testBroker, name string, labels map[string]string, want float64) error {
	if got := testkit.Metric(b.t, b.reg, name, labels); got != want {
		return fmt.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
	return nil
}

// doHandshakeRaw sends a well-formed upgrade to path and returns the answer.
func (b *testBroker) doHandshakeRaw(path string) *http.Response {
	b.t.Helper()
	c, err := net.Dial("tcp", b.addr)
	if err != nil {
		b.t.Fatal(err)
	}
	defer c.Close()
	_, _ = fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp
}
