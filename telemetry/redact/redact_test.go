package redact

import (
	"strings"
	"testing"
)

// jwtSample is a syntactically real HS256 JWT; sigSample is its signature.
const (
	jwtSample = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnbmF0dXJlLW9mLXRoZS1zYW1wbGUtdG9rZW4"
	sigSample = "c2lnbmF0dXJlLW9mLXRoZS1zYW1wbGUtdG9rZW4"
)

func TestURI(t *testing.T) {
	tests := []struct {
		name   string
		params []string
		uri    string
		want   string
	}{
		{
			name: "no query",
			uri:  "/ws",
			want: "/ws",
		},
		{
			name: "empty query",
			uri:  "/ws?",
			want: "/ws?",
		},
		{
			name: "default token parameter, other parameters kept",
			uri:  "/ws?access_token=" + jwtSample + "&room=1",
			want: "/ws?access_token=REDACTED&room=1",
		},
		{
			name: "every default parameter name",
			uri:  "/ws?token=a&jwt=b&id_token=c&auth=d&authorization=e&bearer=f&api_key=g&apikey=h",
			want: "/ws?token=REDACTED&jwt=REDACTED&id_token=REDACTED&auth=REDACTED&authorization=REDACTED&bearer=REDACTED&api_key=REDACTED&apikey=REDACTED",
		},
		{
			name: "parameter names match case-insensitively",
			uri:  "/ws?Access_Token=opaque-secret",
			want: "/ws?Access_Token=REDACTED",
		},
		{
			name:   "configured parameter",
			params: []string{"t"},
			uri:    "/ws?t=opaque-secret&room=1",
			want:   "/ws?t=REDACTED&room=1",
		},
		{
			name:   "configured parameter already a default is not doubled",
			params: []string{"ACCESS_TOKEN", ""},
			uri:    "/ws?access_token=x",
			want:   "/ws?access_token=REDACTED",
		},
		{
			name: "semicolon separator",
			uri:  "/ws?room=1;token=secret",
			want: "/ws?room=1&token=REDACTED",
		},
		{
			name: "a JWT in an innocent parameter",
			uri:  "/ws?room=" + jwtSample,
			want: "/ws?room=REDACTED",
		},
		{
			name: "a JWT in the path",
			uri:  "/ws/" + jwtSample,
			want: "/ws/REDACTED",
		},
		{
			name: "a parameter without a value is kept",
			uri:  "/ws?token&debug",
			want: "/ws?token&debug",
		},
		{
			name: "an empty value is masked too",
			uri:  "/ws?token=",
			want: "/ws?token=REDACTED",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := New(tt.params...).URI([]byte(tt.uri))
			if got != tt.want {
				t.Errorf("URI(%q) = %q, want %q",
					tt.uri, got, tt.want)
			}
		})
	}
}

func TestPath(t *testing.T) {
	tests := []struct {
		name string
		uri  string
		want string
	}{
		{
			name: "query dropped",
			uri:  "/ws?access_token=" + jwtSample,
			want: "/ws",
		},
		{
			name: "no query",
			uri:  "/ws",
			want: "/ws",
		},
		{
			name: "JWT in the path masked",
			uri:  "/t/" + jwtSample + "?x=1",
			want: "/t/REDACTED",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Path([]byte(tt.uri)); got != tt.want {
				t.Errorf("Path(%q) = %q, want %q",
					tt.uri, got, tt.want)
			}
		})
	}
}

func TestHeader(t *testing.T) {
	tests := []struct {
		name   string
		header string
		value  string
		want   string
	}{
		{
			name:   "bearer authorization keeps the scheme",
			header: "Authorization",
			value:  "Bearer " + jwtSample,
			want:   "Bearer REDACTED",
		},
		{
			name:   "basic authorization",
			header: "authorization",
			value:  "Basic dXNlcjpwYXNz",
			want:   "Basic REDACTED",
		},
		{
			name:   "authorization without a scheme",
			header: "AUTHORIZATION",
			value:  "opaque-secret",
			want:   "REDACTED",
		},
		{
			name:   "authorization starting with a space is masked whole",
			header: "Authorization",
			value:  " secret",
			want:   "REDACTED",
		},
		{
			name:   "proxy authorization",
			header: "Proxy-Authorization",
			value:  "Bearer secret",
			want:   "Bearer REDACTED",
		},
		{
			name:   "cookie",
			header: "Cookie",
			value:  "theme=dark; access_token=" + jwtSample,
			want:   "REDACTED",
		},
		{
			name:   "set-cookie",
			header: "Set-Cookie",
			value:  "session=secret; HttpOnly",
			want:   "REDACTED",
		},
		{
			name:   "subprotocols",
			header: "Sec-WebSocket-Protocol",
			value:  "wsbroker.v1, bearer." + jwtSample,
			want:   "wsbroker.v1, bearer.REDACTED",
		},
		{
			name:   "other header passes",
			header: "User-Agent",
			value:  "Mozilla/5.0",
			want:   "Mozilla/5.0",
		},
		{
			name:   "other header with a JWT",
			header: "Origin",
			value:  "https://example.com/" + jwtSample,
			want:   "https://example.com/REDACTED",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Header(tt.header, tt.value); got != tt.want {
				t.Errorf("Header(%q, %q) = %q, want %q",
					tt.header, tt.value, got, tt.want)
			}
		})
	}
}

func TestProtocols(t *testing.T) {
	tests := []struct {
		name string
		list string
		want string
	}{
		{
			name: "application protocol only",
			list: "wsbroker.v1",
			want: "wsbroker.v1",
		},
		{
			name: "bearer entry",
			list: "wsbroker.v1, bearer." + jwtSample,
			want: "wsbroker.v1, bearer.REDACTED",
		},
		{
			name: "bearer prefix in another case keeps its spelling",
			list: "Bearer.opaque,wsbroker.v1",
			want: "Bearer.REDACTED, wsbroker.v1",
		},
		{
			name: "empty bearer entry",
			list: "wsbroker.v1, bearer.",
			want: "wsbroker.v1, bearer.REDACTED",
		},
		{
			name: "access_token pair masks the next entry",
			list: "access_token, " + jwtSample + ", wsbroker.v1",
			want: "access_token, REDACTED, wsbroker.v1",
		},
		{
			name: "access_token pair with an opaque token",
			list: "wsbroker.v1,access_token,opaque-secret",
			want: "wsbroker.v1, access_token, REDACTED",
		},
		{
			name: "access_token last",
			list: "wsbroker.v1, access_token",
			want: "wsbroker.v1, access_token",
		},
		{
			name: "kubernetes form",
			list: "base64url.bearer.authorization.k8s.io.ZXlKaGJHY2lPaUpJVXpJMU5pSjk, wsbroker.v1",
			want: "base64url.bearer.authorization.k8s.io.REDACTED, wsbroker.v1",
		},
		{
			name: "a bare JWT entry",
			list: jwtSample + ", wsbroker.v1",
			want: "REDACTED, wsbroker.v1",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Protocols(tt.list); got != tt.want {
				t.Errorf("Protocols(%q) = %q, want %q",
					tt.list, got, tt.want)
			}
		})
	}
}

func TestText(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{
			name: "empty",
			in:   "",
			want: "",
		},
		{
			name: "no JWT",
			in:   "token has invalid claims: token is expired",
			want: "token has invalid claims: token is expired",
		},
		{
			name: "a JWT alone",
			in:   jwtSample,
			want: "REDACTED",
		},
		{
			name: "a JWT inside text",
			in:   "agent/1.0 (" + jwtSample + ") end",
			want: "agent/1.0 (REDACTED) end",
		},
		{
			name: "two JWTs",
			in:   jwtSample + " and " + jwtSample,
			want: "REDACTED and REDACTED",
		},
		{
			name: "a header and payload without signature",
			in:   "x eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0. y",
			want: "x REDACTED y",
		},
		{
			name: "eyJ without a dot is not a JWT",
			in:   "eyJustKidding and eyJ",
			want: "eyJustKidding and eyJ",
		},
		{
			name: "too short to be a JWT",
			in:   "eyJ.a",
			want: "eyJ.a",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Text(tt.in); got != tt.want {
				t.Errorf("Text(%q) = %q, want %q",
					tt.in, got, tt.want)
			}
		})
	}
}

// TestNoSignatureSurvives passes the sample token through every function in
// every position a client may put it and checks that its signature segment
// never comes out.
func TestNoSignatureSurvives(t *testing.T) {
	r := New("t")
	outputs := map[string]string{
		"URI access_token": r.URI([]byte("/ws?access_token=" + jwtSample)),
		"URI configured":   r.URI([]byte("/ws?t=" + jwtSample)),
		"URI other":        r.URI([]byte("/ws?x=" + jwtSample)),
		"Path":             Path([]byte("/ws/" + jwtSample + "?a=b")),
		"Header bearer":    Header("Authorization", "Bearer "+jwtSample),
		"Header cookie":    Header("Cookie", "access_token="+jwtSample),
		"Header protocols": Header("Sec-WebSocket-Protocol", "wsbroker.v1, bearer."+jwtSample),
		"Header other":     Header("X-Debug", jwtSample),
		"Protocols pair":   Protocols("access_token," + jwtSample),
		"Text":             Text("user agent " + jwtSample),
	}
	for name, out := range outputs {
		if strings.Contains(out, sigSample) {
			t.Errorf("%s: %q contains the token's signature",
				name, out)
		}
		if !strings.Contains(out, Mask) {
			t.Errorf("%s: %q does not say it masked something",
				name, out)
		}
	}
}

func TestUserinfo(t *testing.T) {
	cases := []struct {
		in   string
		want string
	}{
		{
			in:   "nats://127.0.0.1:4222",
			want: "nats://127.0.0.1:4222",
		},
		{
			in:   "nats://s3cr3t@n1:4222,nats://user:pass@n2:4222/x?y=a@b,tls://n3:4222",
			want: "nats://REDACTED@n1:4222,nats://REDACTED@n2:4222/x?y=a@b,tls://n3:4222",
		},
		{
			in:   "user@host",
			want: "user@host",
		},
	}
	for _, tc := range cases {
		if got := Userinfo(tc.in); got != tc.want {
			t.Fatalf("Userinfo(%q) = %q, want %q",
				tc.in, got, tc.want)
		}
	}
}
