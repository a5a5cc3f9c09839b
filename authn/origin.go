package authn

import (
	"fmt"
	"net/url"
	"strings"
)

// Origins is an Origin allow-list. Entries are exact origins
// (`https://app.example.com`), wildcard subdomains
// (`https://*.example.com`) or `*` (any origin).
type Origins struct {
	any      bool
	exact    map[string]bool
	suffixes []string // "https://" + "." + domain, matched as scheme + suffix
}

// ParseOrigins validates a list of allowed origins.
func ParseOrigins(list []string) (*Origins, error) {
	o := &Origins{exact: map[string]bool{}}
	for _, e := range list {
		e = strings.TrimSpace(strings.TrimRight(e, "/"))
		if e == "" {
			continue
		}
		if e == "*" {
			o.any = true
			continue
		}
		u, err := url.Parse(e)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" {
			return nil, fmt.Errorf("allowed-origins: %q is not an origin (want scheme://host[:port])", e)
		}
		if strings.HasPrefix(u.Host, "*.") {
			o.suffixes = append(o.suffixes, strings.ToLower(u.Scheme+"://"), strings.ToLower(u.Host[1:]))
			continue
		}
		o.exact[strings.ToLower(e)] = true
	}
	return o, nil
}

// Empty reports whether no origin is configured.
func (o *Origins) Empty() bool {
	return o == nil || !o.any && len(o.exact) == 0 && len(o.suffixes) == 0
}

// Allowed reports whether origin may connect. Origins are compared
// case-insensitively (RFC 6454 serializes scheme and host in lower case).
func (o *Origins) Allowed(origin []byte) bool {
	if o == nil {
		return false
	}
	if o.any {
		return true
	}
	var buf [256]byte
	if len(origin) > len(buf) {
		return false
	}
	low := buf[:len(origin)]
	for i, c := range origin {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		low[i] = c
	}
	if o.exact[string(low)] {
		return true
	}
	for i := 0; i+1 < len(o.suffixes); i += 2 {
		scheme, suffix := o.suffixes[i], o.suffixes[i+1]
		s := string(low)
		if strings.HasPrefix(s, scheme) && strings.HasSuffix(s, suffix) && len(s) > len(scheme)+len(suffix) {
			return true
		}
	}
	return false
}
