package authn

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"
)

// keyKind is the family of a verification key; an algorithm only ever
// verifies with a key of its own family, which rules out key confusion
// (an HS256 token "signed" with an RSA public key).
type keyKind uint8

const (
	keyHMAC keyKind = iota + 1
	keyRSA
	keyEC
	keyEd
)

func kindOfKey(k any) keyKind {
	switch k.(type) {
	case []byte:
		return keyHMAC
	case *rsa.PublicKey:
		return keyRSA
	case *ecdsa.PublicKey:
		return keyEC
	case ed25519.PublicKey:
		return keyEd
	}
	return 0
}

func kindOfAlg(alg string) keyKind {
	switch alg {
	case "HS256", "HS384", "HS512":
		return keyHMAC
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		return keyRSA
	case "ES256", "ES384", "ES512":
		return keyEC
	case "EdDSA":
		return keyEd
	}
	return 0
}

// algsOfKind lists the algorithms a key family verifies.
func algsOfKind(k keyKind) []string {
	switch k {
	case keyHMAC:
		return []string{"HS256", "HS384", "HS512"}
	case keyRSA:
		return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
	case keyEC:
		return []string{"ES256", "ES384", "ES512"}
	case keyEd:
		return []string{"EdDSA"}
	}
	return nil
}

type staticKey struct {
	kid  string
	kind keyKind
	key  any
}

// LoadKeyFile reads a PEM public key (or certificate) or a JWKS JSON file.
func LoadKeyFile(path string) ([]staticKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwt-key-file: %w", err)
	}
	keys, err := parseKeys(raw)
	if err != nil {
		return nil, fmt.Errorf("jwt-key-file %s: %w", path, err)
	}
	return keys, nil
}

func parseKeys(raw []byte) ([]staticKey, error) {
	trimmed := bytes.TrimSpace(raw)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		return parseJWKS(trimmed)
	}
	if rk, err := jwt.ParseRSAPublicKeyFromPEM(trimmed); err == nil {
		return []staticKey{{kind: keyRSA, key: rk}}, nil
	}
	if ek, err := jwt.ParseECPublicKeyFromPEM(trimmed); err == nil {
		return []staticKey{{kind: keyEC, key: ek}}, nil
	}
	if dk, err := jwt.ParseEdPublicKeyFromPEM(trimmed); err == nil {
		if pk, ok := dk.(ed25519.PublicKey); ok {
			return []staticKey{{kind: keyEd, key: pk}}, nil
		}
	}
	return nil, errors.New("neither a PEM public key (RSA, EC, Ed25519) nor a JWKS document")
}

func parseJWKS(raw []byte) ([]staticKey, error) {
	var set jwkset.JWKSMarshal
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("JWKS has no keys")
	}
	store, err := set.ToStorage()
	if err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	all, err := store.KeyReadAll(context.Background())
	if err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	var out []staticKey
	for _, j := range all {
		k := publicOf(j.Key())
		kind := kindOfKey(k)
		if kind == 0 || kind == keyHMAC {
			// Symmetric JWKs are refused: an HMAC secret belongs in
			// --jwt-hmac-secret-file, never in a published key set.
			continue
		}
		out = append(out, staticKey{kid: j.Marshal().KID, kind: kind, key: k})
	}
	if len(out) == 0 {
		return nil, errors.New("JWKS has no usable public key")
	}
	return out, nil
}

func publicOf(k any) any {
	switch pk := k.(type) {
	case *rsa.PrivateKey:
		return &pk.PublicKey
	case *ecdsa.PrivateKey:
		return &pk.PublicKey
	case ed25519.PrivateKey:
		return pk.Public()
	}
	return k
}

// LoadHMACSecret reads a secret file, trimming surrounding white space.
func LoadHMACSecret(path string) ([]byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("jwt-hmac-secret-file: %w", err)
	}
	s := bytes.TrimSpace(raw)
	if len(s) < 32 {
		return nil, fmt.Errorf("jwt-hmac-secret-file %s: secret is %d bytes after trimming; use at least 32", path, len(s))
	}
	return s, nil
}

// errUnknownKey and errKeysUnavailable travel through jwt's keyfunc error
// wrapping to classify the failure.
var (
	errUnknownKey      = errors.New("no key with this kid")
	errKeysUnavailable = errors.New("key set unavailable")
	errAlgNotAllowed   = errors.New("algorithm not allowed")
	errCritHeader      = errors.New("token has a crit header parameter; no extension is understood")
	// errNeedFetch never reaches a verdict: the fast path falls back on it.
	errNeedFetch = errors.New("kid not cached")
)

// RefreshHook observes a JWKS fetch: it is called as the fetch starts and
// the function it returns as it ends, with the fetch's error. The broker
// uses it for the keys.refresh span and wsbroker_keys_refresh_total.
type RefreshHook func(ctx context.Context) func(err error)

// remoteKeys wraps a keyfunc JWKS client. Unknown-kid refreshes are gated
// by our own limiter, checked without waiting: a flood of made-up kids
// costs one fetch per interval and never blocks a handshake on the limiter.
// (keyfunc's own limiter shares its wait deadline with the fetch itself, so
// it is left wide open and only bounds the fetch time.)
type remoteKeys struct {
	kf      keyfunc.Keyfunc
	refresh *rate.Limiter
	// retry gates the fetches a readiness check starts while no key is
	// loaded (its own limiter: it must not spend the unknown-kid one).
	retry *rate.Limiter
}

func newRemoteKeys(ctx context.Context, url string, client *http.Client, minRefresh time.Duration, hook RefreshHook) (*remoteKeys, error) {
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	c := *client
	c.Transport = &refreshTransport{next: transportOf(client), hook: hook}
	noErr := true
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{url}, keyfunc.Override{
		Client:                    &c,
		RefreshInterval:           time.Hour,
		RefreshUnknownKID:         rate.NewLimiter(rate.Inf, 1),
		RateLimitWaitMax:          10 * time.Second,
		NoErrorReturnFirstHTTPReq: &noErr,
		// Errors are counted by the hook; keyfunc's own default logs to the
		// global slog logger, which this program never uses.
		RefreshErrorHandlerFunc: func(string) func(context.Context, error) {
			return func(context.Context, error) {}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("jwks-url: %w", err)
	}
	return &remoteKeys{
		kf:      kf,
		refresh: rate.NewLimiter(rate.Every(minRefresh), 1),
		retry:   rate.NewLimiter(rate.Every(minRefresh), 1),
	}, nil
}

func transportOf(c *http.Client) http.RoundTripper {
	if c.Transport != nil {
		return c.Transport
	}
	return http.DefaultTransport
}

type refreshTransport struct {
	next http.RoundTripper
	hook RefreshHook
}

func (t *refreshTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var done func(error)
	if t.hook != nil {
		done = t.hook(req.Context())
	}
	resp, err := t.next.RoundTrip(req)
	if done != nil {
		switch {
		case err != nil:
			done(err)
		case resp.StatusCode/100 != 2:
			done(fmt.Errorf("JWKS endpoint answered %s", resp.Status))
		default:
			done(nil)
		}
	}
	return resp, err
}

// lookup returns the keys for kid ("" = every key of the family), fetching
// the set again (rate-limited) when kid is unknown; with fetch false an
// unknown kid is errNeedFetch, and neither the set nor the limiter is
// touched.
func (r *remoteKeys) lookup(ctx context.Context, kid string, kind keyKind, fetch bool) ([]jwt.VerificationKey, error) {
	store := r.kf.Storage()
	if kid != "" {
		j, ok := r.cached(ctx, kid)
		if !ok && !fetch {
			return nil, errNeedFetch
		}
		if !ok && r.refresh.Allow() {
			var err error
			j, err = store.KeyRead(ctx, kid) // refreshes on a miss
			ok = err == nil
		}
		if !ok {
			if r.empty(ctx) {
				return nil, errKeysUnavailable
			}
			return nil, errUnknownKey
		}
		k := publicOf(j.Key())
		if kindOfKey(k) != kind {
			return nil, errUnknownKey
		}
		return []jwt.VerificationKey{k}, nil
	}
	all, err := store.KeyReadAll(ctx)
	if err != nil || len(all) == 0 {
		return nil, errKeysUnavailable
	}
	var out []jwt.VerificationKey
	for _, j := range all {
		if k := publicOf(j.Key()); kindOfKey(k) == kind {
			out = append(out, k)
		}
	}
	if len(out) == 0 {
		return nil, errUnknownKey
	}
	return out, nil
}

// cached finds kid in the keys fetched so far, without fetching.
func (r *remoteKeys) cached(ctx context.Context, kid string) (jwkset.JWK, bool) {
	all, err := r.kf.Storage().KeyReadAll(ctx)
	if err != nil {
		return jwkset.JWK{}, false
	}
	for _, j := range all {
		if j.Marshal().KID == kid {
			return j, true
		}
	}
	return jwkset.JWK{}, false
}

func (r *remoteKeys) empty(ctx context.Context) bool {
	all, err := r.kf.Storage().KeyReadAll(ctx)
	return err != nil || len(all) == 0
}

// loaded reports whether a key is cached. While none is, it fetches the set
// again (at most once per min refresh): a broker started while the JWKS was
// down becomes ready once it is back, without waiting for the hourly
// refresh or for a client (which a load balancer keeps away until ready).
func (r *remoteKeys) loaded(ctx context.Context) bool {
	if !r.empty(ctx) {
		return true
	}
	if !r.retry.Allow() {
		return false
	}
	// A kid no set holds: the read misses and refreshes the set.
	_, _ = r.kf.Storage().KeyRead(ctx, "\x00wsbroker-readiness")
	return !r.empty(ctx)
}

func algList(kinds map[keyKind]bool) []string {
	var out []string
	for _, k := range []keyKind{keyHMAC, keyRSA, keyEC, keyEd} {
		if kinds[k] {
			out = append(out, algsOfKind(k)...)
		}
	}
	return out
}

// ParseAlgs parses a comma list of JWS algorithms; "none" is refused.
func ParseAlgs(list string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(list, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if strings.EqualFold(a, "none") {
			return nil, errors.New("jwt-algs: `none` is never allowed")
		}
		if kindOfAlg(a) == 0 {
			return nil, fmt.Errorf("jwt-algs: unknown algorithm %q", a)
		}
		out = append(out, a)
	}
	return out, nil
}
