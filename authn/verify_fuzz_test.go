package authn

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"testing"
	"time"
)

// FuzzVerify feeds the verification wrapper tokens built from arbitrary
// header and payload bytes, validly HS256-signed or not, and raw token
// bytes: it must never panic, always name a known reason, and accept only
// a token that is signed with the secret, names a subject and, when it says
// when it expires, has not expired.
func FuzzVerify(f *testing.F) {
	now := time.Unix(1767225600, 0)
	secret := []byte("0123456789abcdef0123456789abcdef-fuzz")
	v, err := NewVerifier(context.Background(), VerifyConfig{HMACSecret: secret, Leeway: 30 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []struct{ hdr, payload string }{
		{`{"alg":"HS256","typ":"JWT"}`, `{"sub":"alice","exp":1767229200,"channels":["news","user:alice:*"]}`},
		{`{"alg":"HS256"}`, `{"sub":"bob","exp":1767225000}`},
		{`{"alg":"none"}`, `{"sub":"mallory"}`},
		{`{"alg":"HS256","crit":["exp"]}`, `{"sub":"a","exp":1767229200}`},
		{`{"alg":"HS256","kid":"k1"}`, `{"sub":"a","exp":"1767229200","aud":["x","y"],"nbf":1.5e9}`},
		{`{"alg":"RS256"}`, `{"sub":"a"}`},
		{`{"alg":"HS256"}`, `{"sub":"a","exp":1767229200,"scope":"read write","x":{"y":[1,{"z":null}]}}`},
		{`{"alg":"HS256"}`, `{"sub":"\u0061","EXP":1,"Sub":"b","sub":"c"}`},
		{`{"alg":"HS256"}`, `[]`},
		{`not json`, `{`},
	} {
		f.Add([]byte(s.hdr), []byte(s.payload), true, []byte(nil))
		f.Add([]byte(s.hdr), []byte(s.payload), false, []byte(nil))
	}
	f.Add([]byte(nil), []byte(nil), false, []byte("a.b.c"))
	f.Add([]byte(nil), []byte(nil), false, []byte("...."))
	f.Fuzz(func(t *testing.T, hdr, payload []byte, signed bool, raw []byte) {
		tok := fuzzToken(secret, hdr, payload, signed, raw)
		p, vd := v.Verify(context.Background(), tok)
		if vd.Reason >= NumReasons {
			t.Fatalf("unknown reason %d for %q", vd.Reason, tok)
		}
		if vd.Reason != ReasonNone {
			if p.Subject != "" {
				t.Fatalf("refused (%s) with a principal %q", vd.Reason, p.Subject)
			}
			return
		}
		if raw != nil || !signed {
			t.Fatalf("accepted a token not signed with the secret: %q", tok)
		}
		if p.Subject == "" {
			t.Fatalf("accepted without a subject: %q", payload)
		}
		if !p.ExpiresAt.IsZero() && !now.Before(p.ExpiresAt.Add(30*time.Second)) {
			t.Fatalf("accepted a token expired at %s (now %s): %q", p.ExpiresAt, now, payload)
		}
		// The claims the broker reads for permissions must not panic either.
		_, _ = p.StringsClaim("channels")
		_, _ = p.StringsClaim("scope")
	})
}

// fuzzToken is the fuzz targets' token: raw when given, else header and
// payload base64url-encoded and signed with secret (HS256) when signed,
// with a signature that is not one otherwise.
func fuzzToken(secret, hdr, payload []byte, signed bool, raw []byte) []byte {
	if raw != nil {
		return raw
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(hdr) + "." + enc.EncodeToString(payload)
	sig := []byte("not a signature")
	if signed {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(input))
		sig = m.Sum(nil)
	}
	return []byte(input + "." + enc.EncodeToString(sig))
}
