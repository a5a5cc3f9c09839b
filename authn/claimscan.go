package authn

// A hand-written reader for the claims payload, a flat JSON object. Every
// accepted handshake decodes it: with encoding/json (reflection, a
// json.Unmarshal per NumericDate, a map of the whole payload for each
// permission claim) it was ~30% of the broker's CPU per accepted HS256
// upgrade. The reader handles the common shape only and reports ok=false
// for anything unusual (escapes in keys or registered values, keys that
// encoding/json would match case-insensitively, null, numbers as strings,
// duplicate registered keys, nesting deeper than maxScanDepth, invalid
// JSON); the callers then use encoding/json as before, so results and
// errors stay encoding/json's. FuzzClaimsFastPath checks the two agree.
// Measured: BenchmarkVerify/HS256 7.9 → 5.6 µs (52 → 38 allocs),
// BenchmarkUpgrade/accepted-HS256-header 41 → 30 µs (105 → 67 allocs).

import (
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// maxScanDepth bounds the nesting the reader skips (one bit per level);
// deeper payloads take encoding/json, which has its own limit.
const maxScanDepth = 64

// String flags from scanString.
const (
	strEscape = 1 << iota // a backslash escape
	strHigh               // a byte >= 0x80
)

// jsonMember is one name/value pair of the scanned object. key is the raw
// bytes between the quotes; val is the whole value (quotes and brackets
// included), as encoding/json hands a json.RawMessage.
type jsonMember struct {
	key, val           []byte
	keyFlags, valFlags uint8
}

// objectScan walks the members of a JSON object, validating as it goes.
type objectScan struct {
	b    []byte
	off  int
	n    int
	bad  bool
	done bool
}

func newObjectScan(b []byte) objectScan {
	s := objectScan{b: b}
	s.off = skipWS(b, 0)
	if s.off >= len(b) || b[s.off] != '{' {
		s.bad = true
	}
	s.off++
	return s
}

// next reads the next member into m; false at the end of the object or on
// the first thing it does not accept (then ok reports false).
func (s *objectScan) next(m *jsonMember) bool {
	if s.bad || s.done {
		return false
	}
	b := s.b
	j := skipWS(b, s.off)
	if j >= len(b) {
		return s.fail()
	}
	if b[j] == '}' {
		j = skipWS(b, j+1)
		if j != len(b) {
			return s.fail()
		}
		s.done = true
		return false
	}
	if s.n > 0 {
		if b[j] != ',' {
			return s.fail()
		}
		j = skipWS(b, j+1)
	}
	if j >= len(b) || b[j] != '"' {
		return s.fail()
	}
	end, flags, ok := scanString(b, j)
	if !ok {
		return s.fail()
	}
	m.key, m.keyFlags = b[j+1:end-1], flags
	j = skipWS(b, end)
	if j >= len(b) || b[j] != ':' {
		return s.fail()
	}
	j = skipWS(b, j+1)
	if j >= len(b) {
		return s.fail()
	}
	m.valFlags = 0
	switch b[j] {
	case '"':
		end, m.valFlags, ok = scanString(b, j)
	case '{', '[':
		end, ok = skipComposite(b, j)
	default:
		end, ok = skipScalar(b, j)
	}
	if !ok {
		return s.fail()
	}
	m.val = b[j:end]
	s.off = end
	s.n++
	return true
}

func (s *objectScan) fail() bool {
	s.bad = true
	return false
}

// ok reports whether the whole object was read and accepted.
func (s *objectScan) ok() bool { return s.done && !s.bad }

func skipWS(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString reads the string starting at b[i] (a quote) and returns the
// index after its closing quote.
func scanString(b []byte, i int) (end int, flags uint8, ok bool) {
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, flags, true
		case c == '\\':
			flags |= strEscape
			if j+1 >= len(b) {
				return 0, 0, false
			}
			switch b[j+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				j++
			case 'u':
				if j+5 >= len(b) {
					return 0, 0, false
				}
				for _, h := range b[j+2 : j+6] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return 0, 0, false
					}
				}
				j += 5
			default:
				return 0, 0, false
			}
		case c < 0x20:
			return 0, 0, false
		case c >= utf8.RuneSelf:
			flags |= strHigh
		}
	}
	return 0, 0, false
}

// skipScalar reads a number, true, false or null starting at b[i].
func skipScalar(b []byte, i int) (int, bool) {
	var lit string
	switch b[i] {
	case 't':
		lit = "true"
	case 'f':
		lit = "false"
	case 'n':
		lit = "null"
	default:
		return scanNumber(b, i)
	}
	if len(b)-i < len(lit) || string(b[i:i+len(lit)]) != lit {
		return 0, false
	}
	return i + len(lit), true
}

// scanNumber reads a number in JSON's grammar starting at b[i]; what
// follows it is the caller's to check.
func scanNumber(b []byte, i int) (int, bool) {
	j := i
	if j < len(b) && b[j] == '-' {
		j++
	}
	if j >= len(b) {
		return 0, false
	}
	switch c := b[j]; {
	case c == '0':
		j++
	case '1' <= c && c <= '9':
		j = skipDigits(b, j)
	default:
		return 0, false
	}
	if j < len(b) && b[j] == '.' {
		k := skipDigits(b, j+1)
		if k == j+1 {
			return 0, false
		}
		j = k
	}
	if j < len(b) && (b[j] == 'e' || b[j] == 'E') {
		j++
		if j < len(b) && (b[j] == '+' || b[j] == '-') {
			j++
		}
		k := skipDigits(b, j)
		if k == j {
			return 0, false
		}
		j = k
	}
	return j, true
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && '0' <= b[i] && b[i] <= '9' {
		i++
	}
	return i
}

// skipComposite reads the object or array starting at b[i], nested at most
// maxScanDepth deep, and returns the index after it.
func skipComposite(b []byte, i int) (int, bool) {
	var objs uint64 // bit 0 is the innermost level: set for an object
	depth := 0
	j := i
	var ok bool
value:
	for {
		// j is at the start of a value.
		if j >= len(b) {
			return 0, false
		}
		switch c := b[j]; c {
		case '{', '[':
			if depth == maxScanDepth {
				return 0, false
			}
			depth++
			objs <<= 1
			closer := byte(']')
			if c == '{' {
				objs |= 1
				closer = '}'
			}
			j = skipWS(b, j+1)
			if j >= len(b) {
				return 0, false
			}
			if b[j] != closer {
				if c == '{' {
					if j, ok = skipKey(b, j); !ok {
						return 0, false
					}
				}
				continue value
			}
			j++
			depth--
			objs >>= 1
		case '"':
			if j, _, ok = scanString(b, j); !ok {
				return 0, false
			}
		default:
			if j, ok = skipScalar(b, j); !ok {
				return 0, false
			}
		}
		// After a value: a comma, or the end of one or more containers.
		for depth > 0 {
			j = skipWS(b, j)
			if j >= len(b) {
				return 0, false
			}
			inObj := objs&1 == 1
			switch {
			case b[j] == ',':
				j = skipWS(b, j+1)
				if inObj {
					if j, ok = skipKey(b, j); !ok {
						return 0, false
					}
				}
				continue value
			case inObj && b[j] == '}', !inObj && b[j] == ']':
				j++
				depth--
				objs >>= 1
			default:
				return 0, false
			}
		}
		return j, true
	}
}

// skipKey reads `"key" :` and the whitespace after it, from b[j].
func skipKey(b []byte, j int) (int, bool) {
	if j >= len(b) || b[j] != '"' {
		return 0, false
	}
	end, _, ok := scanString(b, j)
	if !ok {
		return 0, false
	}
	j = skipWS(b, end)
	if j >= len(b) || b[j] != ':' {
		return 0, false
	}
	return skipWS(b, j+1), true
}

// minRunes is a lower bound on the runes of a scanned key (raw, between
// the quotes) once unquoted: an escape is at least half a rune (\u pairs
// make one), and every byte that is not a UTF-8 continuation byte starts
// one (an invalid byte becomes U+FFFD). A key can only be a name of fewer
// runes if this says so.
func minRunes(key []byte) int {
	n, u := 0, 0
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case c == '\\':
			if key[i+1] == 'u' {
				u++
				i += 5
			} else {
				n++
				i++
			}
		case c&0xC0 != 0x80:
			n++
		}
	}
	return n + (u+1)/2
}

// plainString returns the contents of a scanned string value that
// encoding/json would decode to the same bytes: no escapes, valid UTF-8.
func plainString(val []byte, flags uint8) ([]byte, bool) {
	if len(val) < 2 || val[0] != '"' || flags&strEscape != 0 {
		return nil, false
	}
	s := val[1 : len(val)-1]
	if flags&strHigh != 0 && !utf8.Valid(s) {
		return nil, false
	}
	return s, true
}

// forStrings calls f (if not nil) with each element of val, a scanned
// array, and reports whether every element is a plain string.
func forStrings(val []byte, f func(s []byte)) bool {
	if len(val) < 2 || val[0] != '[' {
		return false
	}
	j := skipWS(val, 1)
	if j < len(val) && val[j] == ']' {
		return true
	}
	for {
		if j >= len(val) || val[j] != '"' {
			return false
		}
		end, flags, ok := scanString(val, j)
		if !ok {
			return false
		}
		s, ok := plainString(val[j:end], flags)
		if !ok {
			return false
		}
		if f != nil {
			f(s)
		}
		j = skipWS(val, end)
		if j >= len(val) {
			return false
		}
		switch val[j] {
		case ']':
			return true
		case ',':
			j = skipWS(val, j+1)
		default:
			return false
		}
	}
}

// Registered claim names, in the order of registeredIndex.
const (
	regIss = iota
	regSub
	regAud
	regExp
	regNbf
	regIat
	regJti
	numRegistered
)

func registeredIndex(key []byte) int {
	switch string(key) {
	case "iss":
		return regIss
	case "sub":
		return regSub
	case "aud":
		return regAud
	case "exp":
		return regExp
	case "nbf":
		return regNbf
	case "iat":
		return regIat
	case "jti":
		return regJti
	}
	return -1
}

// scanRegistered fills the registered claims present in b, a JSON object,
// exactly as json.Unmarshal(b, rc) would, and reports whether it could; on
// false rc is unchanged and the caller decodes with encoding/json.
func scanRegistered(b []byte, rc *jwt.RegisteredClaims) bool {
	var vals [numRegistered]jsonMember
	var seen uint8
	var m jsonMember
	s := newObjectScan(b)
	for s.next(&m) {
		if m.keyFlags != 0 {
			// encoding/json unquotes keys and folds them (Unicode simple
			// folding: "ſub" is sub); only a key of at most three runes
			// can be one of ours.
			if minRunes(m.key) <= 3 {
				return false
			}
			continue
		}
		k := registeredIndex(m.key)
		if k < 0 {
			if len(m.key) == 3 {
				// "EXP", "Sub": encoding/json matches them; leave it that.
				lower := [3]byte{m.key[0] | 0x20, m.key[1] | 0x20, m.key[2] | 0x20}
				if registeredIndex(lower[:]) >= 0 {
					return false
				}
			}
			continue
		}
		if seen&(1<<k) != 0 {
			return false
		}
		seen |= 1 << k
		vals[k] = m
	}
	if !s.ok() {
		return false
	}

	// Validate everything before changing rc, and size the one string all
	// the string values share.
	var strs [numRegistered][]byte
	total, nAud, audList := 0, 0, false
	for _, k := range []int{regIss, regSub, regJti} {
		if seen&(1<<k) == 0 {
			continue
		}
		v, ok := plainString(vals[k].val, vals[k].valFlags)
		if !ok {
			return false
		}
		strs[k] = v
		total += len(v)
	}
	if seen&(1<<regAud) != 0 {
		m := vals[regAud]
		if v, ok := plainString(m.val, m.valFlags); ok {
			strs[regAud] = v
			total += len(v)
			nAud = 1
		} else if forStrings(m.val, func(s []byte) { total += len(s); nAud++ }) {
			audList = true
		} else {
			return false
		}
	}
	var dates [3]jwt.NumericDate
	for i, k := range []int{regExp, regNbf, regIat} {
		if seen&(1<<k) == 0 {
			continue
		}
		d, ok := numericDate(vals[k].val)
		if !ok {
			return false
		}
		dates[i] = d
	}

	var sb strings.Builder
	sb.Grow(total)
	var offs [numRegistered + 1]int
	for _, k := range []int{regIss, regSub, regJti, regAud} {
		offs[k] = sb.Len()
		sb.Write(strs[k])
	}
	if audList {
		forStrings(vals[regAud].val, func(s []byte) { sb.Write(s) })
	}
	all := sb.String()
	str := func(k int) string { return all[offs[k] : offs[k]+len(strs[k])] }
	if seen&(1<<regIss) != 0 {
		rc.Issuer = str(regIss)
	}
	if seen&(1<<regSub) != 0 {
		rc.Subject = str(regSub)
	}
	if seen&(1<<regJti) != 0 {
		rc.ID = str(regJti)
	}
	if seen&(1<<regAud) != 0 {
		// golang-jwt's ClaimStrings leaves an empty list nil.
		var aud jwt.ClaimStrings
		if nAud > 0 {
			aud = make(jwt.ClaimStrings, 0, nAud)
		}
		if audList {
			off := offs[regAud]
			forStrings(vals[regAud].val, func(s []byte) {
				aud = append(aud, all[off:off+len(s)])
				off += len(s)
			})
		} else {
			aud = append(aud, str(regAud))
		}
		rc.Audience = aud
	}
	if seen&(1<<regExp|1<<regNbf|1<<regIat) != 0 {
		// One allocation for the three dates.
		p := new([3]jwt.NumericDate)
		*p = dates
		if seen&(1<<regExp) != 0 {
			rc.ExpiresAt = &p[0]
		}
		if seen&(1<<regNbf) != 0 {
			rc.NotBefore = &p[1]
		}
		if seen&(1<<regIat) != 0 {
			rc.IssuedAt = &p[2]
		}
	}
	return true
}

// numericDate is jwt.NumericDate.UnmarshalJSON for a JSON number: the
// number as a float64 (json.Number.Float64 is strconv.ParseFloat), then
// golang-jwt's newNumericDateFromSeconds. A range error is left to
// encoding/json, which fails the same way.
func numericDate(val []byte) (jwt.NumericDate, bool) {
	if len(val) == 0 || val[0] != '-' && (val[0] < '0' || val[0] > '9') {
		return jwt.NumericDate{}, false
	}
	f, err := strconv.ParseFloat(string(val), 64)
	if err != nil {
		return jwt.NumericDate{}, false
	}
	round, frac := math.Modf(f)
	return *jwt.NewNumericDate(time.Unix(int64(round), int64(frac*1e9))), true
}

// findMember returns the member called name in b, a JSON object (the
// last one when the name repeats, as a map decode keeps), and reports
// whether b was read whole: on false the caller decodes b with
// encoding/json.
func findMember(b []byte, name string) (member jsonMember, found, ok bool) {
	var m jsonMember
	s := newObjectScan(b)
	for s.next(&m) {
		if m.keyFlags&strEscape == 0 && (m.keyFlags&strHigh == 0 || utf8.Valid(m.key)) {
			// Unquoting leaves such a key as it is.
			if string(m.key) == name {
				member, found = m, true
			}
			continue
		}
		if minRunes(m.key) <= utf8.RuneCountInString(name) {
			return jsonMember{}, false, false
		}
	}
	if !s.ok() {
		return jsonMember{}, false, false
	}
	return member, found, true
}

// plainStrings reads a member's value that is a string or an array of
// strings, none with escapes, as StringsClaim does; ok is false for
// anything else (then encoding/json decides).
func plainStrings(m jsonMember) (list []string, ok bool) {
	val := m.val
	if s, ok := plainString(val, m.valFlags); ok {
		return strings.Fields(string(s)), true
	}
	total, n := 0, 0
	if !forStrings(val, func(s []byte) { total += len(s); n++ }) {
		return nil, false
	}
	// One string for all the elements: encoding/json gives an empty list
	// for [], not nil.
	var sb strings.Builder
	sb.Grow(total)
	forStrings(val, func(s []byte) { sb.Write(s) })
	all := sb.String()
	list = make([]string, 0, n)
	off := 0
	forStrings(val, func(s []byte) {
		list = append(list, all[off:off+len(s)])
		off += len(s)
	})
	return list, true
}
