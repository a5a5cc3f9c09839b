package authn

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func claimsFor(sub string, now time.Time) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix()}
}

func sign(t testing.TB, m jwt.SigningMethod, kid string, c jwt.Claims, key any) []byte {
	t.Helper()
	tk := jwt.NewWithClaims(m, c)
	if kid != "" {
		tk.Header["kid"] = kid
	}
	s, err := tk.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(s)
}

func pemFile(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAlgorithms verifies every supported family from PEM files and
// refuses cross-family keys (key confusion).
func TestAlgorithms(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now()
	secret := []byte("0123456789abcdef0123456789abcdef")
	v, err := NewVerifier(context.Background(), VerifyConfig{
		HMACSecret: secret,
		KeyFiles:   []string{pemFile(t, &rsaKey.PublicKey), pemFile(t, &ecKey.PublicKey), pemFile(t, edPub)},
	})
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: mustPKIX(t, &rsaKey.PublicKey)})
	tests := []struct {
		name   string
		token  []byte
		reason Reason
	}{
		{name: "HS256", token: sign(t, jwt.SigningMethodHS256, "", claimsFor("a", now), secret), reason: ReasonNone},
		{name: "HS512", token: sign(t, jwt.SigningMethodHS512, "", claimsFor("a", now), secret), reason: ReasonNone},
		{name: "RS256", token: sign(t, jwt.SigningMethodRS256, "", claimsFor("a", now), rsaKey), reason: ReasonNone},
		{name: "PS384", token: sign(t, jwt.SigningMethodPS384, "", claimsFor("a", now), rsaKey), reason: ReasonNone},
		{name: "ES256", token: sign(t, jwt.SigningMethodES256, "", claimsFor("a", now), ecKey), reason: ReasonNone},
		{name: "EdDSA", token: sign(t, jwt.SigningMethodEdDSA, "", claimsFor("a", now), edKey), reason: ReasonNone},
		{
			name:   "HS256 signed with the RSA public key (key confusion)",
			token:  sign(t, jwt.SigningMethodHS256, "", claimsFor("a", now), rsaPEM),
			reason: ReasonBadSignature,
		},
		{name: "ES256 signed by another key", token: sign(t, jwt.SigningMethodES256, "", claimsFor("a", now), mustEC(t)), reason: ReasonBadSignature},
		{
			name: "crit header",
			token: func() []byte {
				tk := jwt.NewWithClaims(jwt.SigningMethodHS256, claimsFor("a", now))
				tk.Header["crit"] = []string{"exp"}
				s, _ := tk.SignedString(secret)
				return []byte(s)
			}(),
			reason: ReasonMalformedToken,
		},
		{
			name:   "deeply nested claims",
			token:  sign(t, jwt.SigningMethodHS256, "", jwt.MapClaims{"sub": "a", "exp": now.Add(time.Hour).Unix(), "x": nested(5000)}, secret),
			reason: ReasonNone,
		},
		{name: "made-up alg", token: []byte("eyJhbGciOiJYWVoiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhIn0.c2ln"), reason: ReasonAlgNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, vd := v.Verify(context.Background(), tt.token)
			if vd.Reason != tt.reason {
				t.Fatalf("reason %s (%s), want %s",
					vd.Reason, vd.Detail, tt.reason)
			}
			if tt.reason == ReasonNone && p.Subject != "a" {
				t.Fatalf("subject %q",
					p.Subject)
			}
		})
	}
}

func nested(depth int) any {
	var v any = 1
	for range depth {
		v = []any{v}
	}
	return v
}

func mustPKIX(t testing.TB, k crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func mustEC(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// jwksServer serves a mutable key set and counts fetches.
type jwksServer struct {
	mu      sync.Mutex
	keys    map[string]*rsa.PublicKey
	fetches atomic.Int64
}

func (j *jwksServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	j.fetches.Add(1)
	j.mu.Lock()
	defer j.mu.Unlock()
	fmt.Fprint(w, `{"keys":[`)
	first := true
	for kid, k := range j.keys {
		if !first {
			fmt.Fprint(w, ",")
		}
		first = false
		fmt.Fprintf(w, `{"kty":"RSA","kid":%q,"alg":"RS256","use":"sig","n":%q,"e":"AQAB"}`, kid, base64.RawURLEncoding.EncodeToString(k.N.Bytes()))
	}
	fmt.Fprint(w, `]}`)
}

// TestJWKSRefreshOnUnknownKid rotates the issuer's key: a token with a new
// kid triggers one refresh and verifies; a second unknown kid right after
// is unknown_key without another fetch (rate limit).
func TestJWKSRefreshOnUnknownKid(t *testing.T) {
	k1, _ := rsa.GenerateKey(rand.Reader, 2048)
	k2, _ := rsa.GenerateKey(rand.Reader, 2048)
	js := &jwksServer{keys: map[string]*rsa.PublicKey{"k1": &k1.PublicKey}}
	srv := httptest.NewServer(js)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var refreshes, failures atomic.Int64
	v, err := NewVerifier(ctx, VerifyConfig{
		JWKSURL: srv.URL, JWKSMinRefresh: time.Hour,
		OnRefresh: func(context.Context) func(error) {
			return func(err error) {
				refreshes.Add(1)
				if err != nil {
					failures.Add(1)
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The first fetch runs in the background; wait for it so that the k1
	// check below does not spend the unknown-kid refresh.
	for deadline := time.Now().Add(5 * time.Second); !v.KeysLoaded(ctx); {
		if time.Now().After(deadline) {
			t.Fatalf("JWKS not loaded within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	now := time.Now()
	if _, vd := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k1", claimsFor("a", now), k1)); vd.Reason != ReasonNone {
		t.Fatalf("k1: %s %s", vd.Reason, vd.Detail)
	}
	before := js.fetches.Load()
	js.mu.Lock()
	js.keys["k2"] = &k2.PublicKey
	js.mu.Unlock()
	if _, vd := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k2", claimsFor("a", now), k2)); vd.Reason != ReasonNone {
		t.Fatalf("k2 after rotation: %s %s", vd.Reason, vd.Detail)
	}
	if got := js.fetches.Load() - before; got != 1 {
		t.Fatalf("%d fetches for the rotation, want 1", got)
	}
	if _, vd := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k3", claimsFor("a", now), k2)); vd.Reason != ReasonUnknownKey {
		t.Fatalf("k3: %s, want unknown_key", vd.Reason)
	}
	if got := js.fetches.Load() - before; got != 1 {
		t.Fatalf("an unknown kid within the refresh interval fetched again (%d fetches)", got)
	}
	if refreshes.Load() < 2 || failures.Load() != 0 {
		t.Fatalf("refresh hook saw %d fetches, %d failures", refreshes.Load(), failures.Load())
	}
}

func TestVerifierConfigErrors(t *testing.T) {
	if _, err := NewVerifier(context.Background(), VerifyConfig{}); err == nil {
		t.Fatalf("a verifier without any key must be refused")
	}
	if _, err := ParseAlgs("HS256,none"); err == nil {
		t.Fatalf("none must be refused in --jwt-algs")
	}
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte("  0123456789abcdef0123456789abcdef\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := LoadHMACSecret(p)
	if err != nil || string(s) != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("secret %q, %v: surrounding white space must be trimmed", s, err)
	}
}

// TestExpiryWithFakeClock moves the verifier's clock, not the wall clock.
func TestExpiryWithFakeClock(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	clock := now
	v, err := NewVerifier(context.Background(), VerifyConfig{HMACSecret: secret, Leeway: 30 * time.Second, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, "", jwt.MapClaims{"sub": "a", "exp": now.Add(time.Minute).Unix()}, secret)
	tests := []struct {
		at     time.Duration
		reason Reason
	}{
		{at: 0, reason: ReasonNone},
		{at: time.Minute + 29*time.Second, reason: ReasonNone},
		{at: time.Minute + 31*time.Second, reason: ReasonExpired},
	}
	for _, tt := range tests {
		clock = now.Add(tt.at)
		if _, vd := v.Verify(context.Background(), tok); vd.Reason != tt.reason {
			t.Fatalf("at +%s: %s, want %s",
				tt.at, vd.Reason, tt.reason)
		}
	}
}
