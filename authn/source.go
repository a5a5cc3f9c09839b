package authn

import (
	"fmt"
	"strings"
)

// Source is where a token was carried. Its String is the `source` label.
type Source uint8

// The token transports of DESIGN.md §4.
const (
	SourceNone Source = iota
	SourceHeader
	SourceSubprotocol
	SourceQuery
	SourceCookie

	// NumSources counts the sources, SourceNone included.
	NumSources
)

var sourceLabels = [NumSources]string{"none", "header", "subprotocol", "query", "cookie"}

func (s Source) String() string {
	if s >= NumSources {
		return "unknown"
	}
	return sourceLabels[s]
}

// ParseSource returns the source with the given label; "none" is not a
// transport and is refused.
func ParseSource(label string) (Source, error) {
	for i := SourceHeader; i < NumSources; i++ {
		if sourceLabels[i] == label {
			return i, nil
		}
	}
	return SourceNone, fmt.Errorf("unknown token source %q (want one of header, subprotocol, query, cookie)", label)
}

// ParseSources parses a comma list such as "header,subprotocol"; the order is
// the precedence.
func ParseSources(list string) ([]Source, error) {
	var out []Source
	seen := [NumSources]bool{}
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		s, err := ParseSource(f)
		if err != nil {
			return nil, err
		}
		if seen[s] {
			return nil, fmt.Errorf("token source %q listed twice", f)
		}
		seen[s] = true
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no token source enabled")
	}
	return out, nil
}

// DefaultSources are the sources enabled when none are configured.
func DefaultSources() []Source { return []Source{SourceHeader, SourceSubprotocol} }
