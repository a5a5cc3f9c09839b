package authn

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
)

const tok = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"

type hdr struct{ k, v string }

func newReq(uri string, protocols []string, headers ...hdr) *Request {
	r := NewRequest(32 << 10)
	r.SetURI([]byte(uri))
	for _, p := range protocols {
		r.AddProtocols([]byte(p))
	}
	for _, h := range headers {
		r.AddHeader([]byte(h.k), []byte(h.v))
	}
	return r
}

func extractor(t testing.TB, sources ...Source) *Extractor {
	t.Helper()
	cfg := DefaultExtractConfig()
	if len(sources) > 0 {
		cfg.Sources = sources
	}
	e, err := NewExtractor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestExtract(t *testing.T) {
	all := []Source{SourceHeader, SourceSubprotocol, SourceQuery, SourceCookie}
	tests := []struct {
		name    string
		sources []Source
		req     *Request
		reason  Reason
		source  Source
		token   string
		offered bool
	}{
		{
			name:   "nothing anywhere",
			req:    newReq("/ws", nil),
			reason: ReasonMissingToken,
			source: SourceNone,
		},
		{
			name:   "header",
			req:    newReq("/ws", nil, hdr{"Authorization", "Bearer " + tok}),
			source: SourceHeader,
			token:  tok,
		},
		{
			name:   "header scheme is case-insensitive, extra spaces tolerated",
			req:    newReq("/ws", nil, hdr{"Authorization", "bEaReR   " + tok}),
			source: SourceHeader,
			token:  tok,
		},
		{
			name:   "header with quotes is malformed",
			req:    newReq("/ws", nil, hdr{"Authorization", `Bearer "` + tok + `"`}),
			reason: ReasonMalformedAuthorization,
			source: SourceHeader,
		},
		{
			name:   "two Authorization headers",
			req:    newReq("/ws", nil, hdr{"Authorization", "Bearer " + tok}, hdr{"Authorization", "Bearer " + tok}),
			reason: ReasonMalformedAuthorization,
			source: SourceHeader,
		},
		{
			name:   "malformed header loses to a token in another enabled source",
			req:    newReq("/ws", []string{"wsbroker.v1, bearer." + tok}, hdr{"Authorization", "Basic abc"}),
			source: SourceSubprotocol, token: tok, offered: true,
		},
		{
			name:    "subprotocol over two header lines",
			req:     newReq("/ws", []string{"wsbroker.v1", "bearer." + tok}),
			source:  SourceSubprotocol,
			token:   tok,
			offered: true,
		},
		{
			name:    "subprotocol entries with dozens of others",
			req:     newReq("/ws", []string{strings.Repeat("x, ", 40) + "wsbroker.v1, bearer." + tok}),
			source:  SourceSubprotocol,
			token:   tok,
			offered: true,
		},
		{
			name:    "k8s form",
			req:     newReq("/ws", []string{"wsbroker.v1, base64url.bearer.authorization.k8s.io." + base64.RawURLEncoding.EncodeToString([]byte(tok))}),
			source:  SourceSubprotocol,
			token:   tok,
			offered: true,
		},
		{
			name:    "k8s form with padding",
			req:     newReq("/ws", []string{"wsbroker.v1, base64url.bearer.authorization.k8s.io." + base64.URLEncoding.EncodeToString([]byte(tok+"x"))}),
			source:  SourceSubprotocol,
			token:   tok + "x",
			offered: true,
		},
		{
			name:    "pair form with empty token",
			req:     newReq("/ws", []string{"wsbroker.v1, access_token, "}),
			reason:  ReasonMalformedSubprotocol,
			source:  SourceSubprotocol,
			offered: true,
		},
		{
			name:   "subprotocol token without the application protocol",
			req:    newReq("/ws", []string{"bearer." + tok}),
			reason: ReasonProtocolNotOffered,
			source: SourceSubprotocol,
		},
		{
			name:    "query percent-encoded",
			sources: []Source{SourceQuery},
			req:     newReq("/ws?a=1&access_token="+strings.ReplaceAll(tok, ".", "%2E")+"&b=2", nil),
			source:  SourceQuery,
			token:   tok,
		},
		{
			name:    "query empty value counts as absent",
			sources: []Source{SourceQuery},
			req:     newReq("/ws?access_token=", nil),
			reason:  ReasonMissingToken,
			source:  SourceNone,
		},
		{
			name:    "cookie quoted",
			sources: []Source{SourceCookie},
			req:     newReq("/ws", nil, hdr{"Cookie", `a=b;access_token="` + tok + `"; c=d`}),
			source:  SourceCookie,
			token:   tok,
		},
		{
			name:    "precedence: first enabled source wins when tokens agree",
			sources: all,
			req:     newReq("/ws?access_token="+tok, nil, hdr{"Authorization", "Bearer " + tok}),
			source:  SourceHeader,
			token:   tok,
		},
		{
			name:    "different tokens in two enabled sources",
			sources: all,
			req:     newReq("/ws?access_token="+tok+"x", nil, hdr{"Authorization", "Bearer " + tok}),
			reason:  ReasonAmbiguousToken,
			source:  SourceQuery,
		},
		{
			name:   "a different token in a disabled source is ignored",
			req:    newReq("/ws?access_token=other", nil, hdr{"Authorization", "Bearer " + tok}),
			source: SourceHeader,
			token:  tok,
		},
		{
			name:   "only in a disabled source",
			req:    newReq("/ws?access_token="+tok, nil),
			reason: ReasonSourceDisabled,
			source: SourceQuery,
		},
		{
			name:   "too large",
			req:    newReq("/ws", nil, hdr{"Authorization", "Bearer " + strings.Repeat("a", 9000)}),
			reason: ReasonTokenTooLarge,
			source: SourceHeader,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := extractor(t, tt.sources...)
			var x Extraction
			e.Extract(tt.req, &x)
			if x.Reason != tt.reason || x.Source != tt.source {
				t.Fatalf("reason %s source %s, want %s %s",
					x.Reason, x.Source, tt.reason, tt.source)
			}
			if string(x.Token) != tt.token {
				t.Fatalf("token %q, want %q",
					x.Token, tt.token)
			}
			if x.ProtocolOffered != tt.offered {
				t.Fatalf("protocol offered %v, want %v",
					x.ProtocolOffered, tt.offered)
			}
			if x.NChecks != int(NumSources-1) {
				t.Fatalf("checked %d sources, want every one",
					x.NChecks)
			}
		})
	}
}

func TestRequestBounded(t *testing.T) {
	r := NewRequest(64)
	r.SetURI([]byte("/ws"))
	r.AddHeader([]byte("Authorization"), bytes.Repeat([]byte("a"), 100))
	if !r.Full() {
		t.Fatalf("a value larger than the buffer must mark the request full")
	}
	r.Reset()
	if r.Full() || len(r.URI()) != 0 {
		t.Fatalf("reset did not empty the request")
	}
}

func TestReasonsComplete(t *testing.T) {
	seen := map[string]bool{}
	for r := ReasonNone; r < NumReasons; r++ {
		l := r.String()
		if l == "" || seen[l] {
			t.Fatalf("reason %d: label %q empty or duplicated",
				r, l)
		}
		seen[l] = true
		if r != ReasonNone && (r.Description() == "" || r.Hint() == "" || r.Status() < 400) {
			t.Fatalf("reason %s lacks a description, a hint or an error status",
				l)
		}
		if back, ok := ParseReason(l); !ok || back != r {
			t.Fatalf("ParseReason(%q) = %v, %v",
				l, back, ok)
		}
	}
	if len(seen) != 21 {
		t.Fatalf("%d reasons, DESIGN.md §5 lists 20 plus none",
			len(seen))
	}
}

func BenchmarkExtract(b *testing.B) {
	k8s := "base64url.bearer.authorization.k8s.io." + base64.RawURLEncoding.EncodeToString([]byte(tok))
	cases := []struct {
		name    string
		sources []Source
		req     *Request
	}{
		{name: "header", req: newReq("/ws", nil, hdr{"Authorization", "Bearer " + tok})},
		{name: "subprotocol", req: newReq("/ws", []string{"wsbroker.v1, bearer." + tok})},
		{name: "subprotocol-pair", req: newReq("/ws", []string{"wsbroker.v1, access_token, " + tok})},
		{name: "subprotocol-k8s", req: newReq("/ws", []string{"wsbroker.v1, " + k8s})},
		{name: "query", sources: []Source{SourceQuery}, req: newReq("/ws?x=1&access_token="+tok, nil)},
		{name: "query-escaped", sources: []Source{SourceQuery}, req: newReq("/ws?access_token="+strings.ReplaceAll(tok, ".", "%2E"), nil)},
		{name: "cookie", sources: []Source{SourceCookie}, req: newReq("/ws", nil, hdr{"Cookie", "a=b; access_token=" + tok})},
		{name: "missing", req: newReq("/ws", nil)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			e := extractor(b, c.sources...)
			var x Extraction
			b.ReportAllocs()
			for b.Loop() {
				e.Extract(c.req, &x)
			}
			if c.name != "missing" && x.Token == nil {
				b.Fatalf("no token: %s", x.Reason)
			}
		})
	}
}

// TestExtractAllocs holds the benchmark's promise: extraction allocates
// nothing, from any source.
func TestExtractAllocs(t *testing.T) {
	r := newReq("/ws?access_token="+strings.ReplaceAll(tok, ".", "%2E"), []string{"wsbroker.v1, base64url.bearer.authorization.k8s.io." + base64.RawURLEncoding.EncodeToString([]byte(tok))},
		hdr{"Authorization", "Bearer " + tok}, hdr{"Cookie", "access_token=" + tok})
	e := extractor(t, SourceHeader, SourceSubprotocol, SourceQuery, SourceCookie)
	var x Extraction
	allocs := testing.AllocsPerRun(100, func() { e.Extract(r, &x) })
	if allocs != 0 {
		t.Fatalf("Extract allocates %v times per run, want 0",
			allocs)
	}
	if x.Reason != ReasonNone {
		t.Fatalf("reason %s", x.Reason)
	}
}

func fuzzExtract(f *testing.F, fill func(r *Request, in []byte)) {
	e, err := NewExtractor(ExtractConfig{
		Sources: []Source{SourceHeader, SourceSubprotocol, SourceQuery, SourceCookie}, QueryParam: "access_token", Cookie: "access_token", MaxTokenBytes: 8192,
	})
	if err != nil {
		f.Fatal(err)
	}
	r := NewRequest(32 << 10)
	f.Fuzz(func(t *testing.T, in []byte) {
		r.Reset()
		fill(r, in)
		var x Extraction
		e.Extract(r, &x)
		if (x.Reason == ReasonNone) != (x.Token != nil) {
			t.Fatalf("reason %s with token %q", x.Reason, x.Token)
		}
		if x.Reason >= NumReasons || x.Source >= NumSources {
			t.Fatalf("out of range: %d %d", x.Reason, x.Source)
		}
		if len(x.Token) > 8192 {
			t.Fatalf("token of %d bytes passed the size bound", len(x.Token))
		}
	})
}

func FuzzSubprotocol(f *testing.F) {
	for _, s := range []string{"wsbroker.v1, bearer." + tok, "access_token, x", "base64url.bearer.authorization.k8s.io.ZXlK", ",,, ,", "bearer."} {
		f.Add([]byte(s))
	}
	fuzzExtract(f, func(r *Request, in []byte) {
		for _, line := range bytes.SplitN(in, []byte{'\n'}, 4) {
			r.AddProtocols(line)
		}
	})
}

func FuzzAuthorization(f *testing.F) {
	for _, s := range []string{"Bearer " + tok, "Basic x", "Bearer", "bearer  a==", "Bearer a=b"} {
		f.Add([]byte(s))
	}
	fuzzExtract(f, func(r *Request, in []byte) { r.AddHeader([]byte("Authorization"), in) })
}

func FuzzCookie(f *testing.F) {
	for _, s := range []string{"access_token=" + tok, `a=b; access_token="x"`, "access_token=;", "=;=;;"} {
		f.Add([]byte(s))
	}
	fuzzExtract(f, func(r *Request, in []byte) { r.AddHeader([]byte("Cookie"), in) })
}

func FuzzQuery(f *testing.F) {
	for _, s := range []string{"/ws?access_token=" + tok, "/ws?access_token=%zz", "/ws?&&=&access_token=%2", "/ws?access_token=a+b#frag"} {
		f.Add([]byte(s))
	}
	fuzzExtract(f, func(r *Request, in []byte) { r.SetURI(in) })
}
