package authn

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// fullPath returns a copy of v that never takes the fast path. The copy
// shares v's keys and JWKS client.
func fullPath(v *Verifier) *Verifier {
	c := *v
	c.noFastPath = true
	return &c
}

// sameOutcome verifies token with both paths and fails the test unless the
// Principal (exported fields and claims bytes) and Verdict are identical.
// It returns the fast path's outcome and whether the fast path produced it.
func sameOutcome(t *testing.T, fast, full *Verifier, token []byte) (Principal, Verdict, bool) {
	t.Helper()
	ctx := context.Background()
	_, _, took := fast.verifyFast(ctx, token)
	p1, vd1 := fast.Verify(ctx, token)
	p2, vd2 := full.Verify(ctx, token)
	if vd1 != vd2 {
		t.Fatalf("verdicts differ for %q:\nfast %+v\nfull %+v",
			token, vd1, vd2)
	}
	if p1.Subject != p2.Subject || p1.Issuer != p2.Issuer || p1.ExpiresAt != p2.ExpiresAt ||
		p1.Alg != p2.Alg || p1.Kid != p2.Kid || !bytes.Equal(p1.claims, p2.claims) ||
		(p1.claims == nil) != (p2.claims == nil) || p1.claimMap != nil || p2.claimMap != nil {
		t.Fatalf("principals differ for %q:\nfast %+v %q\nfull %+v %q",
			token, p1, p1.claims, p2, p2.claims)
	}
	if took && vd1.Reason != ReasonNone && vd1.Reason != ReasonBadSignature {
		t.Fatalf("fast path decided %q, which the parser refuses (%s): it decides acceptances and bad signatures only",
			token, vd1.Reason)
	}
	return p1, vd1, took
}

// jwksFile writes the key set js serves to a file, for KeyFiles.
func jwksFile(t *testing.T, js *jwksServer) string {
	t.Helper()
	rec := httptest.NewRecorder()
	js.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	p := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(p, rec.Body.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// rawToken builds a token from a literal header and payload, HS256-signed
// with secret.
func rawToken(secret []byte, hdr, payload string) []byte {
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(hdr)) + "." + enc.EncodeToString([]byte(payload))
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return []byte(input + "." + enc.EncodeToString(m.Sum(nil)))
}

// TestVerifyFastPath checks which tokens the fast path accepts itself and
// that, taken or not, the outcome is the parser's.
func TestVerifyFastPath(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	kidKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, edKey, _ := ed25519.GenerateKey(rand.Reader)
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Unix(1_800_000_000, 0)
	fast, err := NewVerifier(context.Background(), VerifyConfig{
		HMACSecret: secret,
		KeyFiles: []string{
			pemFile(t, &rsaKey.PublicKey), pemFile(t, &ecKey.PublicKey), pemFile(t, edPub),
			jwksFile(t, &jwksServer{keys: map[string]*rsa.PublicKey{"k1": &kidKey.PublicKey}}),
		},
		Issuer:   "https://issuer.example",
		Audience: "wsbroker",
		Leeway:   30 * time.Second,
		Now:      func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	full := fullPath(fast)
	claims := func(extra jwt.MapClaims) jwt.MapClaims {
		c := jwt.MapClaims{"sub": "a", "iss": "https://issuer.example", "aud": []string{"x", "wsbroker"}, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "channels": []string{"news"}}
		for k, v := range extra {
			if v == nil {
				delete(c, k)
			} else {
				c[k] = v
			}
		}
		return c
	}
	hs := func(hdr, payload string) []byte { return rawToken(secret, hdr, payload) }
	good := `{"sub":"a","iss":"https://issuer.example","aud":"wsbroker","exp":1800003600}`
	tests := []struct {
		name   string
		token  []byte
		reason Reason
		fast   bool
	}{
		{name: "HS256", token: sign(t, jwt.SigningMethodHS256, "", claims(nil), secret), fast: true},
		{name: "HS512 with a kid no key has", token: sign(t, jwt.SigningMethodHS512, "nope", claims(nil), secret), fast: true},
		{name: "RS256", token: sign(t, jwt.SigningMethodRS256, "", claims(nil), rsaKey), fast: true},
		{name: "PS384", token: sign(t, jwt.SigningMethodPS384, "", claims(nil), rsaKey), fast: true},
		{name: "RS256 JWKS kid", token: sign(t, jwt.SigningMethodRS256, "k1", claims(nil), kidKey), fast: true},
		{name: "RS256 kid unknown, key without kid", token: sign(t, jwt.SigningMethodRS256, "nope", claims(nil), rsaKey), fast: true},
		{name: "RS256 JWKS key, no kid", token: sign(t, jwt.SigningMethodRS256, "", claims(nil), kidKey), reason: ReasonBadSignature, fast: true},
		{name: "ES256", token: sign(t, jwt.SigningMethodES256, "", claims(nil), ecKey), fast: true},
		{name: "EdDSA", token: sign(t, jwt.SigningMethodEdDSA, "", claims(nil), edKey), fast: true},
		{name: "white space in the header, around the claims", token: hs(`{ "alg" : "HS256" } `, "\n\t"+good+" \r\n"), fast: true},
		{name: "empty kid", token: hs(`{"alg":"HS256","kid":"","typ":"JWT","x":"y"}`, good), fast: true},
		{name: "iat within leeway", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"iat": now.Add(20 * time.Second).Unix()}), secret), fast: true},

		{name: "expired", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"exp": now.Add(-time.Minute).Unix()}), secret), reason: ReasonExpired},
		{name: "no exp", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"exp": nil}), secret), reason: ReasonMissingClaim},
		{name: "iat in the future", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"iat": now.Add(time.Minute).Unix()}), secret), reason: ReasonNotYetValid},
		{name: "nbf in the future", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"nbf": now.Add(time.Minute).Unix()}), secret), reason: ReasonNotYetValid},
		{name: "wrong issuer", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"iss": "other"}), secret), reason: ReasonWrongIssuer},
		{name: "no audience", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"aud": nil}), secret), reason: ReasonMissingClaim},
		{name: "wrong audience", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"aud": "x"}), secret), reason: ReasonWrongAudience},
		{name: "no sub", token: sign(t, jwt.SigningMethodHS256, "", claims(jwt.MapClaims{"sub": nil}), secret), reason: ReasonMissingClaim},
		{name: "bad signature", token: sign(t, jwt.SigningMethodHS256, "", claims(nil), []byte("another secret, another secret!!")), reason: ReasonBadSignature, fast: true},
		{name: "RS256 JWKS kid, other key", token: sign(t, jwt.SigningMethodRS256, "k1", claims(nil), rsaKey), reason: ReasonBadSignature, fast: true},
		{name: "crit", token: hs(`{"alg":"HS256","crit":"x"}`, good), reason: ReasonMalformedToken},
		{name: "alg none", token: []byte(base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + base64.RawURLEncoding.EncodeToString([]byte(good)) + "."), reason: ReasonAlgNotAllowed},
		{name: "made-up alg", token: hs(`{"alg":"HS257"}`, good), reason: ReasonAlgNotAllowed},

		// The parser accepts these; the fast path leaves them to it.
		{name: "repeated alg", token: hs(`{"alg":"RS256","alg":"HS256"}`, good), reason: ReasonNone},
		{name: "escaped name", token: hs(`{"\u0061lg":"HS256"}`, good), reason: ReasonNone},
		{name: "escaped kid", token: hs(`{"alg":"HS256","kid":"a\/b"}`, good), reason: ReasonNone},
		{name: "non-ASCII value", token: hs(`{"alg":"HS256","typ":"é"}`, good), reason: ReasonNone},
		{name: "non-string member", token: hs(`{"alg":"HS256","n":1}`, good), reason: ReasonNone},
		{name: "non-string kid", token: hs(`{"alg":"HS256","kid":7}`, good), reason: ReasonNone},
		{name: "CRIT", token: hs(`{"alg":"HS256","CRIT":["x"]}`, good), reason: ReasonNone},
		{name: "white space before the header", token: hs(` {"alg":"HS256"}`, good), reason: ReasonNone},
		{name: "nine members", token: hs(`{"alg":"HS256","a":"","b":"","c":"","d":"","e":"","f":"","g":"","h":""}`, good), reason: ReasonNone},
		{name: "registered claim as a string", token: hs(`{"alg":"HS256"}`, `{"sub":"a","iss":"https://issuer.example","aud":"wsbroker","exp":"1800003600"}`), reason: ReasonNone},
		{name: "escaped sub", token: hs(`{"alg":"HS256"}`, `{"sub":"\u0061","iss":"https://issuer.example","aud":"wsbroker","exp":1800003600}`), reason: ReasonNone},
		{name: "padded signature", token: append(hs(`{"alg":"HS256"}`, good), '='), reason: ReasonMalformedToken},
		{name: "four segments", token: append(hs(`{"alg":"HS256"}`, good), '.'), reason: ReasonMalformedToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, vd, took := sameOutcome(t, fast, full, tt.token)
			if vd.Reason != tt.reason {
				t.Fatalf("reason %s (%s), want %s",
					vd.Reason, vd.Detail, tt.reason)
			}
			if took != tt.fast {
				t.Fatalf("fast path taken: %v, want %v",
					took, tt.fast)
			}
			if tt.fast && tt.reason == ReasonNone && p.Subject != "a" {
				t.Fatalf("subject %q",
					p.Subject)
			}
		})
	}
}

// TestVerifyFastPathJWKS checks that a kid in the fetched set takes the
// fast path and an unknown kid leaves the refresh and its limiter to the
// parser's path: one fetch for the rotation, none for the next unknown kid.
func TestVerifyFastPathJWKS(t *testing.T) {
	k1, _ := rsa.GenerateKey(rand.Reader, 2048)
	k2, _ := rsa.GenerateKey(rand.Reader, 2048)
	js := &jwksServer{keys: map[string]*rsa.PublicKey{"k1": &k1.PublicKey}}
	srv := httptest.NewServer(js)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v, err := NewVerifier(ctx, VerifyConfig{JWKSURL: srv.URL, JWKSMinRefresh: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !v.KeysLoaded(ctx); {
		if time.Now().After(deadline) {
			t.Fatalf("JWKS not loaded within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	full := fullPath(v)
	now := time.Now()
	if _, vd, took := sameOutcome(t, v, full, sign(t, jwt.SigningMethodRS256, "k1", claimsFor("a", now), k1)); vd.Reason != ReasonNone || !took {
		t.Fatalf("k1: %s %s, fast path %v", vd.Reason, vd.Detail, took)
	}
	if _, vd, took := sameOutcome(t, v, full, sign(t, jwt.SigningMethodRS256, "", claimsFor("a", now), k1)); vd.Reason != ReasonNone || !took {
		t.Fatalf("no kid: %s %s, fast path %v", vd.Reason, vd.Detail, took)
	}
	before := js.fetches.Load()
	js.mu.Lock()
	js.keys["k2"] = &k2.PublicKey
	js.mu.Unlock()
	k2tok := sign(t, jwt.SigningMethodRS256, "k2", claimsFor("a", now), k2)
	if _, _, took := v.verifyFast(ctx, k2tok); took {
		t.Fatalf("fast path accepted a kid not fetched yet")
	}
	if got := js.fetches.Load() - before; got != 0 {
		t.Fatalf("the fast path fetched the key set (%d fetches)", got)
	}
	if _, vd := v.Verify(ctx, k2tok); vd.Reason != ReasonNone {
		t.Fatalf("k2 after rotation: %s %s", vd.Reason, vd.Detail)
	}
	if got := js.fetches.Load() - before; got != 1 {
		t.Fatalf("%d fetches for the rotation, want 1", got)
	}
	if _, _, took := v.verifyFast(ctx, k2tok); !took {
		t.Fatalf("k2 once fetched: fast path not taken")
	}
	if _, vd := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "k3", claimsFor("a", now), k2)); vd.Reason != ReasonUnknownKey {
		t.Fatalf("k3: %s, want unknown_key", vd.Reason)
	}
	if got := js.fetches.Load() - before; got != 1 {
		t.Fatalf("an unknown kid within the refresh interval fetched again (%d fetches)", got)
	}
}

// FuzzVerifyFastPath is FuzzVerify's generator against two verifiers, one
// with the fast path and one without: same Principal, same Verdict, for
// tokens with and without the issuer and audience options.
func FuzzVerifyFastPath(f *testing.F) {
	now := time.Unix(1767225600, 0)
	secret := []byte("0123456789abcdef0123456789abcdef-fuzz")
	var pairs [2][2]*Verifier
	for i, cfg := range []VerifyConfig{
		{HMACSecret: secret, Leeway: 30 * time.Second, Now: func() time.Time { return now }},
		{HMACSecret: secret, Issuer: "iss", Audience: "aud", Now: func() time.Time { return now }},
	} {
		v, err := NewVerifier(context.Background(), cfg)
		if err != nil {
			f.Fatal(err)
		}
		pairs[i] = [2]*Verifier{v, fullPath(v)}
	}
	for _, s := range []struct{ hdr, payload string }{
		{`{"alg":"HS256","typ":"JWT"}`, `{"sub":"alice","exp":1767229200,"channels":["news","user:alice:*"]}`},
		{`{"alg":"HS256"}`, `{"sub":"bob","exp":1767225000}`},
		{`{"alg":"HS256"}`, `{"sub":"bob","exp":1767225590,"iat":1767225620,"nbf":1767225629.5}`},
		{`{"alg":"HS256","kid":"k"}`, ` {"sub":"a","iss":"iss","aud":["x","aud"],"exp":1767229200} `},
		{`{"alg":"HS256"}`, `{"sub":"a","iss":"iss","aud":"aud","exp":1767229200,"iat":1767229200}`},
		{`{"alg":"HS256"}`, `{"sub":"a","iss":"iss","aud":[],"exp":1767229200}`},
		{`{"alg":"HS256"}`, `{"sub":"a","iss":"","aud":[""],"exp":1767229200}`},
		{`{"alg":"none"}`, `{"sub":"mallory"}`},
		{`{"alg":"HS256","crit":["exp"]}`, `{"sub":"a","exp":1767229200}`},
		{`{"alg":"HS256","Crit":"x","ALG":"RS256"}`, `{"sub":"a","exp":1767229200}`},
		{`{"alg":"HS384","alg":"HS256"}`, `{"sub":"a","exp":1767229200}`},
		{`{"alg":"HS256","kid":"k1"}`, `{"sub":"a","exp":"1767229200","aud":["x","y"],"nbf":1.5e9}`},
		{`{"alg":"RS256"}`, `{"sub":"a"}`},
		{`{"alg":"HS256"}`, `{"sub":"a","exp":1767229200,"scope":"read write","x":{"y":[1,{"z":null}]}}`},
		{`{"alg":"HS256"}`, `{"sub":"\u0061","EXP":1,"Sub":"b","sub":"c"}`},
		{`{"alg":"HS256"}`, `{"sub":"a","exp":1767229200,"exp":1767229201}`},
		{`{"alg":"HS256"}`, `{"sub":"a","exp":1e400}`},
		{`{"alg":"HS256"}`, `[]`},
		{`null`, `null`},
		{`not json`, `{`},
	} {
		f.Add([]byte(s.hdr), []byte(s.payload), true, []byte(nil))
		f.Add([]byte(s.hdr), []byte(s.payload), false, []byte(nil))
	}
	f.Add([]byte(nil), []byte(nil), false, []byte("a.b.c"))
	f.Add([]byte(nil), []byte(nil), false, []byte("...."))
	f.Add([]byte(nil), []byte(nil), false, rawToken(secret, `{"alg":"HS256"}`, `{"sub":"a","exp":1767229200}`))
	f.Fuzz(func(t *testing.T, hdr, payload []byte, signed bool, raw []byte) {
		tok := fuzzToken(secret, hdr, payload, signed, raw)
		for _, p := range pairs {
			sameOutcome(t, p[0], p[1], tok)
		}
	})
}

// TestVerifyFastPathAllocs pins the allocations of an accepted HS256
// token: header, payload and signature buffers, the signing string, the
// claims' strings and dates, the claims, the key list, the validator's
// error list and HMAC's own.
func TestVerifyFastPathAllocs(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now()
	v, err := NewVerifier(context.Background(), VerifyConfig{HMACSecret: secret, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodHS256, "", jwt.MapClaims{"sub": "u", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "channels": []string{"a"}}, secret)
	n := testing.AllocsPerRun(100, func() {
		if _, vd := v.Verify(context.Background(), tok); vd.Reason != ReasonNone {
			t.Fatal(vd.Reason)
		}
	})
	if n > 16 {
		t.Fatalf("Verify: %v allocations, want at most 16", n)
	}
}
