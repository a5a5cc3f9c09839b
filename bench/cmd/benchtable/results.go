package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// results holds one value per variant, metric and round.
type results map[string]map[string]map[int]float64

func (r results) add(variant, metric string, round int, v float64) {
	if r[variant] == nil {
		r[variant] = map[string]map[int]float64{}
	}
	if r[variant][metric] == nil {
		r[variant][metric] = map[int]float64{}
	}
	r[variant][metric][round] = v
}

// summary is a median with its min–max.
type summary struct {
	med, lo, hi float64
	n           int
}

func summarize(vs []float64) summary {
	if len(vs) == 0 {
		return summary{med: math.NaN(), lo: math.NaN(), hi: math.NaN()}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{med: med, lo: s[0], hi: s[len(s)-1], n: len(s)}
}

func (r results) values(variant, metric string) []float64 {
	var out []float64
	for _, v := range r[variant][metric] {
		out = append(out, v)
	}
	return out
}

// ratios divides a's value by b's round by round (the two ran
// back to back in each round).
func (r results) ratios(a, b, metric string) []float64 {
	var out []float64
	for round, va := range r[a][metric] {
		if vb, ok := r[b][metric][round]; ok && vb != 0 {
			out = append(out, va/vb)
		}
	}
	return out
}

// crossRatios divides variant v's metric ma by its metric mb round by round.
func (r results) crossRatios(v, ma, mb string) []float64 {
	var out []float64
	for round, va := range r[v][ma] {
		if vb, ok := r[v][mb][round]; ok && vb != 0 {
			out = append(out, va/vb)
		}
	}
	return out
}

func (s summary) format(prec int) string {
	if s.n == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", prec, s.med, prec, s.lo, prec, s.hi)
}

type row struct {
	label, metric string
	prec          int
	goal          string
}

var rows = []row{
	{"accepted HS256 handshakes/s", "accept-hs256", 0, "≥ 2× baseline"},
	{"accepted RS256 handshakes/s", "accept-rs256", 0, ""},
	{"rejected missing_token /s", "reject-missing", 0, "≥ accepted"},
	{"rejected bad_signature /s", "reject-badsig", 0, "≥ accepted"},
	{"server CPU µs per accepted HS256", "cpu-accept-hs256", 1, "≤ baseline/2"},
	{"server CPU µs per accepted RS256", "cpu-accept-rs256", 1, ""},
	{"server CPU µs per missing_token", "cpu-reject-missing", 1, "≤ accepted"},
	{"server CPU µs per bad_signature", "cpu-reject-badsig", 1, "≤ accepted"},
	{"RSS per idle conn (B)", "rss_per_conn", 0, "≤ 2048 (4096 max), ≤ baseline/5"},
	{"Go heap per idle conn (B)", "heap_per_conn", 0, ""},
	{"RSS per idle conn, marginal from n/2 to n (B)", "rss_marginal_per_conn", 0, ""},
	{"Go heap per idle conn, marginal from n/2 to n (B)", "heap_marginal_per_conn", 0, ""},
	{"goroutines per idle conn", "goroutines_per_conn", 2, ""},
	{"fan-out deliveries/s", "fanout_deliveries_per_sec", 0, ""},
	{"fan-out p50 at the subscriber's socket (ms)", "fanout_socket_p50_ms", 1, ""},
	{"fan-out p99 at the subscriber's socket (ms)", "fanout_socket_p99_ms", 1, "≤ 100 ms"},
	{"fan-out p50 read by the client (ms)", "fanout_p50_ms", 1, ""},
	{"fan-out p99 read by the client (ms)", "fanout_p99_ms", 1, "(client scheduling included)"},
}

func (r results) print(w io.Writer, events bool) {
	fmt.Fprintln(w, "Medians over rounds, (min–max); ratios are per-round wsbroker/baseline, median (min–max).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| metric | baseline | wsbroker | ratio wsbroker/baseline | goal |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, x := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", x.label,
			summarize(r.values("baseline", x.metric)).format(x.prec),
			summarize(r.values("wsbroker", x.metric)).format(x.prec),
			summarize(r.ratios("wsbroker", "baseline", x.metric)).format(2), x.goal)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Rejected vs accepted (same server, same round): rejected/s ÷ accepted HS256/s")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| server | missing_token ÷ accepted | bad_signature ÷ accepted |")
	fmt.Fprintln(w, "|---|---|---|")
	for _, v := range []string{"baseline", "wsbroker"} {
		fmt.Fprintf(w, "| %s | %s | %s |\n", v,
			summarize(r.crossRatios(v, "reject-missing", "accept-hs256")).format(2),
			summarize(r.crossRatios(v, "reject-badsig", "accept-hs256")).format(2))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Observability tax: wsbroker with OTLP export (--trace-success-ratio 0.01, failures always exported) vs OTEL_TRACES_EXPORTER=none; tax = 1 − traced/untraced for rates, traced/untraced − 1 for server CPU per op (cpu- rows, µs) (goal ≤ 15%)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| case | untraced /s | traced /s | traced/untraced | tax |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	cases := slices.Clone(handshakeCases)
	for _, c := range handshakeCases {
		cases = append(cases, "cpu-"+c)
	}
	for _, c := range cases {
		rt := summarize(r.ratios("wsbroker-traced", "wsbroker", c))
		tax := "n/a"
		if strings.HasPrefix(c, "cpu-") {
			// CPU per op: the tax is the extra CPU, traced/untraced − 1.
			if rt.n > 0 {
				tax = fmt.Sprintf("%.0f%% (%.0f%%–%.0f%%)", 100*(rt.med-1), 100*(rt.lo-1), 100*(rt.hi-1))
			}
		} else if rt.n > 0 {
			tax = fmt.Sprintf("%.0f%% (%.0f%%–%.0f%%)", 100*(1-rt.med), 100*(1-rt.hi), 100*(1-rt.lo))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", c,
			summarize(r.values("wsbroker", c)).format(0),
			summarize(r.values("wsbroker-traced", c)).format(0), rt.format(2), tax)
	}
	if !events {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Event log cost: wsbroker (events on, embedded JetStream) vs wsbroker --events=false")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| metric | events=false | events on | on/off | noevents/baseline |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, x := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", x.label,
			summarize(r.values("wsbroker-noevents", x.metric)).format(x.prec),
			summarize(r.values("wsbroker", x.metric)).format(x.prec),
			summarize(r.ratios("wsbroker", "wsbroker-noevents", x.metric)).format(2),
			summarize(r.ratios("wsbroker-noevents", "baseline", x.metric)).format(2))
	}
}
