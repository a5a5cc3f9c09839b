package authn

import (
	"bytes"
	"encoding/base64"
	"fmt"
)

// Protocol is the application subprotocol wsbroker speaks.
const Protocol = "wsbroker.v1"

// Subprotocol token forms (DESIGN.md §4).
const (
	subprotocolBearerPrefix = "bearer."
	subprotocolPairMarker   = "access_token"
	subprotocolK8sPrefix    = "base64url.bearer.authorization.k8s.io."
)

// ExtractConfig selects where tokens are looked for.
type ExtractConfig struct {
	// Sources are the enabled sources; their order is the precedence.
	Sources []Source
	// QueryParam is the query parameter of the query source.
	QueryParam string
	// Cookie is the cookie name of the cookie source.
	Cookie string
	// MaxTokenBytes bounds a token's size.
	MaxTokenBytes int
}

// DefaultExtractConfig returns the defaults of the serve command.
func DefaultExtractConfig() ExtractConfig {
	return ExtractConfig{
		Sources:       DefaultSources(),
		QueryParam:    "access_token",
		Cookie:        "access_token",
		MaxTokenBytes: 8192,
	}
}

// Validate reports the first invalid option, naming it.
func (c *ExtractConfig) Validate() error {
	if len(c.Sources) == 0 {
		return fmt.Errorf("token-sources: no source enabled")
	}
	if c.QueryParam == "" {
		return fmt.Errorf("token-query-param: empty")
	}
	if c.Cookie == "" {
		return fmt.Errorf("token-cookie: empty")
	}
	if c.MaxTokenBytes < 64 {
		return fmt.Errorf("max-token-bytes: %d is below 64", c.MaxTokenBytes)
	}
	return nil
}

// Check is what one source held, for the trace of the extraction path.
type Check struct {
	Source  Source
	Enabled bool
	// Found is set when the source carried something meant as a token.
	Found bool
	// Reason is the extraction failure of this source, or ReasonNone.
	Reason Reason
}

// Outcome names what the source held, for traces and details: the
// extraction failure, "token", "ignored_disabled" (a credential in a source
// that is switched off) or "absent".
func (c Check) Outcome() string {
	switch {
	case c.Reason != ReasonNone:
		return c.Reason.String()
	case c.Found && !c.Enabled:
		return "ignored_disabled"
	case c.Found:
		return "token"
	}
	return "absent"
}

// Extraction is the outcome of looking for a token in a Request.
type Extraction struct {
	// Token is the credential; it aliases the Request's buffers and is valid
	// until the Request is reset. Nil when Reason is not ReasonNone.
	Token []byte
	// Source is where Token came from; on source_disabled the disabled
	// source where a credential was seen.
	Source Source
	Reason Reason
	// ProtocolOffered reports whether the client offered Protocol.
	ProtocolOffered bool
	// Checks lists every source looked at, enabled ones first in precedence
	// order; NChecks of them are set.
	Checks  [NumSources - 1]Check
	NChecks int
}

// Extractor finds the token of a handshake. It is safe for concurrent use
// and does not allocate.
type Extractor struct {
	cfg     ExtractConfig
	enabled [NumSources]bool
	// order is the enabled sources by precedence, then the disabled ones.
	order []Source
}

// NewExtractor validates cfg and returns an Extractor.
func NewExtractor(cfg ExtractConfig) (*Extractor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	e := &Extractor{cfg: cfg}
	for _, s := range cfg.Sources {
		e.enabled[s] = true
		e.order = append(e.order, s)
	}
	for s := SourceHeader; s < NumSources; s++ {
		if !e.enabled[s] {
			e.order = append(e.order, s)
		}
	}
	return e, nil
}

// Enabled reports whether s is an enabled source.
func (e *Extractor) Enabled(s Source) bool { return e.enabled[s] }

// Extract looks in every source. Rules, in order:
//   - the first enabled source (by precedence) with a token wins; another
//     enabled source with a different token makes it ambiguous_token;
//   - with no token in any enabled source, the first enabled source's
//     extraction error (malformed_*, token_too_large) is the reason;
//   - otherwise a credential seen in a disabled source is source_disabled;
//   - otherwise missing_token.
//
// A token from the subprotocol source needs Protocol offered next to it.
func (e *Extractor) Extract(r *Request, x *Extraction) {
	*x = Extraction{}
	r.scratch = r.scratch[:0]
	x.ProtocolOffered = offersProtocol(r)
	var firstErr Reason
	var firstErrSource, disabledSource, ambiguous Source
	for _, s := range e.order {
		tok, found, reason := e.lookIn(r, s)
		enabled := e.enabled[s]
		x.Checks[x.NChecks] = Check{Source: s, Enabled: enabled, Found: found, Reason: reason}
		x.NChecks++
		if !found {
			continue
		}
		switch {
		case !enabled:
			if disabledSource == SourceNone {
				disabledSource = s
			}
		case reason != ReasonNone:
			if firstErr == ReasonNone {
				firstErr, firstErrSource = reason, s
			}
		case x.Token == nil:
			x.Token, x.Source = tok, s
		case !bytes.Equal(x.Token, tok):
			x.Checks[x.NChecks-1].Reason = ReasonAmbiguousToken
			if ambiguous == SourceNone {
				ambiguous = s
			}
		}
	}
	switch {
	case ambiguous != SourceNone:
		x.Token, x.Source, x.Reason = nil, ambiguous, ReasonAmbiguousToken
	case x.Token != nil:
		if x.Source == SourceSubprotocol && !x.ProtocolOffered {
			x.Token, x.Reason = nil, ReasonProtocolNotOffered
		}
	case firstErr != ReasonNone:
		x.Source, x.Reason = firstErrSource, firstErr
	case disabledSource != SourceNone:
		x.Source, x.Reason = disabledSource, ReasonSourceDisabled
	default:
		x.Source, x.Reason = SourceNone, ReasonMissingToken
	}
}

// lookIn returns the token in source s; found reports whether s carried a
// credential at all (even a malformed one).
func (e *Extractor) lookIn(r *Request, s Source) (tok []byte, found bool, reason Reason) {
	switch s {
	case SourceHeader:
		tok, found, reason = bearerFromAuthorization(r)
	case SourceSubprotocol:
		tok, found, reason = tokenFromProtocols(r)
	case SourceQuery:
		tok, found = tokenFromQuery(r, e.cfg.QueryParam)
	case SourceCookie:
		tok, found = tokenFromCookie(r.Cookie(), e.cfg.Cookie)
	}
	if reason == ReasonNone && len(tok) > e.cfg.MaxTokenBytes {
		return nil, true, ReasonTokenTooLarge
	}
	return tok, found, reason
}

func offersProtocol(r *Request) bool {
	it := r.protocols()
	for {
		p, ok := it.next()
		if !ok {
			return false
		}
		if string(p) == Protocol {
			return true
		}
	}
}

// bearerFromAuthorization parses `Bearer <b64token>` (RFC 6750 §2.1).
func bearerFromAuthorization(r *Request) ([]byte, bool, Reason) {
	if r.nauth == 0 {
		return nil, false, ReasonNone
	}
	if r.nauth > 1 {
		return nil, true, ReasonMalformedAuthorization
	}
	v := r.Authorization()
	const scheme = "bearer"
	if len(v) < len(scheme) || !bytes.EqualFold(v[:len(scheme)], []byte(scheme)) {
		return nil, true, ReasonMalformedAuthorization
	}
	rest := v[len(scheme):]
	if len(rest) == 0 || rest[0] != ' ' {
		return nil, true, ReasonMalformedAuthorization
	}
	for len(rest) > 0 && rest[0] == ' ' {
		rest = rest[1:]
	}
	if !isB64Token(rest) {
		return nil, true, ReasonMalformedAuthorization
	}
	return rest, true, ReasonNone
}

// isB64Token reports whether b is RFC 6750's b64token:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func isB64Token(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	i := 0
	for i < len(b) && isB64TokenChar(b[i]) {
		i++
	}
	if i == 0 {
		return false
	}
	for i < len(b) && b[i] == '=' {
		i++
	}
	return i == len(b)
}

func isB64TokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/'
}

// tokenFromProtocols finds a token entry among the subprotocols.
func tokenFromProtocols(r *Request) ([]byte, bool, Reason) {
	it := r.protocols()
	pairNext := false
	for {
		p, ok := it.next()
		if !ok {
			break
		}
		if pairNext {
			if len(p) == 0 {
				return nil, true, ReasonMalformedSubprotocol
			}
			return p, true, ReasonNone
		}
		switch {
		case hasPrefixFold(p, subprotocolK8sPrefix):
			enc := p[len(subprotocolK8sPrefix):]
			if len(enc) == 0 {
				return nil, true, ReasonMalformedSubprotocol
			}
			start := len(r.scratch)
			need := base64.RawURLEncoding.DecodedLen(len(enc))
			if !r.scratchRoom(need) {
				return nil, true, ReasonTokenTooLarge
			}
			dst := r.scratch[start : start+need]
			n, err := base64.RawURLEncoding.Decode(dst, bytes.TrimRight(enc, "="))
			if err != nil || n == 0 {
				return nil, true, ReasonMalformedSubprotocol
			}
			r.scratch = r.scratch[:start+n]
			return r.scratch[start : start+n : start+n], true, ReasonNone
		case hasPrefixFold(p, subprotocolBearerPrefix):
			tok := p[len(subprotocolBearerPrefix):]
			if len(tok) == 0 {
				return nil, true, ReasonMalformedSubprotocol
			}
			return tok, true, ReasonNone
		case string(p) == subprotocolPairMarker:
			pairNext = true
		}
	}
	if pairNext {
		// `access_token` was the last entry: the token is missing.
		return nil, true, ReasonMalformedSubprotocol
	}
	return nil, false, ReasonNone
}

func hasPrefixFold(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// tokenFromQuery finds the value of param in the request-target's query.
// An empty value counts as absent.
func tokenFromQuery(r *Request, param string) ([]byte, bool) {
	u := r.URI()
	q := bytes.IndexByte(u, '?')
	if q < 0 {
		return nil, false
	}
	rest := u[q+1:]
	if i := bytes.IndexByte(rest, '#'); i >= 0 {
		rest = rest[:i]
	}
	for len(rest) > 0 {
		var kv []byte
		if i := bytes.IndexByte(rest, '&'); i >= 0 {
			kv, rest = rest[:i], rest[i+1:]
		} else {
			kv, rest = rest, nil
		}
		eq := bytes.IndexByte(kv, '=')
		if eq < 0 || string(kv[:eq]) != param {
			continue
		}
		v := kv[eq+1:]
		if len(v) == 0 {
			return nil, false
		}
		if bytes.IndexByte(v, '%') < 0 && bytes.IndexByte(v, '+') < 0 {
			return v, true
		}
		return unescapeQuery(r, v), true
	}
	return nil, false
}

// unescapeQuery percent-decodes v into the request's scratch buffer. An
// invalid escape is kept as is: verification then calls it malformed_token.
func unescapeQuery(r *Request, v []byte) []byte {
	start := len(r.scratch)
	if !r.scratchRoom(len(v)) {
		return v
	}
	out := r.scratch[start:start]
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '+':
			c = ' '
		case c == '%' && i+2 < len(v) && isHex(v[i+1]) && isHex(v[i+2]):
			c = unhex(v[i+1])<<4 | unhex(v[i+2])
			i += 2
		}
		out = append(out, c)
	}
	r.scratch = r.scratch[:start+len(out)]
	return out[:len(out):len(out)]
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// tokenFromCookie finds cookie name in a Cookie header (RFC 6265 §4.2.1);
// a quoted value is unquoted and an empty one counts as absent.
func tokenFromCookie(header []byte, name string) ([]byte, bool) {
	for len(header) > 0 {
		var pair []byte
		if i := bytes.IndexByte(header, ';'); i >= 0 {
			pair, header = header[:i], header[i+1:]
		} else {
			pair, header = header, nil
		}
		pair = trimOWS(pair)
		eq := bytes.IndexByte(pair, '=')
		if eq < 0 || string(trimOWS(pair[:eq])) != name {
			continue
		}
		v := trimOWS(pair[eq+1:])
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			v = v[1 : len(v)-1]
		}
		if len(v) == 0 {
			return nil, false
		}
		return v, true
	}
	return nil, false
}
