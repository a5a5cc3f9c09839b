package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// VerifyConfig configures JWT verification.
type VerifyConfig struct {
	// Algs is the algorithm allow-list; empty means every algorithm of the
	// configured keys' families.
	Algs []string
	// Issuer and Audience, when set, must match iss and one of aud.
	Issuer   string
	Audience string
	// Leeway tolerates clock skew on exp, nbf and iat.
	Leeway time.Duration
	// HMACSecret verifies HS* tokens.
	HMACSecret []byte
	// KeyFiles are PEM public keys or JWKS documents (paths).
	KeyFiles []string
	// JWKSURL is fetched at start, hourly, and (rate-limited by
	// JWKSMinRefresh) when a token names an unknown kid.
	JWKSURL        string
	JWKSMinRefresh time.Duration
	HTTPClient     *http.Client
	// OnRefresh observes JWKS fetches.
	OnRefresh RefreshHook
	// Now is the clock; nil means time.Now. Tests pass a fake one.
	Now func() time.Time
}

// Principal is who a verified token says the client is.
type Principal struct {
	Subject   string
	Issuer    string
	ExpiresAt time.Time
	Alg       string
	Kid       string
	// claims is the token's JSON payload, kept for permission claims;
	// claimMap is it decoded, once, on the first Claim findMember cannot
	// read (claimscan.go).
	claims   json.RawMessage
	claimMap map[string]json.RawMessage
}

// Verdict describes a verification for events and traces. Iss and Sub are
// unverified on failure ("claimed"); none of its fields is secret.
type Verdict struct {
	Reason Reason
	Alg    string
	Kid    string
	Iss    string
	Sub    string
	// Detail is a short, token-free explanation from the JWT library.
	Detail string
}

// Verifier checks compact JWS tokens. It is safe for concurrent use.
type Verifier struct {
	parser   *jwt.Parser
	algs     map[string]bool
	static   []staticKey
	byKid    map[string][]staticKey
	remote   *remoteKeys
	now      func() time.Time
	audience string
	// validator is the parser's claims validation, built from the same
	// options, for the fast path (verifyfast.go).
	validator *jwt.Validator
	// noFastPath sends every token through the parser (tests compare the
	// two).
	noFastPath bool
}

// NewVerifier loads keys and returns a Verifier. ctx bounds the JWKS
// client's background refresh.
func NewVerifier(ctx context.Context, cfg VerifyConfig) (*Verifier, error) {
	v := &Verifier{now: cfg.Now, byKid: map[string][]staticKey{}, audience: cfg.Audience}
	if v.now == nil {
		v.now = time.Now
	}
	kinds := map[keyKind]bool{}
	if len(cfg.HMACSecret) > 0 {
		v.static = append(v.static, staticKey{kind: keyHMAC, key: cfg.HMACSecret})
		kinds[keyHMAC] = true
	}
	for _, path := range cfg.KeyFiles {
		keys, err := LoadKeyFile(path)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			kinds[k.kind] = true
		}
		v.static = append(v.static, keys...)
	}
	for _, k := range v.static {
		if k.kid != "" {
			v.byKid[k.kid] = append(v.byKid[k.kid], k)
		}
	}
	if cfg.JWKSURL != "" {
		minRefresh := cfg.JWKSMinRefresh
		if minRefresh <= 0 {
			minRefresh = time.Minute
		}
		r, err := newRemoteKeys(ctx, cfg.JWKSURL, cfg.HTTPClient, minRefresh, cfg.OnRefresh)
		if err != nil {
			return nil, err
		}
		v.remote = r
		kinds[keyRSA], kinds[keyEC], kinds[keyEd] = true, true, true
	}
	if len(v.static) == 0 && v.remote == nil {
		return nil, errors.New("no verification key: set --jwt-hmac-secret-file, --jwt-key-file or --jwks-url (or --dev for an ephemeral secret)")
	}
	algs := cfg.Algs
	if len(algs) == 0 {
		algs = algList(kinds)
	}
	v.algs = map[string]bool{}
	for _, a := range algs {
		if kindOfAlg(a) == 0 {
			return nil, fmt.Errorf("jwt-algs: unknown algorithm %q", a)
		}
		v.algs[a] = true
	}
	opts := []jwt.ParserOption{
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(v.now),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	v.validator = jwt.NewValidator(opts...)
	return v, nil
}

// KeysLoaded reports whether a key is available: static keys always are; a
// JWKS URL only once a fetch has succeeded. Readiness checks use it: while
// no key is loaded it fetches the JWKS again, at most once per
// JWKSMinRefresh.
func (v *Verifier) KeysLoaded(ctx context.Context) bool {
	return len(v.static) > 0 || v.remote != nil && v.remote.loaded(ctx)
}

// Algs returns the allow-list.
func (v *Verifier) Algs() []string {
	out := make([]string, 0, len(v.algs))
	for _, k := range []keyKind{keyHMAC, keyRSA, keyEC, keyEd} {
		for _, a := range algsOfKind(k) {
			if v.algs[a] {
				out = append(out, a)
			}
		}
	}
	return out
}

// tokenClaims decodes the registered claims and keeps the raw payload.
type tokenClaims struct {
	jwt.RegisteredClaims
	raw json.RawMessage
}

func (c *tokenClaims) UnmarshalJSON(b []byte) error {
	c.raw = append(c.raw[:0], b...)
	if scanRegistered(b, &c.RegisteredClaims) {
		return nil
	}
	return json.Unmarshal(b, &c.RegisteredClaims)
}

// Verify checks token and returns the principal, or a verdict whose Reason
// is not ReasonNone.
func (v *Verifier) Verify(ctx context.Context, token []byte) (Principal, Verdict) {
	if !v.noFastPath {
		if p, vd, ok := v.verifyFast(ctx, token); ok {
			return p, vd
		}
	}
	var c tokenClaims
	t, err := v.parser.ParseWithClaims(string(token), &c, func(t *jwt.Token) (any, error) {
		return v.keyFor(ctx, t)
	})
	var vd Verdict
	if t != nil {
		vd.Alg, _ = t.Header["alg"].(string)
		vd.Kid, _ = t.Header["kid"].(string)
		vd.Iss, vd.Sub = c.Issuer, c.Subject
	}
	if err != nil {
		vd.Reason = classify(err)
		vd.Detail = detailOf(err)
		return Principal{}, vd
	}
	if c.Subject == "" {
		vd.Reason, vd.Detail = ReasonMissingClaim, "token has no sub claim"
		return Principal{}, vd
	}
	p := Principal{
		Subject:   c.Subject,
		Issuer:    c.Issuer,
		ExpiresAt: c.ExpiresAt.Time,
		Alg:       vd.Alg,
		Kid:       vd.Kid,
		claims:    c.raw,
	}
	return p, vd
}

func (v *Verifier) keyFor(ctx context.Context, t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515 §4.1.11: a recipient that does not understand a critical
		// extension must reject the token; this one understands none.
		return nil, errCritHeader
	}
	kid, _ := t.Header["kid"].(string)
	return v.keyForAlg(ctx, t.Method.Alg(), kid, true)
}

// keyForAlg is keyFor after the header checks. With fetch false a kid the
// JWKS cache does not hold is errNeedFetch instead of a refresh: the fast
// path then leaves the token to the full one, so the refresh and its
// limiter are only ever reached from there.
func (v *Verifier) keyForAlg(ctx context.Context, alg, kid string, fetch bool) (any, error) {
	if !v.algs[alg] {
		return nil, errAlgNotAllowed
	}
	kind := kindOfAlg(alg)
	var keys jwt.VerificationKeySet
	if kid != "" {
		for _, k := range v.byKid[kid] {
			if k.kind == kind {
				keys.Keys = append(keys.Keys, k.key)
			}
		}
	}
	if len(keys.Keys) == 0 {
		// Keys without a kid (the HMAC secret, a PEM file) verify any
		// token of their family: a kid in the token does not stop them.
		for _, k := range v.static {
			if k.kind == kind && k.kid == "" {
				keys.Keys = append(keys.Keys, k.key)
			}
		}
	}
	if len(keys.Keys) == 0 && kid == "" {
		for _, k := range v.static {
			if k.kind == kind {
				keys.Keys = append(keys.Keys, k.key)
			}
		}
	}
	if len(keys.Keys) == 0 && v.remote != nil {
		rk, err := v.remote.lookup(ctx, kid, kind, fetch)
		if err != nil {
			return nil, err
		}
		keys.Keys = rk
	}
	if len(keys.Keys) == 0 {
		return nil, errUnknownKey
	}
	if len(keys.Keys) == 1 {
		return keys.Keys[0], nil
	}
	return keys, nil
}

// classify maps a golang-jwt error onto exactly one reason.
func classify(err error) Reason {
	switch {
	case errors.Is(err, errAlgNotAllowed):
		return ReasonAlgNotAllowed
	case errors.Is(err, errCritHeader):
		return ReasonMalformedToken
	case errors.Is(err, errKeysUnavailable):
		return ReasonKeysUnavailable
	case errors.Is(err, errUnknownKey):
		return ReasonUnknownKey
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ReasonMalformedToken
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// Raised before the keyfunc runs: the alg names no signing method
		// this library has (an unknown or made-up algorithm).
		return ReasonAlgNotAllowed
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return ReasonBadSignature
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return ReasonMissingClaim
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonWrongIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ReasonWrongAudience
	}
	return ReasonMalformedToken
}

// detailOf keeps the library's message: golang-jwt never quotes the token
// in its errors, only claim names and durations.
func detailOf(err error) string {
	const max = 200
	s := err.Error()
	if len(s) > max {
		s = s[:max]
	}
	return s
}

// Claim decodes the named claim of p into out (JSON rules).
func (p *Principal) Claim(name string, out any) (bool, error) {
	if len(p.claims) == 0 {
		return false, nil
	}
	if p.claimMap == nil {
		if m, found, ok := findMember(p.claims, name); ok {
			return claimInto(name, m.val, found, out)
		}
	}
	return p.claimDecoded(name, out)
}

// claimDecoded is Claim through a map of the whole payload, for payloads
// findMember does not read.
func (p *Principal) claimDecoded(name string, out any) (bool, error) {
	if p.claimMap == nil {
		if err := json.Unmarshal(p.claims, &p.claimMap); err != nil {
			return false, fmt.Errorf("claims: %w", err)
		}
	}
	raw, ok := p.claimMap[name]
	return claimInto(name, raw, ok, out)
}

func claimInto(name string, raw []byte, found bool, out any) (bool, error) {
	if !found {
		return false, nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return true, fmt.Errorf("claim %q: %w", name, err)
	}
	return true, nil
}

// StringsClaim returns a claim holding a string list, or one string of
// space-separated values (the OAuth `scope` convention).
func (p *Principal) StringsClaim(name string) ([]string, error) {
	if len(p.claims) > 0 && p.claimMap == nil {
		if m, found, ok := findMember(p.claims, name); ok {
			if !found {
				return nil, nil
			}
			if list, ok := plainStrings(m); ok {
				return list, nil
			}
			return stringsClaim(name, m.val)
		}
	}
	var raw json.RawMessage
	ok, err := p.Claim(name, &raw)
	if !ok || err != nil {
		return nil, err
	}
	return stringsClaim(name, raw)
}

func stringsClaim(name string, raw []byte) ([]string, error) {
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err != nil {
		return nil, fmt.Errorf("claim %q: want a string or a list of strings", name)
	}
	return strings.Fields(one), nil
}
