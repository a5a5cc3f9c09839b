package authn

import "bytes"

// Request is what the upgrade path captured of one handshake: the request
// URI and the headers that matter for authentication, copied out of the
// handshake reader (whose bytes are valid only inside a callback) into one
// bounded buffer. A Request is reused across handshakes: Reset it, fill it
// from the ws.Upgrader callbacks, authenticate, then put it back in a pool.
type Request struct {
	// limit bounds buf and scratch; both start small and grow with what
	// actually arrives (never on a length the peer announced).
	limit   int
	buf     []byte
	scratch []byte
	fields  [numFields]field
	protos  [maxProtocolHeaders]field
	nproto  int
	// counts of headers that must appear at most once.
	nauth int
	// full is set when a value did not fit in the buffer; the handshake is
	// then refused as too large.
	full bool
}

type field struct{ off, n int32 }

// The captured request fields.
const (
	fieldURI = iota
	fieldAuthorization
	fieldCookie
	fieldOrigin
	fieldUserAgent
	fieldTraceparent
	fieldForwardedFor
	fieldHost
	numFields
)

// maxProtocolHeaders bounds how many Sec-WebSocket-Protocol header lines are
// kept; browsers send one. More lines than this make the request too large.
const maxProtocolHeaders = 16

// NewRequest returns a Request able to hold limit bytes of captured values.
func NewRequest(limit int) *Request {
	initial := min(limit, 2048)
	return &Request{limit: limit, buf: make([]byte, 0, initial), scratch: make([]byte, 0, initial)}
}

// scratchRoom makes room for n more bytes in the scratch buffer; false when
// that would pass the limit.
func (r *Request) scratchRoom(n int) bool {
	need := len(r.scratch) + n
	if need > r.limit {
		return false
	}
	if need > cap(r.scratch) {
		// Slices handed out before keep the old array: they stay valid.
		grown := make([]byte, len(r.scratch), max(need, 2*cap(r.scratch)))
		copy(grown, r.scratch)
		r.scratch = grown
	}
	return true
}

// Reset empties r for the next handshake, keeping its buffers.
func (r *Request) Reset() {
	r.buf = r.buf[:0]
	r.scratch = r.scratch[:0]
	r.fields = [numFields]field{}
	r.protos = [maxProtocolHeaders]field{}
	r.nproto = 0
	r.nauth = 0
	r.full = false
}

// Full reports whether a captured value did not fit the buffer.
func (r *Request) Full() bool { return r.full }

func (r *Request) store(v []byte) (field, bool) {
	if len(r.buf)+len(v) > r.limit {
		r.full = true
		return field{}, false
	}
	off := len(r.buf)
	r.buf = append(r.buf, v...)
	return field{off: int32(off), n: int32(len(v))}, true
}

func (r *Request) get(f field) []byte {
	if f.n == 0 {
		return nil
	}
	return r.buf[f.off : f.off+f.n : f.off+f.n]
}

// SetURI captures the request-target (ws.Upgrader.OnRequest).
func (r *Request) SetURI(uri []byte) {
	r.fields[fieldURI], _ = r.store(uri)
}

// SetHost captures the Host header (ws.Upgrader.OnHost).
func (r *Request) SetHost(host []byte) {
	r.fields[fieldHost], _ = r.store(host)
}

// AddHeader captures the header if it matters (ws.Upgrader.OnHeader). The
// key arrives canonicalized by gobwas/ws.
func (r *Request) AddHeader(key, value []byte) {
	var i int
	switch string(key) { // no allocation: the compiler compares in place.
	case "Authorization":
		r.nauth++
		if r.nauth > 1 {
			return
		}
		i = fieldAuthorization
	case "Cookie":
		// HTTP/1.1 clients send one Cookie line (RFC 6265 §5.4); a second
		// one is ignored rather than merged.
		if r.fields[fieldCookie].n > 0 {
			return
		}
		i = fieldCookie
	case "Origin":
		i = fieldOrigin
	case "User-Agent":
		i = fieldUserAgent
	case "Traceparent":
		i = fieldTraceparent
	case "X-Forwarded-For":
		i = fieldForwardedFor
	default:
		return
	}
	r.fields[i], _ = r.store(value)
}

// AddProtocols captures one raw Sec-WebSocket-Protocol header value
// (ws.Upgrader.ProtocolCustom). Selection happens after authentication.
func (r *Request) AddProtocols(value []byte) {
	if r.nproto == maxProtocolHeaders {
		r.full = true
		return
	}
	f, ok := r.store(value)
	if !ok {
		return
	}
	r.protos[r.nproto] = f
	r.nproto++
}

// URI returns the captured request-target, query included.
func (r *Request) URI() []byte { return r.get(r.fields[fieldURI]) }

// Path returns the URI without its query.
func (r *Request) Path() []byte {
	u := r.URI()
	if i := bytes.IndexByte(u, '?'); i >= 0 {
		return u[:i]
	}
	return u
}

// Authorization returns the first Authorization header value.
func (r *Request) Authorization() []byte { return r.get(r.fields[fieldAuthorization]) }

// Cookie returns the Cookie header value(s), joined.
func (r *Request) Cookie() []byte { return r.get(r.fields[fieldCookie]) }

// Origin returns the Origin header.
func (r *Request) Origin() []byte { return r.get(r.fields[fieldOrigin]) }

// UserAgent returns the User-Agent header.
func (r *Request) UserAgent() []byte { return r.get(r.fields[fieldUserAgent]) }

// Traceparent returns the W3C traceparent header.
func (r *Request) Traceparent() []byte { return r.get(r.fields[fieldTraceparent]) }

// ForwardedFor returns the X-Forwarded-For header.
func (r *Request) ForwardedFor() []byte { return r.get(r.fields[fieldForwardedFor]) }

// Host returns the Host header.
func (r *Request) Host() []byte { return r.get(r.fields[fieldHost]) }

// HasProtocols reports whether the client sent Sec-WebSocket-Protocol.
func (r *Request) HasProtocols() bool { return r.nproto > 0 }

// protocols iterates over every comma-separated Sec-WebSocket-Protocol entry
// of every captured header line, trimmed of optional white space. Empty
// entries (",,") are returned as empty slices.
type protocols struct {
	r      *Request
	line   int
	inLine bool
	rest   []byte
}

func (r *Request) protocols() protocols { return protocols{r: r, line: -1} }

// next returns the next entry, and false when there are no more.
func (p *protocols) next() ([]byte, bool) {
	for !p.inLine {
		p.line++
		if p.line >= p.r.nproto {
			return nil, false
		}
		p.rest = p.r.get(p.r.protos[p.line])
		p.inLine = true
	}
	i := bytes.IndexByte(p.rest, ',')
	if i < 0 {
		e := p.rest
		p.rest, p.inLine = nil, false
		return trimOWS(e), true
	}
	e := p.rest[:i]
	p.rest = p.rest[i+1:]
	return trimOWS(e), true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
