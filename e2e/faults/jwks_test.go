package faults

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

// jwksServer serves the public half of key under kid, or 503 while down.
type jwksServer struct {
	srv  *httptest.Server
	down atomic.Bool
	hits atomic.Int64
}

func newJWKSServer(t *testing.T, kid string, key *rsa.PrivateKey) *jwksServer {
	t.Helper()
	pub := key.PublicKey
	body, err := json.Marshal(map[string]any{"keys": []map[string]string{{
		"kty": "RSA",
		"kid": kid,
		"alg": "RS256",
		"use": "sig",
		"n":   base64.RawURLEncoding.EncodeToString(pub.N.Bytes()),
		"e":   base64.RawURLEncoding.EncodeToString(big.NewInt(int64(pub.E)).Bytes()),
	}}})
	if err != nil {
		t.Fatalf("jwks: %v",
			err)
	}
	j := &jwksServer{}
	j.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		j.hits.Add(1)
		if j.down.Load() {
			http.Error(w, "down for the test", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func rsaKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("rsa key: %v",
			err)
	}
	return k
}

func rsToken(t *testing.T, kid string, key *rsa.PrivateKey, sub string) string {
	t.Helper()
	now := time.Now()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{
		"sub":      sub,
		"exp":      now.Add(time.Hour).Unix(),
		"iat":      now.Unix(),
		"channels": []string{"*"},
	})
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatalf("sign: %v",
			err)
	}
	return s
}

// wantAnswer upgrades with tok and checks the status and reason.
func wantAnswer(t *testing.T, b *broker, tok string, status int, reason string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	a, err := upgrade(ctx, b.wsAddr, tok)
	if err != nil {
		t.Fatalf("upgrade: %v",
			err)
	}
	if a.conn != nil {
		a.conn.Close()
	}
	if a.status != status || a.reason != reason {
		t.Fatalf("upgrade answered %d %q, want %d %q",
			a.status, a.reason, status, reason)
	}
	return a
}

// TestJWKSDownAfterKeysLoaded: once the key set is cached, the JWKS
// endpoint going away costs nothing to clients with known keys; a kid the
// cache does not hold stays the client's problem (unknown_key, 401), not
// the server's.
func TestJWKSDownAfterKeysLoaded(t *testing.T) {
	key := rsaKey(t)
	j := newJWKSServer(t, "k1", key)
	b := startBroker(t, brokerOpts{
		noSecret: true,
		args:     []string{"--jwks-url", j.srv.URL, "--jwks-min-refresh", "100ms"},
	})
	testkit.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		_, err := b.get("/readyz")
		return err
	})
	wantAnswer(t, b, rsToken(t, "k1", key, "before"), http.StatusSwitchingProtocols, "")

	j.srv.Close()
	for i := range 5 {
		wantAnswer(t, b, rsToken(t, "k1", key, fmt.Sprintf("cached-%d", i)), http.StatusSwitchingProtocols, "")
	}
	other := rsaKey(t)
	wantAnswer(t, b, rsToken(t, "k2", other, "unknown"), http.StatusUnauthorized, "unknown_key")
	if _, err := b.get("/readyz"); err != nil {
		t.Fatalf("readyz with cached keys and the JWKS down: %v",
			err)
	}
	failed, err := b.metric("wsbroker_keys_refresh_total", `result="error"`)
	if err != nil || failed < 1 {
		t.Fatalf("wsbroker_keys_refresh_total{result=error} = %v (%v), want the failed refresh of the unknown kid counted",
			failed, err)
	}
	b.stop()
}

// TestJWKSDownAtStart: a broker whose JWKS cannot be fetched has no key:
// every upgrade is keys_unavailable (503 with Retry-After: the server's
// fault, retry), /readyz keeps the load balancer away, and both recover
// once the endpoint answers.
func TestJWKSDownAtStart(t *testing.T) {
	key := rsaKey(t)
	j := newJWKSServer(t, "k1", key)
	j.down.Store(true)
	b := startBroker(t, brokerOpts{
		noSecret: true,
		args:     []string{"--jwks-url", j.srv.URL, "--jwks-min-refresh", "100ms"},
	})
	if body, err := b.get("/readyz"); err == nil {
		t.Fatalf("readyz answered 200 %q with no key loaded",
			body)
	}
	a := wantAnswer(t, b, rsToken(t, "k1", key, "early"), http.StatusServiceUnavailable, "keys_unavailable")
	if a.retryAfter == "" {
		t.Fatalf("keys_unavailable answer without Retry-After")
	}
	if _, err := b.get("/readyz"); err == nil {
		t.Fatalf("readyz answered 200 after a failed fetch")
	}

	j.down.Store(false)
	// Nobody connects: readiness alone must bring the keys in, or a load
	// balancer that waits for /readyz would never send the client that
	// triggers the fetch.
	testkit.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		_, err := b.get("/readyz")
		return err
	})
	wantAnswer(t, b, rsToken(t, "k1", key, "late"), http.StatusSwitchingProtocols, "")
	b.stop()
}
