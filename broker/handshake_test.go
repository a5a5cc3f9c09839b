package broker

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

func auth(tok string) [2]string { return [2]string{"Authorization", "Bearer " + tok} }

// TestRejections drives one real TCP handshake per reason and asserts the
// status, WWW-Authenticate, the JSON reason, the event and the counter.
func TestRejections(t *testing.T) {
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	good := func(tb testing.TB) string { return hsToken(tb, validClaims("alice")) }
	tests := []struct {
		name   string
		opts   brokerOpts
		setup  func(b *testBroker)
		req    func(b *testBroker) handshakeReq
		reason authn.Reason
		source authn.Source
		// bearerError is the expected error= of WWW-Authenticate; "-" means
		// no WWW-Authenticate at all.
		bearerError string
	}{
		{
			name:        "missing_token",
			req:         func(*testBroker) handshakeReq { return handshakeReq{} },
			reason:      authn.ReasonMissingToken,
			source:      authn.SourceNone,
			bearerError: "",
		},
		{
			name: "source_disabled: the incident, a query token with header,subprotocol enabled",
			req: func(b *testBroker) handshakeReq {
				return handshakeReq{path: "/ws?access_token=" + good(b.t), protocols: "wsbroker.v1"}
			},
			reason:      authn.ReasonSourceDisabled,
			source:      authn.SourceQuery,
			bearerError: "invalid_request",
		},
		{
			name: "source_disabled: cookie",
			req: func(b *testBroker) handshakeReq {
				return handshakeReq{headers: [][2]string{{"Cookie", "theme=dark; access_token=" + good(b.t)}}}
			},
			reason:      authn.ReasonSourceDisabled,
			source:      authn.SourceCookie,
			bearerError: "invalid_request",
		},
		{
			name: "malformed_authorization: basic scheme",
			req: func(*testBroker) handshakeReq {
				return handshakeReq{headers: [][2]string{{"Authorization", "Basic dXNlcjpwYXNz"}}}
			},
			reason:      authn.ReasonMalformedAuthorization,
			source:      authn.SourceHeader,
			bearerError: "invalid_request",
		},
		{
			name:        "malformed_authorization: bearer without token",
			req:         func(*testBroker) handshakeReq { return handshakeReq{headers: [][2]string{{"Authorization", "Bearer"}}} },
			reason:      authn.ReasonMalformedAuthorization,
			source:      authn.SourceHeader,
			bearerError: "invalid_request",
		},
		{
			name:        "malformed_subprotocol: empty bearer entry",
			req:         func(*testBroker) handshakeReq { return handshakeReq{protocols: "wsbroker.v1, bearer."} },
			reason:      authn.ReasonMalformedSubprotocol,
			source:      authn.SourceSubprotocol,
			bearerError: "invalid_request",
		},
		{
			name:        "malformed_subprotocol: pair marker last",
			req:         func(*testBroker) handshakeReq { return handshakeReq{protocols: "wsbroker.v1, access_token"} },
			reason:      authn.ReasonMalformedSubprotocol,
			source:      authn.SourceSubprotocol,
			bearerError: "invalid_request",
		},
		{
			name: "malformed_subprotocol: bad base64url in the k8s form",
			req: func(*testBroker) handshakeReq {
				return handshakeReq{protocols: "wsbroker.v1, base64url.bearer.authorization.k8s.io.%%%"}
			},
			reason:      authn.ReasonMalformedSubprotocol,
			source:      authn.SourceSubprotocol,
			bearerError: "invalid_request",
		},
		{
			name:        "protocol_not_offered",
			req:         func(b *testBroker) handshakeReq { return handshakeReq{protocols: "bearer." + good(b.t)} },
			reason:      authn.ReasonProtocolNotOffered,
			source:      authn.SourceSubprotocol,
			bearerError: "invalid_request",
		},
		{
			name: "ambiguous_token",
			req: func(b *testBroker) handshakeReq {
				return handshakeReq{
					headers:   [][2]string{auth(good(b.t))},
					protocols: "wsbroker.v1, bearer." + hsToken(b.t, validClaims("mallory")),
				}
			},
			reason:      authn.ReasonAmbiguousToken,
			source:      authn.SourceSubprotocol,
			bearerError: "invalid_request",
		},
		{
			name: "token_too_large",
			req: func(*testBroker) handshakeReq {
				return handshakeReq{headers: [][2]string{auth(strings.Repeat("a", 9000))}}
			},
			reason:      authn.ReasonTokenTooLarge,
			source:      authn.SourceHeader,
			bearerError: "invalid_request",
		},
		{
			name:        "malformed_token",
			req:         func(*testBroker) handshakeReq { return handshakeReq{headers: [][2]string{auth("not-a-jwt")}} },
			reason:      authn.ReasonMalformedToken,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "alg_not_allowed: none",
			req: func(b *testBroker) handshakeReq {
				tok, err := jwt.NewWithClaims(jwt.SigningMethodNone, validClaims("alice")).SignedString(jwt.UnsafeAllowNoneSignatureType)
				if err != nil {
					b.t.Fatal(err)
				}
				return handshakeReq{headers: [][2]string{auth(tok)}}
			},
			reason:      authn.ReasonAlgNotAllowed,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "alg_not_allowed: outside --jwt-algs",
			opts: brokerOpts{verify: func(c *authn.VerifyConfig) { c.Algs = []string{"RS256"} }},
			req: func(b *testBroker) handshakeReq {
				return handshakeReq{headers: [][2]string{auth(good(b.t))}}
			},
			reason:      authn.ReasonAlgNotAllowed,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "unknown_key",
			req: func(b *testBroker) handshakeReq {
				tk := jwt.NewWithClaims(jwt.SigningMethodRS256, validClaims("alice"))
				tk.Header["kid"] = "k9"
				tok, err := tk.SignedString(other)
				if err != nil {
					b.t.Fatal(err)
				}
				return handshakeReq{headers: [][2]string{auth(tok)}}
			},
			reason:      authn.ReasonUnknownKey,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "bad_signature",
			req: func(b *testBroker) handshakeReq {
				tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, validClaims("alice")).SignedString([]byte("another-secret-of-at-least-32-bytes!!"))
				if err != nil {
					b.t.Fatal(err)
				}
				return handshakeReq{headers: [][2]string{auth(tok)}}
			},
			reason:      authn.ReasonBadSignature,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "bad_signature: RS256 token signed by another key under a known kid",
			req: func(b *testBroker) handshakeReq {
				tk := jwt.NewWithClaims(jwt.SigningMethodRS256, validClaims("alice"))
				tk.Header["kid"] = "k1"
				tok, err := tk.SignedString(other)
				if err != nil {
					b.t.Fatal(err)
				}
				return handshakeReq{headers: [][2]string{auth(tok)}}
			},
			reason:      authn.ReasonBadSignature,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "expired",
			req: func(b *testBroker) handshakeReq {
				c := validClaims("alice")
				c["exp"] = now.Add(-time.Hour).Unix()
				return handshakeReq{headers: [][2]string{auth(hsToken(b.t, c))}}
			},
			reason:      authn.ReasonExpired,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "not_yet_valid",
			req: func(b *testBroker) handshakeReq {
				c := validClaims("alice")
				c["nbf"] = now.Add(time.Hour).Unix()
				return handshakeReq{headers: [][2]string{auth(hsToken(b.t, c))}}
			},
			reason:      authn.ReasonNotYetValid,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "wrong_issuer",
			opts: brokerOpts{verify: func(c *authn.VerifyConfig) { c.Issuer = "https://issuer.example" }},
			req: func(b *testBroker) handshakeReq {
				c := validClaims("alice")
				c["iss"] = "https://evil.example"
				return handshakeReq{headers: [][2]string{auth(hsToken(b.t, c))}}
			},
			reason:      authn.ReasonWrongIssuer,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "wrong_audience",
			opts: brokerOpts{verify: func(c *authn.VerifyConfig) { c.Audience = "wsbroker" }},
			req: func(b *testBroker) handshakeReq {
				c := validClaims("alice")
				c["aud"] = "billing"
				return handshakeReq{headers: [][2]string{auth(hsToken(b.t, c))}}
			},
			reason:      authn.ReasonWrongAudience,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "missing_claim: sub",
			req: func(b *testBroker) handshakeReq {
				c := validClaims("alice")
				delete(c, "sub")
				return handshakeReq{headers: [][2]string{auth(hsToken(b.t, c))}}
			},
			reason:      authn.ReasonMissingClaim,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "missing_claim: exp",
			req: func(b *testBroker) handshakeReq {
				c := validClaims("alice")
				delete(c, "exp")
				return handshakeReq{headers: [][2]string{auth(hsToken(b.t, c))}}
			},
			reason:      authn.ReasonMissingClaim,
			source:      authn.SourceHeader,
			bearerError: "invalid_token",
		},
		{
			name: "origin_not_allowed",
			opts: brokerOpts{origins: []string{"https://app.example"}},
			req: func(b *testBroker) handshakeReq {
				return handshakeReq{headers: [][2]string{auth(good(b.t)), {"Origin", "https://evil.example"}}}
			},
			reason:      authn.ReasonOriginNotAllowed,
			source:      authn.SourceHeader,
			bearerError: "invalid_request",
		},
		{
			name: "origin_not_allowed: cookie without Origin (CSWSH)",
			opts: brokerOpts{
				origins: []string{"https://app.example"},
				extract: func(c *authn.ExtractConfig) { c.Sources = []authn.Source{authn.SourceCookie} },
			},
			req: func(b *testBroker) handshakeReq {
				return handshakeReq{headers: [][2]string{{"Cookie", "access_token=" + good(b.t)}}}
			},
			reason:      authn.ReasonOriginNotAllowed,
			source:      authn.SourceCookie,
			bearerError: "invalid_request",
		},
		{
			name: "rate_limited",
			opts: brokerOpts{cfg: func(c *Config) { c.FailureBurst, c.FailureRate = 1, 0.0001 }},
			setup: func(b *testBroker) {
				r := b.doHandshake(handshakeReq{})
				if r.body.Reason != "missing_token" {
					b.t.Fatalf("first attempt: reason %q, want missing_token", r.body.Reason)
				}
				b.events.next(b.t, event.TypeUpgradeRejected)
			},
			req:         func(b *testBroker) handshakeReq { return handshakeReq{headers: [][2]string{auth(good(b.t))}} },
			reason:      authn.ReasonRateLimited,
			source:      authn.SourceNone,
			bearerError: "-",
		},
		{
			name: "connection_limit",
			opts: brokerOpts{cfg: func(c *Config) { c.MaxConnsPerSubject = 1 }},
			setup: func(b *testBroker) {
				r := b.doHandshake(handshakeReq{headers: [][2]string{auth(good(b.t))}})
				if r.resp.StatusCode != http.StatusSwitchingProtocols {
					b.t.Fatalf("first connection: status %d", r.resp.StatusCode)
				}
				b.events.next(b.t, event.TypeConnectionOpened)
			},
			req:         func(b *testBroker) handshakeReq { return handshakeReq{headers: [][2]string{auth(good(b.t))}} },
			reason:      authn.ReasonConnectionLimit,
			source:      authn.SourceHeader,
			bearerError: "-",
		},
		{
			name: "keys_unavailable",
			opts: brokerOpts{verify: func(c *authn.VerifyConfig) {
				c.HMACSecret, c.KeyFiles = nil, nil
				c.JWKSURL = "http://" + closedAddr(t) + "/jwks.json"
			}},
			req: func(b *testBroker) handshakeReq {
				tk := jwt.NewWithClaims(jwt.SigningMethodRS256, validClaims("alice"))
				tk.Header["kid"] = "k1"
				tok, err := tk.SignedString(other)
				if err != nil {
					b.t.Fatal(err)
				}
				return handshakeReq{headers: [][2]string{auth(tok)}}
			},
			reason:      authn.ReasonKeysUnavailable,
			source:      authn.SourceHeader,
			bearerError: "-",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBroker(t, tt.opts)
			if tt.setup != nil {
				tt.setup(b)
			}
			labels := map[string]string{"result": "rejected", "reason": tt.reason.String(), "source": tt.source.String()}
			before := testkit.Metric(t, b.reg, "wsbroker_upgrades_total", labels)
			r := b.doHandshake(tt.req(b))
			if r.resp.StatusCode != tt.reason.Status() {
				t.Fatalf("status %d, want %d (body %+v)",
					r.resp.StatusCode, tt.reason.Status(), r.body)
			}
			if r.body.Reason != tt.reason.String() {
				t.Fatalf("JSON reason %q, want %q",
					r.body.Reason, tt.reason.String())
			}
			if r.body.RequestID == "" || r.resp.Header.Get("X-Request-Id") != r.body.RequestID {
				t.Fatalf("request id: body %q, header %q",
					r.body.RequestID, r.resp.Header.Get("X-Request-Id"))
			}
			if !strings.Contains(r.body.Error, tt.reason.Hint()) {
				t.Fatalf("error %q does not carry the hint",
					r.body.Error)
			}
			if ct := r.resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Fatalf("Content-Type %q",
					ct)
			}
			www := r.resp.Header.Get("WWW-Authenticate")
			switch tt.bearerError {
			case "-":
				if www != "" {
					t.Fatalf("WWW-Authenticate %q, want none",
						www)
				}
			case "":
				if www != `Bearer realm="wsbroker"` {
					t.Fatalf("WWW-Authenticate %q, want a bare challenge (RFC 6750 §3.1: no error code without a token)",
						www)
				}
			default:
				if !strings.HasPrefix(www, `Bearer realm="wsbroker", error="`+tt.bearerError+`", error_description="`+tt.reason.String()) {
					t.Fatalf("WWW-Authenticate %q, want error %q",
						www, tt.bearerError)
				}
			}
			e := b.events.next(t, event.TypeUpgradeRejected)
			if e.Reason != tt.reason || e.Source != tt.source || e.Status != tt.reason.Status() {
				t.Fatalf("event reason %s source %s status %d, want %s %s %d",
					e.Reason, e.Source, e.Status, tt.reason, tt.source, tt.reason.Status())
			}
			if got := testkit.Metric(t, b.reg, "wsbroker_upgrades_total", labels); got != before+1 {
				t.Fatalf("wsbroker_upgrades_total%v = %v, want %v",
					labels, got, before+1)
			}
		})
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestAcceptedSources accepts a token from every source and form, selects
// wsbroker.v1 and never echoes a token entry.
func TestAcceptedSources(t *testing.T) {
	tests := []struct {
		name     string
		opts     brokerOpts
		req      func(tok string) handshakeReq
		source   authn.Source
		protocol string
	}{
		{
			name:     "header",
			req:      func(tok string) handshakeReq { return handshakeReq{headers: [][2]string{auth(tok)}} },
			source:   authn.SourceHeader,
			protocol: "",
		},
		{
			name: "header and subprotocol offer without token",
			req: func(tok string) handshakeReq {
				return handshakeReq{headers: [][2]string{auth(tok)}, protocols: "wsbroker.v1"}
			},
			source:   authn.SourceHeader,
			protocol: "wsbroker.v1",
		},
		{
			name:     "subprotocol prefix form",
			req:      func(tok string) handshakeReq { return handshakeReq{protocols: "wsbroker.v1, bearer." + tok} },
			source:   authn.SourceSubprotocol,
			protocol: "wsbroker.v1",
		},
		{
			name:     "subprotocol prefix form before the protocol",
			req:      func(tok string) handshakeReq { return handshakeReq{protocols: "bearer." + tok + ", wsbroker.v1"} },
			source:   authn.SourceSubprotocol,
			protocol: "wsbroker.v1",
		},
		{
			name:     "subprotocol pair form",
			req:      func(tok string) handshakeReq { return handshakeReq{protocols: "wsbroker.v1, access_token, " + tok} },
			source:   authn.SourceSubprotocol,
			protocol: "wsbroker.v1",
		},
		{
			name: "subprotocol kubernetes form",
			req: func(tok string) handshakeReq {
				return handshakeReq{protocols: "wsbroker.v1, base64url.bearer.authorization.k8s.io." + base64.RawURLEncoding.EncodeToString([]byte(tok))}
			},
			source:   authn.SourceSubprotocol,
			protocol: "wsbroker.v1",
		},
		{
			name: "same token in header and subprotocol",
			req: func(tok string) handshakeReq {
				return handshakeReq{headers: [][2]string{auth(tok)}, protocols: "wsbroker.v1, bearer." + tok}
			},
			source:   authn.SourceHeader,
			protocol: "wsbroker.v1",
		},
		{
			name:     "query",
			opts:     brokerOpts{extract: func(c *authn.ExtractConfig) { c.Sources = []authn.Source{authn.SourceQuery} }},
			req:      func(tok string) handshakeReq { return handshakeReq{path: "/ws?room=1&access_token=" + tok} },
			source:   authn.SourceQuery,
			protocol: "",
		},
		{
			name: "cookie with allowed origin",
			opts: brokerOpts{
				origins: []string{"https://app.example"},
				extract: func(c *authn.ExtractConfig) { c.Sources = []authn.Source{authn.SourceCookie} },
			},
			req: func(tok string) handshakeReq {
				return handshakeReq{headers: [][2]string{{"Cookie", "a=b; access_token=" + tok}, {"Origin", "https://app.example"}}}
			},
			source:   authn.SourceCookie,
			protocol: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBroker(t, tt.opts)
			tok := hsToken(t, validClaims("alice"))
			r := b.doHandshake(tt.req(tok))
			if r.resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d, body %+v",
					r.resp.StatusCode, r.body)
			}
			if got := r.resp.Header.Get("Sec-WebSocket-Protocol"); got != tt.protocol {
				t.Fatalf("selected protocol %q, want %q",
					got, tt.protocol)
			}
			for k, vs := range r.resp.Header {
				for _, v := range vs {
					if strings.Contains(v, tok[:20]) {
						t.Fatalf("response header %s echoes the token",
							k)
					}
				}
			}
			e := b.events.next(t, event.TypeConnectionOpened)
			if e.Source != tt.source || e.Subject != "alice" {
				t.Fatalf("opened event source %s sub %q, want %s alice",
					e.Source, e.Subject, tt.source)
			}
			labels := map[string]string{"result": "accepted", "reason": "none", "source": tt.source.String()}
			if got := testkit.Metric(t, b.reg, "wsbroker_upgrades_total", labels); got != 1 {
				t.Fatalf("accepted counter %v, want 1",
					got)
			}
		})
	}
}

func TestHandshakeLimits(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.MaxHandshakeBytes = 4096; c.HandshakeTimeout = 300 * time.Millisecond }})
	t.Run("too large", func(t *testing.T) {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8000) + "\r\n\r\n"))
		resp, err := http.ReadResponse(bufioReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431",
				resp.StatusCode)
		}
		testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			return wantCounter(b, "wsbroker_handshake_errors_total", map[string]string{"kind": "too_large"}, 1)
		})
	})
	t.Run("slowloris", func(t *testing.T) {
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = c.Write([]byte("GET /ws HTTP/1.1\r\nHost: x\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufioReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer after the handshake timeout: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "handshake-timeout 300ms") {
			t.Fatalf("answer %d %q, want 408 naming handshake-timeout", resp.StatusCode, body)
		}
		if _, err := br.ReadByte(); err == nil {
			t.Fatalf("connection still open after the 408")
		}
		testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
			return wantCounter(b, "wsbroker_handshake_errors_total", map[string]string{"kind": "timeout"}, 1)
		})
	})
	t.Run("silent client", func(t *testing.T) {
		// Connected, sends nothing: the listener's deferred accept hands it
		// over after a second or so, then the handshake timeout answers.
		c, err := net.Dial("tcp", b.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
		resp, err := http.ReadResponse(bufioReader(c), nil)
		if err != nil {
			t.Fatalf("no answer to a client that sends nothing: %v", err)
		}
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("status %d, want 408", resp.StatusCode)
		}
		t.Logf("408 after %v", time.Since(start).Round(time.Millisecond))
	})
	t.Run("wrong path", func(t *testing.T) {
		r := b.doHandshakeRaw("/other")
		if r.StatusCode != http.StatusNotFound {
			t.Fatalf("status %d, want 404",
				r.StatusCode)
		}
	})
}

// TestRejectModeClose upgrades, then closes with 4000+status and the reason
// as close text; the 101 carries the reason and the request id.
func TestRejectModeClose(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.RejectMode = RejectClose }})
	c := expiredClaims()
	r := b.doHandshake(handshakeReq{protocols: "wsbroker.v1, bearer." + hsToken(t, c)})
	if r.resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101 in close mode",
			r.resp.StatusCode)
	}
	if r.resp.Header.Get("X-Wsbroker-Reason") != "expired" || r.resp.Header.Get("X-Request-Id") == "" {
		t.Fatalf("101 headers %v",
			r.resp.Header)
	}
	code, text := r.client(t).readClose()
	if code != 4401 || text != "expired" {
		t.Fatalf("close %d %q, want 4401 expired",
			code, text)
	}
	e := b.events.next(t, event.TypeUpgradeRejected)
	if e.Reason != authn.ReasonExpired || e.Status != 4401 || e.RequestID != r.resp.Header.Get("X-Request-Id") {
		t.Fatalf("event %s %d %q",
			e.Reason, e.Status, e.RequestID)
	}
	labels := map[string]string{"result": "rejected", "reason": "expired", "source": "subprotocol"}
	if got := testkit.Metric(t, b.reg, "wsbroker_upgrades_total", labels); got != 1 {
		t.Fatalf("counter %v",
			got)
	}
}

func expiredClaims() jwt.MapClaims {
	c := validClaims("alice")
	c["exp"] = time.Now().Add(-time.Hour).Unix()
	return c
}
