package main

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

// TestTokenRules checks that the baseline applies wsbroker's rules: HS256
// and RS256, sub and exp required, the token in Authorization or as
// bearer.<jwt> next to wsbroker.v1 (which is selected, never the token).
func TestTokenRules(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef-baseline")
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(secret, &key.PublicKey)
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"

	now := time.Now()
	claims := func(drop string) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "alice", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
		delete(c, drop)
		return c
	}
	sign := func(m jwt.SigningMethod, k any, c jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(m, c).SignedString(k)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hs := sign(jwt.SigningMethodHS256, secret, claims(""))
	cases := []struct {
		name      string
		header    string
		protocols []string
		status    int
		reason    string
	}{
		{name: "HS256 header", header: "Bearer " + hs, protocols: []string{"wsbroker.v1"}, status: 101},
		{name: "RS256 header", header: "Bearer " + sign(jwt.SigningMethodRS256, key, claims("")), status: 101},
		{name: "HS256 subprotocol", protocols: []string{"wsbroker.v1", "bearer." + hs}, status: 101},
		{name: "missing", status: 401, reason: "missing_token"},
		{name: "no app protocol", protocols: []string{"bearer." + hs}, status: 401, reason: "protocol_not_offered"},
		{name: "bad signature", header: "Bearer " + sign(jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), claims("")), status: 401, reason: "bad_signature"},
		{name: "no sub", header: "Bearer " + sign(jwt.SigningMethodHS256, secret, claims("sub")), status: 401, reason: "missing_claim"},
		{name: "no exp", header: "Bearer " + sign(jwt.SigningMethodHS256, secret, claims("exp")), status: 401, reason: "missing_claim"},
		{name: "HS384 not allowed", header: "Bearer " + sign(jwt.SigningMethodHS384, secret, claims("")), status: 401, reason: "alg_not_allowed"},
		{name: "malformed", header: "Bearer not.a.jwt", status: 401, reason: "malformed_token"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			if c.header != "" {
				h.Set("Authorization", c.header)
			}
			d := websocket.Dialer{Subprotocols: c.protocols, HandshakeTimeout: 5 * time.Second}
			conn, resp, err := d.Dial(url, h)
			if resp == nil {
				t.Fatalf("no response: %v", err)
			}
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d (%v)", resp.StatusCode, c.status, err)
			}
			if c.status == http.StatusSwitchingProtocols {
				defer conn.Close()
				if len(c.protocols) > 0 && conn.Subprotocol() != "wsbroker.v1" {
					t.Fatalf("selected %q, want wsbroker.v1", conn.Subprotocol())
				}
				return
			}
			var body struct{ Reason string }
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body: %v", err)
			}
			if body.Reason != c.reason {
				t.Fatalf("reason %q, want %q", body.Reason, c.reason)
			}
		})
	}
}

// TestFanOut subscribes two clients and publishes from one: both get the
// message, the publisher its ack with the offset.
func TestFanOut(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef-baseline")
	s := newServer(secret, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	mux.HandleFunc("/metrics", s.serveMetrics)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	url := "ws" + strings.TrimPrefix(ts.URL, "http") + "/ws"
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "a", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	dial := func() *websocket.Conn {
		c, _, err := websocket.DefaultDialer.Dial(url, http.Header{"Authorization": {"Bearer " + tok}})
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		return c
	}
	a, b := dial(), dial()
	defer a.Close()
	defer b.Close()
	read := func(c *websocket.Conn) map[string]any {
		var m map[string]any
		if err := c.ReadJSON(&m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, c := range []*websocket.Conn{a, b} {
		if err := c.WriteJSON(map[string]any{"type": "subscribe", "channel": "news", "id": 1}); err != nil {
			t.Fatal(err)
		}
		if m := read(c); m["type"] != "ack" {
			t.Fatalf("subscribe answer %v", m)
		}
	}
	if err := a.WriteJSON(map[string]any{"type": "publish", "channel": "news", "id": 2, "data": 42}); err != nil {
		t.Fatal(err)
	}
	if m := read(b); m["type"] != "message" || m["data"] != float64(42) || m["offset"] != float64(1) {
		t.Fatalf("subscriber got %v", m)
	}
	got := map[string]bool{}
	for range 2 {
		got[read(a)["type"].(string)] = true
	}
	if !got["message"] || !got["ack"] {
		t.Fatalf("publisher got %v, want a message and an ack", got)
	}
	m, err := s.mem()
	if err != nil {
		t.Fatal(err)
	}
	if m.Connections != 2 || m.RSSBytes == 0 {
		t.Fatalf("mem %+v", m)
	}
}
