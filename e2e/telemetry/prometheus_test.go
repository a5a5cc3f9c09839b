package telemetrye2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/dashboards"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/tracing/jaegertest"
)

// Binaries of Debian's prometheus package.
const (
	prometheusBin = "/usr/bin/prometheus"
	promtoolBin   = "/usr/bin/promtool"
)

// e2eIssuer is the --jwt-issuer of the Prometheus test's broker, so that
// the loadgen's wrong_issuer kind is refused.
const e2eIssuer = "https://issuer.e2e.example"

// loadgenReasons are the reasons `wsbroker loadgen` causes against a broker
// with the default sources and an issuer.
var loadgenReasons = []string{
	"missing_token",
	"source_disabled",
	"malformed_authorization",
	"malformed_subprotocol",
	"protocol_not_offered",
	"ambiguous_token",
	"malformed_token",
	"alg_not_allowed",
	"bad_signature",
	"expired",
	"not_yet_valid",
	"wrong_issuer",
	"missing_claim",
}

// prom is a running Prometheus.
type prom struct {
	*process
	url    string
	client *promClient
}

// startPrometheus runs /usr/bin/prometheus scraping the broker's admin
// address every second as job wsbroker, with the shipped rules evaluated
// every second and exemplar storage on.
func startPrometheus(t *testing.T, target string) *prom {
	t.Helper()
	for _, bin := range []string{prometheusBin, promtoolBin} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s: %v (install Debian's prometheus package)",
				bin, err)
		}
	}
	dir := t.TempDir()
	rules, err := fs.ReadFile(dashboards.FS(), dashboards.RulesFile)
	if err != nil {
		t.Fatalf("read the shipped rules: %v",
			err)
	}
	rulesPath := filepath.Join(dir, "rules.yml")
	if err := os.WriteFile(rulesPath, rules, 0o600); err != nil {
		t.Fatalf("write rules: %v",
			err)
	}
	// The shipped rules are what the demo loads; the scrape and evaluation
	// intervals are shortened so that rate() has two samples within seconds.
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: wsbroker
    metrics_path: /metrics
    static_configs:
      - targets: [%q]
`, rulesPath, target)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatalf("write prometheus.yml: %v",
			err)
	}
	if out, err := execOutput(promtoolBin, "check", "config", cfgPath); err != nil {
		t.Fatalf("promtool check config: %v\n%s",
			err, out)
	}
	port := testkit.FreePort(t)
	p := startProcess(t, "prometheus", prometheusBin, []string{
		"--config.file=" + cfgPath,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(port),
		"--enable-feature=exemplar-storage",
	}, nil)
	pr := &prom{process: p, url: "http://127.0.0.1:" + strconv.Itoa(port)}
	pr.client = &promClient{base: pr.url, http: newHTTPClient(t)}
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if p.exited() {
			return fmt.Errorf("prometheus exited (%v): %s", p.err, tail(p.stderr.String(), 2000))
		}
		_, err := httpGet(t.Context(), pr.client.http, pr.url+"/-/ready", nil)
		return err
	})
	return pr
}

// TestPrometheus runs the broker (tracing to Jaeger, every trace kept) and
// `wsbroker loadgen` against it, scraped by a real Prometheus with the
// shipped rules, then checks what an operator would look at: one series per
// rejection reason, exemplars whose trace ids open a trace in Jaeger, and
// every dashboard panel and rule expression returning data.
func TestPrometheus(t *testing.T) {
	t.Parallel()
	j := jaegertest.Start(t)
	b := startBroker(t, []string{"--trace-success-ratio", "1", "--jwt-issuer", e2eIssuer}, otelEnv(j.OTLPHTTPEndpoint()))
	pr := startPrometheus(t, b.admin)
	start := time.Now()
	lg := startProcess(t, "wsbroker loadgen", wsbrokerBin(t), []string{
		"loadgen",
		"--url", "ws://" + b.ws + "/ws",
		"--jwt-hmac-secret-file", writeSecret(t),
		"--jwt-issuer", e2eIssuer,
		"--good", "4",
		"--bad-per-reason", "1",
		"--interval", "250ms",
		"--publish-interval", "200ms",
		"--json",
	}, nil)

	t.Run("upgrades per reason", func(t *testing.T) {
		testkit.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
			res, err := pr.client.query(t.Context(), `sum by (result, reason) (wsbroker_upgrades_total{job="wsbroker"}) > 0`)
			if err != nil {
				return err
			}
			got := map[string]bool{}
			for _, s := range res {
				got[s.Metric["result"]+"/"+s.Metric["reason"]] = true
			}
			want := []string{"accepted/none"}
			for _, r := range loadgenReasons {
				want = append(want, "rejected/"+r)
			}
			var missing []string
			for _, w := range want {
				if !got[w] {
					missing = append(missing, w)
				}
			}
			if len(missing) > 0 {
				return fmt.Errorf("no wsbroker_upgrades_total series for %v (have %v)", missing, keys(got))
			}
			return nil
		})
	})

	t.Run("exemplars open traces in Jaeger", func(t *testing.T) {
		var last []string
		testkit.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
			ids, err := pr.client.exemplarTraceIDs(t.Context(), "wsbroker_upgrade_duration_seconds_bucket", start.Add(-time.Minute), time.Now().Add(time.Minute))
			if err != nil {
				return err
			}
			if len(ids) == 0 {
				return errors.New("no exemplar on wsbroker_upgrade_duration_seconds_bucket")
			}
			last = ids
			for _, id := range ids {
				if _, err := j.Trace(t.Context(), id); err == nil {
					return nil
				}
			}
			return fmt.Errorf("none of the %d exemplar trace ids is in Jaeger (e.g. %s)", len(ids), ids[0])
		})
		t.Logf("%d exemplar trace ids, at least one found in Jaeger",
			len(last))
	})

	t.Run("dashboards and rules return data", func(t *testing.T) {
		checkDashboards(t, pr.client)
	})

	if err := lg.stop(); err != nil {
		t.Fatalf("stop loadgen: %v",
			err)
	}
	t.Run("loadgen summary", func(t *testing.T) {
		checkLoadgenSummary(t, lg)
	})
}

// checkLoadgenSummary asserts that loadgen ran good clients and that every
// bad kind got its reason and nothing else.
func checkLoadgenSummary(t *testing.T, lg *process) {
	t.Helper()
	var sum struct {
		Good struct {
			Connects  uint64            `json:"connects"`
			Published uint64            `json:"published"`
			Received  uint64            `json:"received"`
			Results   map[string]uint64 `json:"results"`
		} `json:"good"`
		Bad []struct {
			Kind     string            `json:"kind"`
			Want     string            `json:"want"`
			Attempts uint64            `json:"attempts"`
			Results  map[string]uint64 `json:"results"`
		} `json:"bad"`
	}
	out := lg.stdout.String()
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("loadgen summary %q: %v\nstderr: %s",
			out, err, lg.stderr.String())
	}
	if sum.Good.Connects < 4 || sum.Good.Published == 0 || sum.Good.Received == 0 {
		t.Errorf("good clients: %+v, want 4 connects, publishes and deliveries",
			sum.Good)
	}
	if len(sum.Bad) != len(loadgenReasons) {
		t.Errorf("%d bad kinds, want %d",
			len(sum.Bad), len(loadgenReasons))
	}
	for _, k := range sum.Bad {
		if k.Attempts == 0 {
			t.Errorf("kind %s: no attempt",
				k.Kind)
		}
		for res, n := range k.Results {
			if !strings.HasSuffix(res, " "+k.Want) {
				t.Errorf("kind %s: %d × %q, want only %s",
					k.Kind, n, res, k.Want)
			}
		}
	}
}

// selectorRE matches a name, its matchers, and an opening parenthesis that
// makes it a function call.
var selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?`)

// checkDashboards evaluates every dashboard panel, template variable and
// rule expression of package dashboards (Grafana variables substituted) and
// fails on any that returns no data, with one exception: an alert's
// condition is legitimately empty on healthy traffic (and a `for:` may keep
// it from firing), so an alert whose expression is empty passes when each of
// its series selectors returns data on its own: the expression parses (the
// query succeeded) and reads only series that exist.
func checkDashboards(t *testing.T, c *promClient) {
	t.Helper()
	exprs, err := dashboards.Expressions()
	if err != nil {
		t.Fatalf("dashboards.Expressions: %v",
			err)
	}
	if len(exprs) == 0 {
		t.Fatalf("dashboards.Expressions returned nothing")
	}
	var bySelectors []string
	testkit.CheckFor(t, 40*time.Second, 500*time.Millisecond, func() error {
		var failed []string
		bySelectors = bySelectors[:0]
		for _, e := range exprs {
			whole, err := evalExpr(t.Context(), c, e)
			if err != nil {
				failed = append(failed, fmt.Sprintf("%s %s: %v", e.Source, e.Title, err))
			} else if !whole {
				bySelectors = append(bySelectors, e.Title)
			}
		}
		if len(failed) > 0 {
			return fmt.Errorf("%d of %d expressions fail:\n  %s", len(failed), len(exprs), strings.Join(failed, "\n  "))
		}
		return nil
	})
	t.Logf("%d dashboard and rule expressions checked; empty conditions whose selectors all return data: %v",
		len(exprs), bySelectors)

	// The check itself catches a panel on a series that does not exist and
	// an alert reading one.
	for _, e := range []dashboards.Expr{
		{
			Source: "negative control",
			Title:  "panel Missing",
			Query:  `sum(rate(wsbroker_no_such_metric_total{job="wsbroker"}[$__rate_interval]))`,
		},
		{
			Source: "negative control",
			Title:  "alert Missing",
			Query:  `wsbroker_connections{job="wsbroker"} > 1e9 or wsbroker_no_such_metric{job="wsbroker"} > 0`,
		},
	} {
		if _, err := evalExpr(t.Context(), c, e); err == nil {
			t.Errorf("%s %q passes the check",
				e.Title, e.Query)
		}
	}
}

// evalExpr evaluates one expression; whole reports whether the expression
// itself returned data (false: an empty alert condition passed on its
// selectors).
func evalExpr(ctx context.Context, c *promClient, e dashboards.Expr) (whole bool, err error) {
	q := dashboards.Substitute(e.Query)
	res, err := c.query(ctx, q)
	if err != nil {
		return false, err
	}
	if len(res) > 0 {
		return true, nil
	}
	if !strings.HasPrefix(e.Title, "alert ") {
		return false, fmt.Errorf("no data for %s", q)
	}
	sels := selectors(q)
	if len(sels) == 0 {
		return false, fmt.Errorf("alert condition empty and no series selector found in %s", q)
	}
	for _, s := range sels {
		res, err := c.query(ctx, s)
		if err != nil {
			return false, fmt.Errorf("selector %s: %w", s, err)
		}
		if len(res) == 0 {
			return false, fmt.Errorf("alert reads %s, which has no data", s)
		}
	}
	return false, nil
}

// selectors returns the series selectors of a PromQL expression: metric
// names (wsbroker_*, wsbroker:* and up) with their matchers, not function
// calls.
func selectors(q string) []string {
	var out []string
	seen := map[string]bool{}
	for _, m := range selectorRE.FindAllStringSubmatch(q, -1) {
		name, matchers, call := m[1], m[2], m[3]
		if call != "" || !(strings.HasPrefix(name, "wsbroker") || name == "up") {
			continue
		}
		s := name + matchers
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func TestSelectors(t *testing.T) {
	tests := []struct {
		name string
		q    string
		want []string
	}{
		{
			name: "functions and aggregation labels are not selectors",
			q:    `sum by (job) (increase(wsbroker_keys_refresh_total{job="wsbroker",result="error"}[15m])) > 0`,
			want: []string{`wsbroker_keys_refresh_total{job="wsbroker",result="error"}`},
		},
		{
			name: "recorded series and absent",
			q:    `wsbroker:auth_failure_ratio:rate1h > scalar(wsbroker:auth_failure_objective) or absent(up{job="wsbroker"})`,
			want: []string{`wsbroker:auth_failure_ratio:rate1h`, `wsbroker:auth_failure_objective`, `up{job="wsbroker"}`},
		},
		{
			name: "duplicates once",
			q:    `wsbroker:x > 1 and wsbroker:x < 3`,
			want: []string{`wsbroker:x`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := selectors(tt.q)
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("selectors(%q) = %q, want %q",
					tt.q, got, tt.want)
			}
		})
	}
}

// promClient queries Prometheus's HTTP API.
type promClient struct {
	base string
	http *http.Client
}

func (c *promClient) getJSON(ctx context.Context, u string, v any) error {
	body, err := httpGet(ctx, c.http, u, nil)
	if err != nil {
		// Prometheus answers a bad query with 400 and a JSON error.
		if json.Unmarshal(body, v) == nil {
			return nil
		}
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode %s: %w", u, err)
	}
	return nil
}

// execOutput runs a command to completion and returns its output.
func execOutput(name string, args ...string) ([]byte, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return out, nil
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

// query runs an instant query and returns the vector (a scalar result
// counts as one sample).
func (c *promClient) query(ctx context.Context, q string) ([]sample, error) {
	var resp struct {
		Status    string          `json:"status"`
		Error     string          `json:"error"`
		ErrorType string          `json:"errorType"`
		Data      json.RawMessage `json:"data"`
	}
	u := c.base + "/api/v1/query?" + url.Values{"query": {q}}.Encode()
	if err := c.getJSON(ctx, u, &resp); err != nil {
		return nil, fmt.Errorf("query %s: %w", q, err)
	}
	if resp.Status != "success" {
		return nil, fmt.Errorf("query %s: %s: %s", q, resp.ErrorType, resp.Error)
	}
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(resp.Data, &data); err != nil {
		return nil, fmt.Errorf("query %s: decode: %w", q, err)
	}
	switch data.ResultType {
	case "vector":
		var v []sample
		if err := json.Unmarshal(data.Result, &v); err != nil {
			return nil, fmt.Errorf("query %s: decode vector: %w", q, err)
		}
		return v, nil
	case "scalar":
		var v []any
		if err := json.Unmarshal(data.Result, &v); err != nil {
			return nil, fmt.Errorf("query %s: decode scalar: %w", q, err)
		}
		return []sample{{Value: v}}, nil
	}
	return nil, fmt.Errorf("query %s: result type %s", q, data.ResultType)
}

// exemplarTraceIDs returns the trace_id labels of the exemplars of q
// between start and end.
func (c *promClient) exemplarTraceIDs(ctx context.Context, q string, start, end time.Time) ([]string, error) {
	var resp struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   []struct {
			SeriesLabels map[string]string `json:"seriesLabels"`
			Exemplars    []struct {
				Labels map[string]string `json:"labels"`
			} `json:"exemplars"`
		} `json:"data"`
	}
	v := url.Values{
		"query": {q},
		"start": {strconv.FormatInt(start.Unix(), 10)},
		"end":   {strconv.FormatInt(end.Unix(), 10)},
	}
	if err := c.getJSON(ctx, c.base+"/api/v1/query_exemplars?"+v.Encode(), &resp); err != nil {
		return nil, fmt.Errorf("exemplars of %s: %w", q, err)
	}
	if resp.Status != "success" {
		return nil, fmt.Errorf("exemplars of %s: %s", q, resp.Error)
	}
	var ids []string
	for _, s := range resp.Data {
		for _, e := range s.Exemplars {
			if id := e.Labels["trace_id"]; id != "" {
				ids = append(ids, id)
			}
		}
	}
	return ids, nil
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
