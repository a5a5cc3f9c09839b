package authn

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The reference for the fast paths is encoding/json as verify.go used it
// before them: RegisteredClaims decoded by json.Unmarshal, Claim through a
// map of the whole payload, StringsClaim on top of Claim.

func refRegistered(b []byte) (jwt.RegisteredClaims, error) {
	var rc jwt.RegisteredClaims
	err := json.Unmarshal(b, &rc)
	return rc, err
}

func refClaim(payload []byte, name string, out any) (bool, error) {
	if len(payload) == 0 {
		return false, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		return false, fmt.Errorf("claims: %w", err)
	}
	raw, ok := m[name]
	if !ok {
		return false, nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return true, fmt.Errorf("claim %q: %w", name, err)
	}
	return true, nil
}

func refStringsClaim(payload []byte, name string) ([]string, error) {
	var raw json.RawMessage
	ok, err := refClaim(payload, name, &raw)
	if !ok || err != nil {
		return nil, err
	}
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

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// checkRegistered fails if the fast path decodes b to anything but what
// encoding/json gives, or accepts what encoding/json refuses; it returns
// whether the fast path handled b.
func checkRegistered(t *testing.T, b []byte) bool {
	t.Helper()
	want, wantErr := refRegistered(b)
	var got jwt.RegisteredClaims
	handled := scanRegistered(b, &got)
	if handled && wantErr != nil {
		t.Fatalf("fast path accepted %q; encoding/json: %v", b, wantErr)
	}
	if handled && !reflect.DeepEqual(got, want) {
		t.Fatalf("fast path on %q:\n got  %#v\n want %#v", b, got, want)
	}
	if !handled && !reflect.DeepEqual(got, jwt.RegisteredClaims{}) {
		t.Fatalf("fast path changed the claims of %q it did not handle: %#v", b, got)
	}
	// Through tokenClaims, which is what golang-jwt calls.
	var c tokenClaims
	err := c.UnmarshalJSON(b)
	if (err == nil) != (wantErr == nil) {
		t.Fatalf("tokenClaims on %q: error %v, encoding/json: %v", b, err, wantErr)
	}
	if !reflect.DeepEqual(c.RegisteredClaims, want) {
		t.Fatalf("tokenClaims on %q:\n got  %#v\n want %#v", b, c.RegisteredClaims, want)
	}
	if string(c.raw) != string(b) {
		t.Fatalf("tokenClaims kept %q, want %q", c.raw, b)
	}
	return handled
}

// checkClaims fails if Claim or StringsClaim on payload differ from the
// reference in result or error; it returns whether findMember read it.
func checkClaims(t *testing.T, payload []byte, name string) bool {
	t.Helper()
	p := Principal{claims: payload}
	var got, want any
	ok, err := p.Claim(name, &got)
	wantOK, wantErr := refClaim(payload, name, &want)
	if ok != wantOK || errString(err) != errString(wantErr) || !reflect.DeepEqual(got, want) {
		t.Fatalf("Claim(%q) on %q: %v %v %#v, want %v %v %#v", name, payload, ok, err, got, wantOK, wantErr, want)
	}
	var gotRaw, wantRaw json.RawMessage
	ok, err = p.Claim(name, &gotRaw)
	wantOK, wantErr = refClaim(payload, name, &wantRaw)
	if ok != wantOK || errString(err) != errString(wantErr) || string(gotRaw) != string(wantRaw) {
		t.Fatalf("Claim(%q, RawMessage) on %q: %v %v %q, want %v %v %q", name, payload, ok, err, gotRaw, wantOK, wantErr, wantRaw)
	}
	var gotN, wantN int
	ok, err = p.Claim(name, &gotN)
	wantOK, wantErr = refClaim(payload, name, &wantN)
	if ok != wantOK || errString(err) != errString(wantErr) || gotN != wantN {
		t.Fatalf("Claim(%q, int) on %q: %v %v %d, want %v %v %d", name, payload, ok, err, gotN, wantOK, wantErr, wantN)
	}
	// A fresh Principal: the one above may have cached a map.
	p = Principal{claims: payload}
	list, err := p.StringsClaim(name)
	wantList, wantErr := refStringsClaim(payload, name)
	if errString(err) != errString(wantErr) || !reflect.DeepEqual(list, wantList) {
		t.Fatalf("StringsClaim(%q) on %q: %#v %v, want %#v %v", name, payload, list, err, wantList, wantErr)
	}
	_, _, read := findMember(payload, name)
	return read
}

func TestScanRegistered(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		handled bool
	}{
		{
			name:    "typical",
			payload: `{"sub":"user-1","iat":1700000000,"exp":1700003600,"channels":["news","user:user-1:*"]}`,
			handled: true,
		},
		{
			name:    "every registered claim",
			payload: `{"iss":"https://issuer.example","sub":"u","aud":["a","b"],"exp":1700003600,"nbf":1699999000,"iat":1700000000,"jti":"id-1"}`,
			handled: true,
		},
		{
			name:    "empty object",
			payload: `{}`,
			handled: true,
		},
		{
			name:    "whitespace everywhere",
			payload: " \t\r\n{ \"sub\" :\n\"u\" ,\t\"exp\" : 17 , \"aud\" : [ \"a\" , \"b\" ] , \"x\" : [ ] , \"y\" : { } } \n",
			handled: true,
		},
		{
			name:    "aud as a string",
			payload: `{"aud":"only"}`,
			handled: true,
		},
		{
			name:    "aud empty string",
			payload: `{"aud":""}`,
			handled: true,
		},
		{
			name:    "aud empty array is nil",
			payload: `{"aud":[]}`,
			handled: true,
		},
		{
			name:    "aud with a number",
			payload: `{"aud":["a",1]}`,
			handled: false,
		},
		{
			name:    "aud with null",
			payload: `{"aud":["a",null]}`,
			handled: false,
		},
		{
			name:    "aud null",
			payload: `{"aud":null}`,
			handled: false,
		},
		{
			name:    "aud object",
			payload: `{"aud":{"a":1}}`,
			handled: false,
		},
		{
			name:    "aud with an escape",
			payload: `{"aud":["a\"b"]}`,
			handled: false,
		},
		{
			name:    "non-ASCII values",
			payload: `{"sub":"Zoë","iss":"東京","aud":["ünï"]}`,
			handled: true,
		},
		{
			name:    "invalid UTF-8 in sub",
			payload: "{\"sub\":\"a\xffb\"}",
			handled: false,
		},
		{
			name:    "invalid UTF-8 in another member",
			payload: "{\"sub\":\"a\",\"x\":\"\xff\"}",
			handled: true,
		},
		{
			name:    "escape in sub",
			payload: `{"sub":"a\u0062"}`,
			handled: false,
		},
		{
			name:    "escapes in other members",
			payload: `{"sub":"a","x":"q\"uo\\te\u00e9\n","y":["\"]"],"z":{"\"}":"]"}}`,
			handled: true,
		},
		{
			name:    "nested values skipped",
			payload: `{"a":{"b":[1,{"c":[true,false,null,-1.5e+3,"x"]}],"d":{}},"sub":"u","e":[[[]]]}`,
			handled: true,
		},
		{
			name:    "upper-case key",
			payload: `{"SUB":"u"}`,
			handled: false,
		},
		{
			name:    "mixed-case key",
			payload: `{"Exp":1}`,
			handled: false,
		},
		{
			name:    "long s folds to s",
			payload: `{"ſub":"u"}`,
			handled: false,
		},
		{
			name:    "escaped key",
			payload: `{"\u0073ub":"u"}`,
			handled: false,
		},
		{
			name:    "long escaped key cannot be registered",
			payload: `{"https:\/\/example.com\/roles":["a"],"sub":"u"}`,
			handled: true,
		},
		{
			name:    "long non-ASCII key cannot be registered",
			payload: `{"ſſſſ":1,"sub":"u"}`,
			handled: true,
		},
		{
			name:    "four-letter key",
			payload: `{"subs":"u","SUBS":1}`,
			handled: true,
		},
		{
			name:    "duplicate sub",
			payload: `{"sub":"a","sub":"b"}`,
			handled: false,
		},
		{
			name:    "duplicate other key",
			payload: `{"x":1,"x":"2","sub":"b"}`,
			handled: true,
		},
		{
			name:    "sub a number",
			payload: `{"sub":1}`,
			handled: false,
		},
		{
			name:    "sub null",
			payload: `{"sub":null}`,
			handled: false,
		},
		{
			name:    "exp a string",
			payload: `{"exp":"1700000000"}`,
			handled: false,
		},
		{
			name:    "exp null",
			payload: `{"exp":null}`,
			handled: false,
		},
		{
			name:    "exp true",
			payload: `{"exp":true}`,
			handled: false,
		},
		{
			name:    "exp fractional",
			payload: `{"exp":1700000000.987654321}`,
			handled: true,
		},
		{
			name:    "exp negative fractional",
			payload: `{"exp":-1.5}`,
			handled: true,
		},
		{
			name:    "exp exponent",
			payload: `{"exp":1.7e9,"nbf":17E+8,"iat":1e-7}`,
			handled: true,
		},
		{
			name:    "exp negative zero",
			payload: `{"exp":-0}`,
			handled: true,
		},
		{
			name:    "exp beyond int64",
			payload: `{"exp":1e300,"nbf":-1e300}`,
			handled: true,
		},
		{
			name:    "exp beyond float64",
			payload: `{"exp":1e400}`,
			handled: false,
		},
		{
			name:    "exp long integer",
			payload: `{"exp":123456789012345678901234567890123456789012345678901234567890}`,
			handled: true,
		},
		{
			name:    "exp leading zero",
			payload: `{"exp":0123}`,
			handled: false,
		},
		{
			name:    "exp plus sign",
			payload: `{"exp":+1}`,
			handled: false,
		},
		{
			name:    "exp dot only",
			payload: `{"exp":1.}`,
			handled: false,
		},
		{
			name:    "trailing comma",
			payload: `{"sub":"u",}`,
			handled: false,
		},
		{
			name:    "trailing comma in skipped array",
			payload: `{"x":[1,],"sub":"u"}`,
			handled: false,
		},
		{
			name:    "missing colon",
			payload: `{"sub" "u"}`,
			handled: false,
		},
		{
			name:    "unterminated",
			payload: `{"sub":"u"`,
			handled: false,
		},
		{
			name:    "garbage after the object",
			payload: `{"sub":"u"}x`,
			handled: false,
		},
		{
			name:    "two objects",
			payload: `{}{}`,
			handled: false,
		},
		{
			name:    "bad literal",
			payload: `{"x":tru,"sub":"u"}`,
			handled: false,
		},
		{
			name:    "control character in a string",
			payload: "{\"x\":\"a\tb\"}",
			handled: false,
		},
		{
			name:    "bad escape",
			payload: `{"x":"\x"}`,
			handled: false,
		},
		{
			name:    "short unicode escape",
			payload: `{"x":"\u12"}`,
			handled: false,
		},
		{
			name:    "mismatched brackets",
			payload: `{"x":[}]}`,
			handled: false,
		},
		{
			name:    "array at the top",
			payload: `["sub"]`,
			handled: false,
		},
		{
			name:    "null at the top",
			payload: `null`,
			handled: false,
		},
		{
			name:    "string at the top",
			payload: `"x"`,
			handled: false,
		},
		{
			name:    "empty",
			payload: ``,
			handled: false,
		},
		{
			name:    "nested 63 deep",
			payload: `{"x":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`,
			handled: true,
		},
		{
			name:    "nested 64 deep",
			payload: `{"x":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`,
			handled: true,
		},
		{
			name:    "nested 65 deep",
			payload: `{"x":` + strings.Repeat("[", 65) + strings.Repeat("]", 65) + `}`,
			handled: false,
		},
		{
			name:    "nested 10001 deep",
			payload: `{"x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`,
			handled: false,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := checkRegistered(t, []byte(c.payload)); got != c.handled {
				t.Fatalf("handled %v, want %v", got, c.handled)
			}
		})
	}
}

// TestScanRegisteredPrecision: TimePrecision is golang-jwt's setting and
// the fast path truncates to it as NewNumericDate does.
func TestScanRegisteredPrecision(t *testing.T) {
	defer func(p time.Duration) { jwt.TimePrecision = p }(jwt.TimePrecision)
	jwt.TimePrecision = time.Millisecond
	if !checkRegistered(t, []byte(`{"exp":1700000000.987654321,"iat":-2.0005}`)) {
		t.Fatalf("fractional dates not handled")
	}
}

func TestClaimFastPath(t *testing.T) {
	cases := []struct {
		name    string
		payload string
		claim   string
		read    bool
	}{
		{
			name:    "list",
			payload: `{"sub":"u","channels":["news","user:u:*"]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "empty list is not nil",
			payload: `{"channels":[]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "space-separated scope",
			payload: `{"scope":"  read  write\tadmin "}`,
			claim:   "scope",
			read:    true,
		},
		{
			name:    "empty scope",
			payload: `{"scope":""}`,
			claim:   "scope",
			read:    true,
		},
		{
			name:    "scope with Unicode spaces",
			payload: `{"scope":"a b c"}`,
			claim:   "scope",
			read:    true,
		},
		{
			name:    "absent",
			payload: `{"sub":"u"}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "last occurrence wins",
			payload: `{"channels":["a"],"channels":["b","c"]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "last occurrence wins even if invalid",
			payload: `{"channels":["a"],"channels":7}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "case-sensitive",
			payload: `{"Channels":["a"]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "number",
			payload: `{"channels":12}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "null",
			payload: `{"channels":null}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "list with null",
			payload: `{"channels":["a",null]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "list with a number",
			payload: `{"channels":["a",1]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "list with escapes",
			payload: `{"channels":["a\/b","c\u0041"]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "string with escapes",
			payload: `{"scope":"a\tb\u0020c"}`,
			claim:   "scope",
			read:    true,
		},
		{
			name:    "invalid UTF-8 in a list",
			payload: "{\"channels\":[\"a\xffb\"]}",
			claim:   "channels",
			read:    true,
		},
		{
			name:    "non-ASCII key",
			payload: `{"kanäle":["a"]}`,
			claim:   "kanäle",
			read:    true,
		},
		{
			name:    "invalid UTF-8 key",
			payload: "{\"k\xff\":[\"a\"]}",
			claim:   "k\uFFFD",
			read:    false,
		},
		{
			name:    "escaped key that could be the name",
			payload: `{"ch\u0061nnels":["a"]}`,
			claim:   "channels",
			read:    false,
		},
		{
			name:    "escaped key too long to be the name",
			payload: `{"https:\/\/example.com\/roles":["a"],"channels":["b"]}`,
			claim:   "channels",
			read:    true,
		},
		{
			name:    "invalid payload",
			payload: `{"channels":["a"],`,
			claim:   "channels",
			read:    false,
		},
		{
			name:    "not an object",
			payload: `["channels"]`,
			claim:   "channels",
			read:    false,
		},
		{
			name:    "null payload",
			payload: `null`,
			claim:   "channels",
			read:    false,
		},
		{
			name:    "empty payload",
			payload: ``,
			claim:   "channels",
			read:    false,
		},
		{
			name:    "empty name",
			payload: `{"":["a"]}`,
			claim:   "",
			read:    true,
		},
		{
			name:    "nested object claim",
			payload: `{"perm":{"sub":["a"],"pub":"b c"}}`,
			claim:   "perm",
			read:    true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := checkClaims(t, []byte(c.payload), c.claim); got != c.read {
				t.Fatalf("findMember read %v, want %v", got, c.read)
			}
		})
	}
}

// TestVerifyFastPathClaims: a verified token's principal reads the same
// claims through the fast path.
func TestVerifyFastPathClaims(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := time.Now()
	v, err := NewVerifier(t.Context(), VerifyConfig{HMACSecret: secret, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{"sub": "u", "iss": "i", "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "channels": []string{"a", "b"}, "scope": "x y"}
	p, vd := v.Verify(t.Context(), sign(t, jwt.SigningMethodHS256, "", claims, secret))
	if vd.Reason != ReasonNone {
		t.Fatalf("reason %s: %s", vd.Reason, vd.Detail)
	}
	if p.Subject != "u" || p.Issuer != "i" || !p.ExpiresAt.Equal(time.Unix(now.Add(time.Hour).Unix(), 0)) {
		t.Fatalf("principal %+v", p)
	}
	if l, err := p.StringsClaim("channels"); err != nil || !reflect.DeepEqual(l, []string{"a", "b"}) {
		t.Fatalf("channels %q %v", l, err)
	}
	if l, err := p.StringsClaim("scope"); err != nil || !reflect.DeepEqual(l, []string{"x", "y"}) {
		t.Fatalf("scope %q %v", l, err)
	}
}

// TestClaimsFastPathAllocs pins the allocations of the common shape: the
// string values share one, the dates one, aud its slice.
func TestClaimsFastPathAllocs(t *testing.T) {
	b := []byte(`{"iss":"i","sub":"user-1","aud":["a","b"],"iat":1700000000,"exp":1700003600,"channels":["news","user:user-1:*"]}`)
	n := testing.AllocsPerRun(100, func() {
		var rc jwt.RegisteredClaims
		if !scanRegistered(b, &rc) {
			t.Fatal("not handled")
		}
	})
	if n > 3 {
		t.Fatalf("scanRegistered: %v allocations, want at most 3", n)
	}
	p := Principal{claims: b}
	n = testing.AllocsPerRun(100, func() {
		if _, err := p.StringsClaim("channels"); err != nil {
			t.Fatal(err)
		}
		if l, _ := p.StringsClaim("absent"); l != nil {
			t.Fatal(l)
		}
	})
	if n > 2 {
		t.Fatalf("StringsClaim: %v allocations, want at most 2", n)
	}
}

func FuzzClaimsFastPath(f *testing.F) {
	seeds := []string{
		`{"sub":"bench-user","iat":1700000000,"exp":1700003600,"channels":["news","user:bench-user:*"]}`,
		`{"iss":"https://issuer.example","sub":"u","aud":["a","b"],"exp":1700003600,"nbf":1699999000,"iat":1700000000,"jti":"id-1","scope":"read write"}`,
		`{"aud":"x","exp":1.7e9,"nbf":-1.5,"iat":1e300,"jti":""}`,
		`{"aud":[],"exp":1e400}`,
		`{"aud":["a",null],"exp":"17","sub":null}`,
		`{"SUB":"u","Exp":1,"ſub":"v","\u0073ub":"w"}`,
		`{"sub":"a","sub":"b","channels":["a"],"channels":"b c"}`,
		`{"https:\/\/example.com\/roles":["a\"b"],"x":{"y":[1,{"z":[true,false,null]}]},"sub":"u"}`,
		"{\"sub\":\"a\xffb\",\"k\xff\":[\"\xfe\"]}",
		" \t{ \"sub\" : \"u\" , \"channels\" : [ \"a\" , \"b\" ] }\n",
		`{"exp":0123}`,
		`{"x":[1,],"sub":"u"}`,
		`{"sub":"u"}x`,
		`{"x":` + strings.Repeat("[", 65) + strings.Repeat("]", 65) + `}`,
		`["sub"]`,
		`null`,
		``,
	}
	for _, s := range seeds {
		f.Add([]byte(s), "channels")
	}
	f.Add([]byte(`{"scope":"a b"}`), "scope")
	f.Add([]byte(`{"kanäle":["a"],"ch\u0061nnels":1}`), "kanäle")
	f.Fuzz(func(t *testing.T, payload []byte, name string) {
		checkRegistered(t, payload)
		for _, n := range []string{name, "channels", "sub"} {
			checkClaims(t, payload, n)
		}
	})
}
