package authn

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestKeysLoadedRetriesWhileEmpty: a verifier started while its JWKS was
// down becomes ready once the endpoint is back, from readiness checks
// alone (no token, no hourly refresh), and those checks fetch at most once
// per JWKSMinRefresh.
func TestKeysLoadedRetriesWhileEmpty(t *testing.T) {
	k1, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	js := &jwksServer{keys: map[string]*rsa.PublicKey{"k1": &k1.PublicKey}}
	var down atomic.Bool
	down.Store(true)
	var attempts atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		attempts.Add(1)
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		js.ServeHTTP(w, r)
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v, err := NewVerifier(ctx, VerifyConfig{JWKSURL: srv.URL, JWKSMinRefresh: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if v.KeysLoaded(ctx) {
		t.Fatalf("keys loaded from a JWKS answering 503")
	}
	// Polled far faster than the min refresh: the fetches stay bounded.
	start := time.Now()
	before := attempts.Load()
	for time.Since(start) < time.Second {
		if v.KeysLoaded(ctx) {
			t.Fatalf("keys loaded while the JWKS is down")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := attempts.Load() - before; got > 7 {
		t.Fatalf("%d fetches in 1s of readiness checks, want at most ~5 (one per 200ms)",
			got)
	}
	down.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for !v.KeysLoaded(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("keys not loaded within 5s of the JWKS coming back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
