// Package redact is the single place where secrets are removed from what
// leaves the process: log lines, span attributes and events, event records,
// metrics and HTTP responses all pass request-derived text through it.
// Tokens, Authorization values, cookies and the query string's token
// parameters never appear in any of them.
package redact

import (
	"bytes"
	"strings"
)

// Mask replaces a secret.
const Mask = "REDACTED"

// Redactor knows which query parameters carry secrets.
type Redactor struct {
	params []string
}

// DefaultParams are redacted from query strings whatever the configuration:
// clients put tokens in them under these names.
var defaultParams = []string{"access_token", "token", "jwt", "id_token", "auth", "authorization", "bearer", "api_key", "apikey"}

// New returns a Redactor that also masks the given query parameters (the
// configured token parameter, for instance).
func New(params ...string) *Redactor {
	r := &Redactor{params: append([]string(nil), defaultParams...)}
	for _, p := range params {
		if p != "" && !r.isParam([]byte(p)) {
			r.params = append(r.params, strings.ToLower(p))
		}
	}
	return r
}

func (r *Redactor) isParam(k []byte) bool {
	for _, p := range r.params {
		if len(p) == len(k) && bytes.EqualFold(k, []byte(p)) {
			return true
		}
	}
	return false
}

// URI returns the request-target with every secret query value masked and
// any JWT-shaped text masked, e.g. "/ws?access_token=REDACTED&room=1".
func (r *Redactor) URI(uri []byte) string {
	q := bytes.IndexByte(uri, '?')
	if q < 0 {
		return Text(string(uri))
	}
	var b strings.Builder
	b.Grow(len(uri))
	b.Write(uri[:q+1])
	rest := uri[q+1:]
	first := true
	for len(rest) > 0 {
		var kv []byte
		if i := bytes.IndexAny(rest, "&;"); i >= 0 {
			kv, rest = rest[:i], rest[i+1:]
		} else {
			kv, rest = rest, nil
		}
		if !first {
			b.WriteByte('&')
		}
		first = false
		eq := bytes.IndexByte(kv, '=')
		if eq >= 0 && r.isParam(kv[:eq]) {
			b.Write(kv[:eq+1])
			b.WriteString(Mask)
			continue
		}
		b.Write(kv)
	}
	return Text(b.String())
}

// Path returns the URI's path alone, masked like Text.
func Path(uri []byte) string {
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	return Text(string(uri))
}

// Header masks the value of a header that carries credentials
// (Authorization, Cookie, Proxy-Authorization, Sec-WebSocket-Protocol
// entries) and passes other values through Text.
func Header(name, value string) string {
	switch strings.ToLower(name) {
	case "authorization", "proxy-authorization":
		if i := strings.IndexByte(value, ' '); i > 0 {
			return value[:i+1] + Mask
		}
		return Mask
	case "cookie", "set-cookie":
		return Mask
	case "sec-websocket-protocol":
		return Protocols(value)
	}
	return Text(value)
}

// Protocols masks token entries of a Sec-WebSocket-Protocol list and keeps
// the others ("wsbroker.v1, bearer.REDACTED").
func Protocols(list string) string {
	parts := strings.Split(list, ",")
	afterMarker := false
	for i, p := range parts {
		t := strings.TrimSpace(p)
		low := strings.ToLower(t)
		switch {
		case afterMarker:
			parts[i] = " " + Mask
			afterMarker = false
			continue
		case strings.HasPrefix(low, "base64url.bearer.authorization.k8s.io."):
			t = t[:len("base64url.bearer.authorization.k8s.io.")] + Mask
		case strings.HasPrefix(low, "bearer."):
			t = t[:len("bearer.")] + Mask
		case low == "access_token":
			afterMarker = true
		default:
			t = Text(t)
		}
		if i > 0 {
			t = " " + t
		}
		parts[i] = t
	}
	return strings.Join(parts, ",")
}

// Text masks anything in s that looks like a JWT (three base64url segments,
// the first starting with "eyJ", the encoding of `{"`), wherever it sits:
// a User-Agent, an Origin, an error message.
func Text(s string) string {
	i := strings.Index(s, "eyJ")
	if i < 0 {
		return s
	}
	var b strings.Builder
	for i >= 0 {
		end := i
		dots := 0
		for end < len(s) && (isB64URL(s[end]) || s[end] == '.') {
			if s[end] == '.' {
				dots++
			}
			end++
		}
		b.WriteString(s[:i])
		if dots >= 1 && end-i >= 10 {
			b.WriteString(Mask)
		} else {
			b.WriteString(s[i:end])
		}
		s = s[end:]
		i = strings.Index(s, "eyJ")
	}
	b.WriteString(s)
	return b.String()
}

func isB64URL(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '='
}

// Userinfo masks the user information of each URL of a comma list (NATS
// URLs carry a token or a user and password there: nats://s3cr3t@host:4222
// becomes nats://REDACTED@host:4222). Entries without it are kept as they
// are; so is text that is not a URL.
func Userinfo(urls string) string {
	if !strings.Contains(urls, "@") {
		return urls
	}
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		scheme, rest, ok := strings.Cut(p, "://")
		if !ok {
			continue
		}
		host := rest
		if j := strings.IndexAny(rest, "/?#"); j >= 0 {
			host = rest[:j]
		}
		at := strings.LastIndexByte(host, '@')
		if at < 0 {
			continue
		}
		parts[i] = scheme + "://" + Mask + rest[at:]
	}
	return strings.Join(parts, ",")
}
