package telemetrye2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/tracing/jaegertest"
)

// TestNoTokenLeaks sends recognisable tokens through every source, on
// accepted and rejected upgrades and in refresh messages, to a broker with
// every source enabled, debug logging and every trace exported, then
// searches everything the broker let out: its stdout and stderr, /metrics
// in both formats, the spans in Jaeger (attributes and events) and every
// byte it answered. No token, and no token's signature, may appear.
func TestNoTokenLeaks(t *testing.T) {
	t.Parallel()
	j := jaegertest.Start(t)
	b := startBroker(t, append([]string{"--trace-success-ratio", "1", "--log-level", "debug"}, allSourcesFlags...), otelEnv(j.OTLPHTTPEndpoint()))

	good := token(t, claims("redaction-user"), nil)
	secrets := map[string]string{
		"good":    good,
		"expired": token(t, claims("redaction-user", expired), nil),
		"forged":  token(t, claims("redaction-user"), []byte("forged-secret-forged-secret-0123456")),
		"none":    unsigned(claims("redaction-user")),
		// Not a JWT: redact.Text cannot recognise it, so only not logging
		// credentials at all keeps it out.
		"opaque": "opaque-e2e-credential-Zq7Xv3Lk9wT2",
	}
	// needles are the strings that must not appear: each token, and each
	// JWT's signature.
	needles := map[string]string{}
	for name, s := range secrets {
		needles[name+" token"] = s
		if strings.Count(s, ".") == 2 && signature(s) != "" {
			needles[name+" signature"] = signature(s)
		}
	}

	transports := []struct {
		name string
		req  func(tok string) upgradeReq
	}{
		{
			name: "header",
			req: func(tok string) upgradeReq {
				return upgradeReq{headers: [][2]string{{"Authorization", "Bearer " + tok}}}
			},
		},
		{
			name: "subprotocol",
			req: func(tok string) upgradeReq {
				return upgradeReq{protocols: "wsbroker.v1, bearer." + tok}
			},
		},
		{
			name: "subprotocol pair",
			req: func(tok string) upgradeReq {
				return upgradeReq{protocols: "wsbroker.v1, access_token, " + tok}
			},
		},
		{
			name: "query",
			req: func(tok string) upgradeReq {
				return upgradeReq{target: "/ws?room=1&access_token=" + tok}
			},
		},
		{
			name: "cookie",
			req: func(tok string) upgradeReq {
				return upgradeReq{headers: [][2]string{{"Cookie", "theme=dark; access_token=" + tok}, {"Origin", allowedOrigin}}}
			},
		},
	}
	type attempt struct {
		name       string
		req        upgradeReq
		wantStatus int
	}
	var attempts []attempt
	for _, tr := range transports {
		for name, tok := range secrets {
			want := http.StatusUnauthorized
			if name == "good" {
				want = http.StatusSwitchingProtocols
			}
			attempts = append(attempts, attempt{
				name:       name + " via " + tr.name,
				req:        tr.req(tok),
				wantStatus: want,
			})
		}
	}
	attempts = append(attempts,
		attempt{
			name:       "origin_not_allowed: good cookie from another site",
			req:        upgradeReq{headers: [][2]string{{"Cookie", "access_token=" + good}, {"Origin", "https://evil.example"}}},
			wantStatus: http.StatusForbidden,
		},
		attempt{
			name:       "ambiguous_token: header and query differ",
			req:        upgradeReq{target: "/ws?access_token=" + secrets["expired"], headers: [][2]string{{"Authorization", "Bearer " + good}}},
			wantStatus: http.StatusBadRequest,
		},
		attempt{
			name:       "protocol_not_offered: bearer entry alone",
			req:        upgradeReq{protocols: "bearer." + good},
			wantStatus: http.StatusBadRequest,
		},
		attempt{
			name:       "a token in the User-Agent and Origin of a missing_token attempt",
			req:        upgradeReq{headers: [][2]string{{"User-Agent", "agent/" + good}, {"Origin", allowedOrigin + "/" + secrets["forged"]}}},
			wantStatus: http.StatusUnauthorized,
		},
	)

	var answers bytes.Buffer
	for _, a := range attempts {
		r := doUpgrade(t, b.ws, a.req)
		if r.status != a.wantStatus {
			t.Errorf("%s: status %d, want %d: %s",
				a.name, r.status, a.wantStatus, r.raw)
		}
		fmt.Fprintf(&answers, "== %s\n%s\n", a.name, r.raw)
	}
	// Refreshes on an open connection, refused and accepted.
	refreshed := refreshAll(t, b.ws, good, []string{
		secrets["expired"],
		secrets["forged"],
		secrets["none"],
		secrets["opaque"],
		token(t, claims("redaction-user"), nil),
	})
	answers.Write(refreshed)

	// Every upgrade is a kept trace: wait for all of them.
	client := newHTTPClient(t)
	var traces []jaegertest.Trace
	testkit.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		var err error
		traces, err = j.Traces(t.Context(), "wsbroker")
		if err != nil {
			return err
		}
		if len(traces) < len(attempts)+1 {
			return fmt.Errorf("%d traces in Jaeger, want %d", len(traces), len(attempts)+1)
		}
		return nil
	})
	spans, err := json.Marshal(traces)
	if err != nil {
		t.Fatalf("encode traces: %v",
			err)
	}
	openMetrics, err := httpGet(t.Context(), client, "http://"+b.admin+"/metrics", http.Header{"Accept": {"application/openmetrics-text; version=1.0.0"}})
	if err != nil {
		t.Fatalf("metrics: %v",
			err)
	}
	textMetrics, err := httpGet(t.Context(), client, "http://"+b.admin+"/metrics", nil)
	if err != nil {
		t.Fatalf("metrics: %v",
			err)
	}
	if err := b.stop(); err != nil {
		t.Fatalf("stop the broker: %v",
			err)
	}

	outputs := []struct {
		name string
		data []byte
		// must is a string the output must contain, so that an empty
		// capture cannot pass.
		must string
	}{
		{
			name: "stderr logs",
			data: []byte(b.stderr.String()),
			must: `"reason":"bad_signature"`,
		},
		{
			name: "stdout",
			data: []byte(b.stdout.String()),
		},
		{
			name: "OpenMetrics /metrics",
			data: openMetrics,
			must: `trace_id="`,
		},
		{
			name: "text /metrics",
			data: textMetrics,
			must: `wsbroker_upgrades_total{reason="origin_not_allowed"`,
		},
		{
			name: "Jaeger spans",
			data: spans,
			must: "source.checked",
		},
		{
			name: "upgrade answers and messages",
			data: answers.Bytes(),
			must: "X-Trace-Id",
		},
	}
	for _, o := range outputs {
		if o.must != "" && !bytes.Contains(o.data, []byte(o.must)) {
			t.Errorf("%s (%d bytes) lacks %q: the capture is not what it should be",
				o.name, len(o.data), o.must)
		}
		for what, needle := range needles {
			if i := bytes.Index(o.data, []byte(needle)); i >= 0 {
				t.Errorf("%s contains the %s: ...%s...",
					o.name, what, o.data[max(0, i-200):min(len(o.data), i+len(needle)+50)])
			}
		}
	}
}

// refreshAll opens a connection with tok and sends a refresh with each of
// tokens, returning every byte the broker sent.
func refreshAll(t *testing.T, addr, tok string, tokens []string) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v",
			err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	var raw bytes.Buffer
	br := bufio.NewReader(io.TeeReader(c, &raw))
	req := fmt.Sprintf("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsbroker.v1, bearer.%s\r\n\r\n", addr, tok)
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatalf("send the upgrade: %v",
			err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade for refresh: %v %v\n%s",
			resp, err, raw.Bytes())
	}
	rw := struct {
		io.Reader
		io.Writer
	}{br, c}
	for i, rt := range tokens {
		msg, _ := json.Marshal(map[string]any{"type": "refresh", "id": i + 1, "token": rt})
		if err := wsutil.WriteClientText(c, msg); err != nil {
			t.Fatalf("send refresh: %v",
				err)
		}
		reply, err := wsutil.ReadServerText(rw)
		if err != nil {
			t.Fatalf("read refresh reply: %v",
				err)
		}
		var m struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(reply, &m)
		wantType := "error"
		if i == len(tokens)-1 {
			wantType = "ack"
		}
		if m.Type != wantType {
			t.Errorf("refresh %d answered %s, want %s",
				i+1, reply, wantType)
		}
	}
	return raw.Bytes()
}
