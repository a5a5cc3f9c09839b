package authn_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/wsbroker/wsbroker/authn"
)

// BenchmarkVerify measures one token verification per op, per algorithm,
// accepted and rejected (bad signature), next to what the baseline server
// does (golang-jwt MapClaims with a keyfunc) and next to what a
// verification cache would cost per hit (SHA-256 of the token, the key of
// such a cache). docs/benchmarks.md reads the figures.
func BenchmarkVerify(b *testing.B) {
	secret := []byte("0123456789abcdef0123456789abcdef-bench-secret")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	edPub, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	var files []string
	for name, pub := range map[string]crypto.PublicKey{"rsa": &rsaKey.PublicKey, "ec": &ecKey.PublicKey, "ed": edPub} {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(dir, name+".pem")
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
			b.Fatal(err)
		}
		files = append(files, path)
	}
	v, err := authn.NewVerifier(context.Background(), authn.VerifyConfig{HMACSecret: secret, KeyFiles: files, Leeway: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	claims := jwt.MapClaims{"sub": "bench-user", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "channels": []string{"news", "user:bench-user:*"}}
	sign := func(m jwt.SigningMethod, key any) string {
		s, err := jwt.NewWithClaims(m, claims).SignedString(key)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	cases := []struct {
		name   string
		token  string
		reason authn.Reason
	}{
		{"HS256", sign(jwt.SigningMethodHS256, secret), authn.ReasonNone},
		{"RS256", sign(jwt.SigningMethodRS256, rsaKey), authn.ReasonNone},
		{"ES256", sign(jwt.SigningMethodES256, ecKey), authn.ReasonNone},
		{"EdDSA", sign(jwt.SigningMethodEdDSA, edKey), authn.ReasonNone},
		{"HS256-bad_signature", sign(jwt.SigningMethodHS256, []byte("another-secret-another-secret-another")), authn.ReasonBadSignature},
		{"RS256-bad_signature", sign(jwt.SigningMethodRS256, mustRSA(b)), authn.ReasonBadSignature},
		{"malformed_token", "not.a.jwt", authn.ReasonMalformedToken},
	}
	ctx := context.Background()
	for _, c := range cases {
		tok := []byte(c.token)
		if _, vd := v.Verify(ctx, tok); vd.Reason != c.reason {
			b.Fatalf("%s: reason %s, want %s", c.name, vd.Reason, c.reason)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = v.Verify(ctx, tok)
			}
		})
	}
	// The baseline server's verification: MapClaims and a keyfunc.
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"HS256", "RS256"}), jwt.WithExpirationRequired(), jwt.WithIssuedAt(), jwt.WithLeeway(30*time.Second))
	keyfunc := func(t *jwt.Token) (any, error) {
		if t.Method.Alg() == "RS256" {
			return &rsaKey.PublicKey, nil
		}
		return secret, nil
	}
	for _, c := range cases[:2] {
		b.Run("golang-jwt-MapClaims-"+c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := parser.Parse(c.token, keyfunc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	// A cache hit costs at least a hash of the token.
	b.Run("cache-key-sha256", func(b *testing.B) {
		tok := []byte(cases[0].token)
		b.ReportAllocs()
		for b.Loop() {
			_ = sha256.Sum256(tok)
		}
	})
}

func mustRSA(b *testing.B) *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		b.Fatal(err)
	}
	return k
}
