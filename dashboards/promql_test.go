package dashboards

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The contract of DESIGN.md sections 5 and 6, as the dashboards and rules
// may use it: metric names, their labels and the closed sets of label
// values. A label mapped to nil has values from a set DESIGN.md leaves open;
// the keys_refresh_total results are the ones telemetry/metrics.go sets.

var upgradeReasons = []string{
	"none",
	"missing_token",
	"source_disabled",
	"malformed_authorization",
	"malformed_subprotocol",
	"protocol_not_offered",
	"ambiguous_token",
	"token_too_large",
	"malformed_token",
	"alg_not_allowed",
	"unknown_key",
	"bad_signature",
	"expired",
	"not_yet_valid",
	"wrong_issuer",
	"wrong_audience",
	"missing_claim",
	"origin_not_allowed",
	"rate_limited",
	"connection_limit",
	"keys_unavailable",
}

var closeReasons = []string{
	"client_closed",
	"token_expired",
	"idle_timeout",
	"slow_consumer",
	"protocol_error",
	"message_too_large",
	"server_shutdown",
	"read_error",
	"write_error",
	"evicted",
}

var tokenSources = []string{"header", "subprotocol", "query", "cookie", "none"}

type metricSpec struct {
	histogram bool
	labels    map[string][]string
}

var contractSpecs = map[string]metricSpec{
	"wsbroker_upgrades_total": {labels: map[string][]string{
		"result": {"accepted", "rejected"},
		"reason": upgradeReasons,
		"source": tokenSources,
	}},
	"wsbroker_upgrade_duration_seconds": {histogram: true, labels: map[string][]string{
		"result": {"accepted", "rejected"},
	}},
	"wsbroker_token_verify_duration_seconds": {histogram: true, labels: map[string][]string{
		"alg": nil,
	}},
	"wsbroker_token_remaining_seconds": {histogram: true},
	"wsbroker_handshake_errors_total": {labels: map[string][]string{
		"kind": {"timeout", "too_large", "bad_request"},
	}},
	"wsbroker_connections": {},
	"wsbroker_connection_closes_total": {labels: map[string][]string{
		"reason": closeReasons,
	}},
	"wsbroker_connection_duration_seconds": {histogram: true},
	"wsbroker_messages_total": {labels: map[string][]string{
		"direction": {"in", "out"},
	}},
	"wsbroker_message_bytes_total": {labels: map[string][]string{
		"direction": {"in", "out"},
	}},
	"wsbroker_messages_dropped_total": {labels: map[string][]string{
		"reason": nil,
	}},
	"wsbroker_subscriptions":              {},
	"wsbroker_channels":                   {},
	"wsbroker_events_total":               {labels: map[string][]string{"type": nil}},
	"wsbroker_event_publish_errors_total": {},
	"wsbroker_event_queue_depth":          {},
	"wsbroker_keys_refresh_total":         {labels: map[string][]string{"result": {"ok", "error"}}},
	"wsbroker_build_info": {labels: map[string][]string{
		"version":   nil,
		"goversion": nil,
	}},
	// Prometheus' own, per target.
	"up": {},
}

// targetLabels are added by Prometheus to every scraped series.
var targetLabels = []string{"job", "instance"}

// contractMetrics expands contractSpecs into every series name a query may
// select: a histogram is selected as _bucket (with le), _sum and _count.
func contractMetrics() map[string]map[string][]string {
	out := make(map[string]map[string][]string)
	add := func(name string, labels map[string][]string, extra ...string) {
		m := make(map[string][]string)
		for k, v := range labels {
			m[k] = v
		}
		for _, l := range append(targetLabels, extra...) {
			m[l] = nil
		}
		out[name] = m
	}
	for name, spec := range contractSpecs {
		if !spec.histogram {
			add(name, spec.labels)
			continue
		}
		add(name+"_bucket", spec.labels, "le")
		add(name+"_sum", spec.labels)
		add(name+"_count", spec.labels)
	}
	return out
}

// recordedLabels are the labels a recording rule's output may be selected
// by: the rules aggregate by job and, per reason, by reason.
var recordedLabels = map[string][]string{
	"job":    nil,
	"reason": upgradeReasons,
}

type tokenKind int

const (
	tokIdent tokenKind = iota
	tokNumber
	tokString
	tokPunct
	tokVariable // a Grafana variable: $name, ${name}, ${name:format}
)

type token struct {
	kind tokenKind
	text string // for tokString, the unquoted value
}

var (
	operators         = []string{"=~", "!~", "!=", "==", ">=", "<="}
	variablePrefix    = regexp.MustCompile(`^\$(?:\{\w+(?::\w+)?\}|\w+)`)
	plainLabelValue   = regexp.MustCompile(`^[A-Za-z0-9_.:/-]+$`)
	labelListKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
	aggregators       = map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true}
	keywords          = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "inf": true, "nan": true, "atan2": true}
)

func identStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func identPart(c byte) bool {
	return identStart(c) || c >= '0' && c <= '9'
}

// lex splits a PromQL expression into tokens. It knows enough of PromQL to
// find selectors; promtool checks the syntax.
func lex(q string) ([]token, error) {
	var toks []token
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(q) && q[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(q) && q[j] != c {
				if q[j] == '\\' && c != '`' {
					j++
				}
				j++
			}
			if j >= len(q) {
				return nil, fmt.Errorf("unterminated string at offset %d", i)
			}
			raw := q[i+1 : j]
			s := raw
			if c != '`' {
				var err error
				s, err = strconv.Unquote(`"` + strings.ReplaceAll(raw, `"`, `\"`) + `"`)
				if err != nil {
					return nil, fmt.Errorf("string %q: %w", raw, err)
				}
			}
			toks = append(toks, token{kind: tokString, text: s})
			i = j + 1
		case c == '$':
			m := variablePrefix.FindString(q[i:])
			if m == "" {
				return nil, fmt.Errorf("stray $ at offset %d", i)
			}
			toks = append(toks, token{kind: tokVariable, text: m})
			i += len(m)
		case identStart(c):
			j := i
			for j < len(q) && identPart(q[j]) {
				j++
			}
			toks = append(toks, token{kind: tokIdent, text: q[i:j]})
			i = j
		case c >= '0' && c <= '9' || c == '.':
			j := i
			for j < len(q) && (identPart(q[j]) || q[j] == '.') {
				j++
				if j < len(q) && (q[j] == '+' || q[j] == '-') && (q[j-1] == 'e' || q[j-1] == 'E') && !strings.ContainsAny(q[i:j], "xX") {
					j++
				}
			}
			toks = append(toks, token{kind: tokNumber, text: q[i:j]})
			i = j
		default:
			op := string(c)
			for _, o := range operators {
				if strings.HasPrefix(q[i:], o) {
					op = o
					break
				}
			}
			toks = append(toks, token{kind: tokPunct, text: op})
			i += len(op)
		}
	}
	return toks, nil
}

type matcher struct {
	label string
	op    string
	value string
}

type selector struct {
	metric   string
	matchers []matcher
}

func isPunct(toks []token, i int, text string) bool {
	return i < len(toks) && toks[i].kind == tokPunct && toks[i].text == text
}

// closing returns the index of the token closing the bracket opened at i.
func closing(toks []token, i int) (int, error) {
	open := toks[i].text
	shut := map[string]string{"(": ")", "[": "]", "{": "}"}[open]
	depth := 0
	for j := i; j < len(toks); j++ {
		if toks[j].kind != tokPunct {
			continue
		}
		switch toks[j].text {
		case open:
			depth++
		case shut:
			depth--
			if depth == 0 {
				return j, nil
			}
		}
	}
	return 0, fmt.Errorf("unbalanced %s", open)
}

// parseMatchers reads the label matchers between the braces at toks[i] and
// toks[end].
func parseMatchers(toks []token, i, end int) ([]matcher, error) {
	var out []matcher
	for j := i + 1; j < end; {
		if j+2 >= len(toks) || toks[j].kind != tokIdent || toks[j+1].kind != tokPunct {
			return nil, fmt.Errorf("malformed label matcher near %q", toks[j].text)
		}
		m := matcher{
			label: toks[j].text,
			op:    toks[j+1].text,
		}
		switch m.op {
		case "=", "!=", "=~", "!~":
		default:
			return nil, fmt.Errorf("label %s: unknown matcher operator %q", m.label, m.op)
		}
		switch v := toks[j+2]; v.kind {
		case tokString:
			m.value = v.text
		default:
			return nil, fmt.Errorf("label %s: value %q is not a string", m.label, v.text)
		}
		out = append(out, m)
		j += 3
		if isPunct(toks, j, ",") {
			j++
		}
	}
	return out, nil
}

// selectors returns every vector selector in a PromQL expression.
func selectors(q string) ([]selector, error) {
	toks, err := lex(q)
	if err != nil {
		return nil, err
	}
	var out []selector
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch {
		case t.kind == tokVariable:
			return nil, fmt.Errorf("variable %s outside a label value or range", t.text)
		case isPunct(toks, i, "["):
			// A range or subquery: durations, and variables such as
			// $__rate_interval.
			j, err := closing(toks, i)
			if err != nil {
				return nil, err
			}
			i = j
		case isPunct(toks, i, "{"):
			return nil, fmt.Errorf("selector without a metric name at token %d", i)
		case t.kind != tokIdent:
		case labelListKeywords[t.text]:
			if isPunct(toks, i+1, "(") {
				j, err := closing(toks, i+1)
				if err != nil {
					return nil, err
				}
				i = j
			}
		case t.text == "offset":
			i++
			if isPunct(toks, i, "-") {
				i++
			}
		case keywords[t.text]:
		case isPunct(toks, i+1, "("):
			// A function or an aggregation.
		case aggregators[t.text] && i+1 < len(toks) && labelListKeywords[toks[i+1].text]:
		default:
			sel := selector{metric: t.text}
			if isPunct(toks, i+1, "{") {
				end, err := closing(toks, i+1)
				if err != nil {
					return nil, err
				}
				sel.matchers, err = parseMatchers(toks, i+1, end)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", t.text, err)
				}
				i = end
			}
			out = append(out, sel)
		}
	}
	return out, nil
}

// checkQuery holds one PromQL expression to the contract: every metric is
// in contractSpecs or recorded by rules.yml, every label matcher names a
// label of that metric, every value of a closed label is in its set, every
// wsbroker_ selector selects job="wsbroker", and Grafana variables appear
// only in regular-expression matchers.
func checkQuery(q string, recorded map[string]bool) []error {
	sels, err := selectors(q)
	if err != nil {
		return []error{err}
	}
	metrics := contractMetrics()
	var errs []error
	for _, s := range sels {
		labels, ok := metrics[s.metric]
		if recorded[s.metric] {
			labels, ok = recordedLabels, true
		}
		if !ok {
			errs = append(errs, fmt.Errorf("metric %s is neither in DESIGN.md section 6 nor recorded in %s", s.metric, RulesFile))
			continue
		}
		hasJob := false
		for _, m := range s.matchers {
			values, known := labels[m.label]
			if !known {
				errs = append(errs, fmt.Errorf("%s has no label %q", s.metric, m.label))
				continue
			}
			if m.label == "job" && m.op == "=" && m.value == "wsbroker" {
				hasJob = true
			}
			value := m.value
			if strings.Contains(value, "$") {
				if m.op != "=~" && m.op != "!~" {
					errs = append(errs, fmt.Errorf("%s{%s%s%q}: a dashboard variable needs =~ (Substitute makes it .+)", s.metric, m.label, m.op, m.value))
					continue
				}
				value = Substitute(value)
			}
			if values == nil {
				continue
			}
			if err := checkLabelValue(m, value, values); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s.metric, err))
			}
		}
		if strings.HasPrefix(s.metric, "wsbroker_") && !hasJob {
			errs = append(errs, fmt.Errorf("%s does not select job=\"wsbroker\"", s.metric))
		}
	}
	return errs
}

// checkLabelValue checks a matcher's value against the closed set of its
// label. A regular expression must be .+, .* or plain alternatives a|b|c.
func checkLabelValue(m matcher, value string, allowed []string) error {
	candidates := []string{value}
	if m.op == "=~" || m.op == "!~" {
		if value == ".+" || value == ".*" {
			return nil
		}
		candidates = strings.Split(value, "|")
	}
	for _, c := range candidates {
		if !plainLabelValue.MatchString(c) {
			return fmt.Errorf("label %s: %q is not a plain value that can be checked against the contract", m.label, c)
		}
		found := false
		for _, a := range allowed {
			if c == a {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("label %s: value %q is not one of %s", m.label, c, strings.Join(allowed, ", "))
		}
	}
	return nil
}

func TestSelectors(t *testing.T) {
	tests := []struct {
		name  string
		query string
		want  string
	}{
		{
			name:  "aggregation with by and a range variable",
			query: `sum by (reason) (rate(wsbroker_upgrades_total{job="wsbroker",result="rejected"}[$__rate_interval]))`,
			want:  `wsbroker_upgrades_total{job="wsbroker",result="rejected"}`,
		},
		{
			name:  "histogram quantile",
			query: `histogram_quantile(0.99, sum by (le, result) (rate(wsbroker_upgrade_duration_seconds_bucket{job="wsbroker"}[5m])))`,
			want:  `wsbroker_upgrade_duration_seconds_bucket{job="wsbroker"}`,
		},
		{
			name:  "vector matching, offset, scalar and numbers",
			query: "a:b:c / on (job) group_left () d offset 1h > 1.5e-3 * scalar(e{reason=~'x|y'})",
			want:  `a:b:c d e{reason=~"x|y"}`,
		},
		{
			name:  "aggregation modifier after the body",
			query: `sum(rate(x[5m])) without (instance) or absent(up{job="wsbroker"})`,
			want:  `x up{job="wsbroker"}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sels, err := selectors(tt.query)
			if err != nil {
				t.Fatalf("selectors(%q): %v",
					tt.query, err)
			}
			var got []string
			for _, s := range sels {
				var ms []string
				for _, m := range s.matchers {
					ms = append(ms, fmt.Sprintf("%s%s%q", m.label, m.op, m.value))
				}
				if len(ms) == 0 {
					got = append(got, s.metric)
					continue
				}
				got = append(got, s.metric+"{"+strings.Join(ms, ",")+"}")
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Fatalf("selectors(%q) = %s, want %s",
					tt.query, g, tt.want)
			}
		})
	}
}

// TestCheckQuery shows that the contract check fails on the mistakes it is
// there to catch, and passes the forms the dashboards use.
func TestCheckQuery(t *testing.T) {
	recorded := map[string]bool{"wsbroker:auth_failure_ratio:rate5m": true}
	tests := []struct {
		name    string
		query   string
		wantErr string
	}{
		{
			name:  "contract metric with closed label values",
			query: `sum(rate(wsbroker_upgrades_total{job="wsbroker",result="rejected",reason=~"missing_token|source_disabled"}[5m]))`,
		},
		{
			name:  "dashboard variable in a regex matcher",
			query: `rate(wsbroker_upgrades_total{job="wsbroker",reason=~"$reason",instance=~"${instance}"}[$__rate_interval])`,
		},
		{
			name:  "recording rule",
			query: `wsbroker:auth_failure_ratio:rate5m{job="wsbroker"} > 0.144`,
		},
		{
			name:  "histogram bucket with le",
			query: `wsbroker_upgrade_duration_seconds_bucket{job="wsbroker",le="0.1"}`,
		},
		{
			name:    "misspelt metric",
			query:   `rate(wsbroker_upgrade_total{job="wsbroker"}[5m])`,
			wantErr: "metric wsbroker_upgrade_total is neither",
		},
		{
			name:    "unrecorded rule name",
			query:   `wsbroker:auth_failure_ratio:rate7m`,
			wantErr: "metric wsbroker:auth_failure_ratio:rate7m is neither",
		},
		{
			name:    "misspelt reason",
			query:   `wsbroker_upgrades_total{job="wsbroker",reason="missing_tokens"}`,
			wantErr: `value "missing_tokens" is not one of`,
		},
		{
			name:    "misspelt reason in an alternative",
			query:   `wsbroker_upgrades_total{job="wsbroker",reason=~"missing_token|source_disable"}`,
			wantErr: `value "source_disable" is not one of`,
		},
		{
			name:    "close reason used as an upgrade reason",
			query:   `wsbroker_upgrades_total{job="wsbroker",reason="slow_consumer"}`,
			wantErr: `value "slow_consumer" is not one of`,
		},
		{
			name:    "label the metric does not have",
			query:   `wsbroker_connections{job="wsbroker",reason="x"}`,
			wantErr: `has no label "reason"`,
		},
		{
			name:    "le on a histogram's count",
			query:   `wsbroker_upgrade_duration_seconds_count{job="wsbroker",le="1"}`,
			wantErr: `has no label "le"`,
		},
		{
			name:    "dashboard variable with an equality matcher",
			query:   `wsbroker_upgrades_total{job="wsbroker",reason="$reason"}`,
			wantErr: "needs =~",
		},
		{
			name:    "regex that cannot be checked",
			query:   `wsbroker_upgrades_total{job="wsbroker",reason=~"missing_.*"}`,
			wantErr: "is not a plain value",
		},
		{
			name:    "no job selector",
			query:   `rate(wsbroker_events_total[5m])`,
			wantErr: `does not select job="wsbroker"`,
		},
		{
			name:    "variable outside a matcher",
			query:   `topk($n, wsbroker_connections{job="wsbroker"})`,
			wantErr: "variable $n outside",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := checkQuery(tt.query, recorded)
			if tt.wantErr == "" {
				if len(errs) != 0 {
					t.Fatalf("checkQuery(%q) = %v, want no error",
						tt.query, errs)
				}
				return
			}
			for _, err := range errs {
				if strings.Contains(err.Error(), tt.wantErr) {
					return
				}
			}
			t.Fatalf("checkQuery(%q) = %v, want an error containing %q",
				tt.query, errs, tt.wantErr)
		})
	}
}
