package authn

// A fast path for Verify. golang-jwt's Parser decodes the JOSE
// header into a map[string]any with encoding/json and builds a Token for
// every call: ~9% of the broker's CPU per accepted HS256 upgrade went to
// the header map alone. verifyFast reads the common token shape by hand and
// then uses golang-jwt's own pieces, each exactly as the Parser would: the
// same base64url decoder (RawURLEncoding, neither padded nor strict, as
// NewVerifier configures the Parser), jwt.GetSigningMethod's method
// objects, the key from keyForAlg (keyFor's rules), the VerificationKeySet
// loop of ParseWithClaims, and a jwt.Validator built from the Parser's
// options. It decides two outcomes only: an acceptance, and a bad
// signature on an otherwise valid token (the Parser's verdict rebuilt from
// the same error, so that a forged token costs one signature check, not
// two). For anything unusual or any other failure it reports ok=false and
// Verify runs the Parser, so every other rejection's Verdict comes from
// there. FuzzVerifyFastPath checks that both paths give the same Principal
// and Verdict.
// Measured (medians of 5 interleaved runs, 2 noisy cores): BenchmarkVerify
// HS256 4.8 → 2.1 µs (38 → 16 allocs), RS256 37.5 → 33.9 µs,
// BenchmarkUpgrade/accepted-HS256-header 23.2 → 19.0 µs (67 → 45 allocs).
// A bad signature is decided here too (it was checked twice, here and by
// the Parser, at first: RS256-bad_signature 38 → 75 µs).

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// maxHeaderMembers bounds the header's members (duplicates are found by
// comparing each pair); a header with more takes the Parser.
const maxHeaderMembers = 8

// scanHeader reads the members of a JOSE header that keyFor and Verify
// read: alg and kid. It accepts only a flat object whose members are
// escape-free ASCII names with escape-free ASCII string values, with alg,
// without crit and without a repeated name; everything else is ok=false.
// Those rules make the map encoding/json would decode hold the same alg and
// kid, whatever the other members are (the Parser ignores them).
func scanHeader(b []byte) (alg, kid []byte, ok bool) {
	var names [maxHeaderMembers][]byte
	n := 0
	hasAlg := false
	var m jsonMember
	s := newObjectScan(b)
	for s.next(&m) {
		if m.keyFlags != 0 || m.valFlags != 0 || m.val[0] != '"' || n == len(names) {
			return nil, nil, false
		}
		for _, k := range names[:n] {
			if bytes.Equal(k, m.key) {
				return nil, nil, false
			}
		}
		names[n] = m.key
		n++
		val := m.val[1 : len(m.val)-1]
		switch string(m.key) {
		case "alg":
			alg, hasAlg = val, true
		case "kid":
			kid = val
		case "crit":
			// keyFor refuses it; the refusal's verdict is the Parser's.
			return nil, nil, false
		default:
			// The map is case-sensitive, so "ALG" or "Crit" change
			// nothing there; such a token is odd enough to leave to it.
			if len(m.key) <= 4 && (strings.EqualFold(string(m.key), "alg") ||
				strings.EqualFold(string(m.key), "kid") || strings.EqualFold(string(m.key), "crit")) {
				return nil, nil, false
			}
		}
	}
	return alg, kid, s.ok() && hasAlg
}

// verifyFast verifies token if it has the common shape: ok with the
// principal when it is valid, ok with the bad_signature verdict when only
// its signature is wrong; ok is false otherwise, and the caller runs the
// Parser.
func (v *Verifier) verifyFast(ctx context.Context, token []byte) (p Principal, vd Verdict, ok bool) {
	// A header read here starts with `{` and a space or a quote, which
	// base64url-encodes as "ey": other input takes the full path without
	// an allocation here.
	if len(token) < 2 || token[0] != 'e' || token[1] != 'y' {
		return p, vd, false
	}
	// The Parser's splitToken: exactly two dots.
	d1 := bytes.IndexByte(token, '.')
	if d1 < 0 {
		return p, vd, false
	}
	d2 := bytes.IndexByte(token[d1+1:], '.')
	if d2 < 0 {
		return p, vd, false
	}
	d2 += d1 + 1
	if bytes.IndexByte(token[d2+1:], '.') >= 0 {
		return p, vd, false
	}
	// The Parser's DecodeSegment is RawURLEncoding.DecodeString: a buffer
	// of DecodedLen, then Decode.
	enc := base64.RawURLEncoding

	seg := token[:d1]
	hdr := make([]byte, enc.DecodedLen(len(seg)))
	n, err := enc.Decode(hdr, seg)
	if err != nil {
		return p, vd, false
	}
	algB, kidB, hok := scanHeader(hdr[:n])
	if !hok || !v.algs[string(algB)] {
		return p, vd, false
	}
	method := jwt.GetSigningMethod(string(algB))
	if method == nil || method.Alg() != string(algB) {
		return p, vd, false
	}
	alg := method.Alg()

	// Claims: json.Unmarshal hands tokenClaims.UnmarshalJSON the object
	// without the white space around it; only scanRegistered's answer is
	// taken here, never encoding/json's.
	seg = token[d1+1 : d2]
	payload := make([]byte, enc.DecodedLen(len(seg)))
	if n, err = enc.Decode(payload, seg); err != nil {
		return p, vd, false
	}
	raw := trimJSONSpace(payload[:n])
	var c tokenClaims
	if !scanRegistered(raw, &c.RegisteredClaims) || c.Subject == "" || c.ExpiresAt == nil {
		return p, vd, false
	}
	c.raw = raw

	kid := string(kidB)
	key, err := v.keyForAlg(ctx, alg, kid, false)
	if err != nil {
		return p, vd, false
	}
	// The Parser validates the claims after the signature; the outcome
	// is the same either way, and a token that would fail them (an
	// expired one) then costs the full path's signature check only.
	if v.validator.Validate(&c) != nil {
		return p, vd, false
	}
	seg = token[d2+1:]
	sig := make([]byte, enc.DecodedLen(len(seg)))
	if n, err = enc.Decode(sig, seg); err != nil {
		return p, vd, false
	}
	if err := verifySignature(method, string(token[:d2]), sig[:n], key); err != nil {
		if err == errEmptyKeySet {
			return p, vd, false
		}
		// The full path's verdict for a bad signature, built from the same
		// error ParseWithClaims returns (newError("", ErrTokenSignatureInvalid,
		// err)): a forged token costs one signature check, not two.
		// FuzzVerifyFastPath compares the two verdicts.
		err = fmt.Errorf("%w: %w", jwt.ErrTokenSignatureInvalid, err)
		vd = Verdict{Reason: classify(err), Detail: detailOf(err), Alg: alg, Kid: kid, Iss: c.Issuer, Sub: c.Subject}
		return p, vd, true
	}
	p = Principal{
		Subject:   c.Subject,
		Issuer:    c.Issuer,
		ExpiresAt: c.ExpiresAt.Time,
		Alg:       alg,
		Kid:       kid,
		claims:    c.raw,
	}
	vd = Verdict{Alg: alg, Kid: kid, Iss: c.Issuer, Sub: c.Subject}
	return p, vd, true
}

// errEmptyKeySet: the full path's answer to an empty key set is not a
// signature error; the caller takes the full path.
var errEmptyKeySet = errors.New("empty verification key set")

// verifySignature is ParseWithClaims's signature check: a key set passes
// if any of its keys verifies, and fails with the last key's error.
func verifySignature(m jwt.SigningMethod, text string, sig []byte, key any) error {
	set, ok := key.(jwt.VerificationKeySet)
	if !ok {
		return m.Verify(text, sig, key)
	}
	if len(set.Keys) == 0 {
		return errEmptyKeySet
	}
	var err error
	for _, k := range set.Keys {
		if err = m.Verify(text, sig, k); err == nil {
			return nil
		}
	}
	return err
}

// trimJSONSpace drops the white space encoding/json skips around a value.
func trimJSONSpace(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && isJSONSpace(b[i]) {
		i++
	}
	for j > i && isJSONSpace(b[j-1]) {
		j--
	}
	return b[i:j]
}

func isJSONSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r'
}
