package dashboards

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const (
	runbooksFile = "../docs/runbooks.md"
	runbookBase  = "https://github.com/wsbroker/wsbroker/blob/main/docs/runbooks.md#"
)

// lookTool returns the path of a command-line tool the tests run, failing
// the test when it is missing: CI installs it, so skipping would hide a
// broken CI image.
func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found (apt-get install -y %s): %v",
			name, pkg, err)
	}
	return p
}

func TestPromtool(t *testing.T) {
	promtool := lookTool(t, "promtool", "prometheus")
	tests := []struct {
		name string
		args []string
	}{
		{
			name: "rules are valid",
			args: []string{"check", "rules", "rules.yml"},
		},
		{
			name: "rule unit tests pass",
			args: []string{"test", "rules", "rules_test.yml"},
		},
		{
			name: "prometheus.yml is valid",
			args: []string{"check", "config", "prometheus.yml"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(promtool, tt.args...)
			cmd.Dir = "prometheus"
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("promtool %s: %v\n%s",
					strings.Join(tt.args, " "), err, out)
			}
		})
	}
}

// TestDashboardQueriesParse has promtool parse every dashboard query, after
// Substitute, by checking a rule file made of them.
func TestDashboardQueriesParse(t *testing.T) {
	promtool := lookTool(t, "promtool", "prometheus")
	exprs, err := Expressions()
	if err != nil {
		t.Fatalf("Expressions: %v", err)
	}
	type recordingRule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []recordingRule
	for i, e := range exprs {
		if e.Source == RulesFile {
			continue // TestPromtool checks rules.yml itself.
		}
		q := Substitute(e.Query)
		if strings.Contains(q, "$") {
			t.Errorf("%s: %s: variable left after Substitute: %s", e.Source, e.Title, q)
		}
		rules = append(rules, recordingRule{
			Record: fmt.Sprintf("dashboard:query_%d:check", i),
			Expr:   q,
		})
	}
	if len(rules) == 0 {
		t.Fatalf("no dashboard queries found")
	}
	b, err := yaml.Marshal(map[string]any{
		"groups": []any{map[string]any{
			"name":  "dashboard-queries",
			"rules": rules,
		}},
	})
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	file := filepath.Join(t.TempDir(), "dashboard-queries.yml")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatalf("write: %v", err)
	}
	out, err := exec.Command(promtool, "check", "rules", file).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard queries: %v\n%s\n%s",
			err, out, b)
	}
}

func TestAlertmanagerConfig(t *testing.T) {
	amtool, err := exec.LookPath("amtool")
	if err != nil {
		t.Skip("amtool not installed (apt-get install -y prometheus-alertmanager)")
	}
	out, err := exec.Command(amtool, "check-config", filepath.Join(AlertmanagerDir, "alertmanager.yml")).CombinedOutput()
	if err != nil {
		t.Fatalf("amtool check-config: %v\n%s",
			err, out)
	}
}

// TestExpressionsFollowContract holds every expression of every panel,
// variable and rule to DESIGN.md: a misspelt metric, label or reason fails.
func TestExpressionsFollowContract(t *testing.T) {
	exprs, err := Expressions()
	if err != nil {
		t.Fatalf("Expressions: %v", err)
	}
	recorded := recordedNames(t)
	perSource := make(map[string]int)
	for _, e := range exprs {
		perSource[e.Source]++
		if strings.TrimSpace(e.Query) == "" {
			t.Errorf("%s: %s: empty query", e.Source, e.Title)
			continue
		}
		for _, err := range checkQuery(e.Query, recorded) {
			t.Errorf("%s: %s: %v", e.Source, e.Title, err)
		}
	}
	names, err := fs.Glob(FS(), DashboardsDir+"/*.json")
	if err != nil {
		t.Fatalf("glob: %v", err)
	}
	for _, src := range append(names, RulesFile) {
		if perSource[src] == 0 {
			t.Errorf("Expressions lists no query from %s", src)
		}
	}
}

func TestSubstitute(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{
			in:   `rate(x{reason=~"$reason"}[$__rate_interval])`,
			want: `rate(x{reason=~".+"}[1m])`,
		},
		{
			in:   `x{instance=~"${instance}",reason=~"${reason:regex}"}`,
			want: `x{instance=~".+",reason=~".+"}`,
		},
		{
			in:   `increase(x[$__range]) / $__interval`,
			want: `increase(x[1h]) / 1m`,
		},
		{
			in:   `x{a=~"$unknown"}`,
			want: `x{a=~"$unknown"}`,
		},
	}
	for _, tt := range tests {
		if got := Substitute(tt.in); got != tt.want {
			t.Errorf("Substitute(%q) = %q, want %q",
				tt.in, got, tt.want)
		}
	}
}

type datasourcesFile struct {
	Datasources []struct {
		Name     string         `yaml:"name"`
		UID      string         `yaml:"uid"`
		Type     string         `yaml:"type"`
		URL      string         `yaml:"url"`
		JSONData map[string]any `yaml:"jsonData"`
	} `yaml:"datasources"`
}

func readDatasources(t *testing.T) datasourcesFile {
	t.Helper()
	var ds datasourcesFile
	readYAML(t, FS(), DatasourcesFile, &ds)
	return ds
}

func readYAML(t *testing.T, fsys fs.FS, name string, v any) {
	t.Helper()
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		t.Fatalf("read %s: %v",
			name, err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("parse %s: %v",
			name, err)
	}
}

func TestDatasources(t *testing.T) {
	ds := readDatasources(t)
	types := make(map[string]string)
	for _, d := range ds.Datasources {
		if _, dup := types[d.UID]; dup {
			t.Errorf("datasource uid %q defined twice", d.UID)
		}
		types[d.UID] = d.Type
	}
	for uid, typ := range map[string]string{"prometheus": "prometheus", "jaeger": "jaeger"} {
		if types[uid] != typ {
			t.Errorf("datasource uid %q has type %q, want %q", uid, types[uid], typ)
		}
	}
	linked := false
	for _, d := range ds.Datasources {
		if d.UID != "prometheus" {
			continue
		}
		dests, _ := d.JSONData["exemplarTraceIdDestinations"].([]any)
		for _, dest := range dests {
			m, _ := dest.(map[string]any)
			if m["name"] == "trace_id" && m["datasourceUid"] == "jaeger" {
				linked = true
			}
		}
	}
	if !linked {
		t.Errorf("the prometheus datasource does not link exemplar label trace_id to the jaeger datasource")
	}
}

// grafanaBuiltins are the Grafana variables a dashboard need not define.
var grafanaBuiltins = map[string]bool{
	"__rate_interval": true,
	"__interval":      true,
	"__range":         true,
}

var variableUse = regexp.MustCompile(`\$(?:\{(\w+)(?::\w+)?\}|(\w+))`)

func TestDashboards(t *testing.T) {
	ds := readDatasources(t)
	types := make(map[string]string)
	for _, d := range ds.Datasources {
		types[d.UID] = d.Type
	}
	names, err := fs.Glob(FS(), DashboardsDir+"/*.json")
	if err != nil {
		t.Fatalf("glob: %v", err)
	}
	want := map[string]bool{
		DashboardsDir + "/wsbroker-overview.json": false,
		DashboardsDir + "/wsbroker-reason.json":   false,
	}
	uids := make(map[string]string)
	exemplars := 0
	for _, name := range names {
		want[name] = true
		d, err := readDashboard(name)
		if err != nil {
			t.Fatalf("%v", err)
		}
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: missing uid or title", name)
		}
		if other, dup := uids[d.UID]; dup {
			t.Errorf("%s: uid %q already used by %s", name, d.UID, other)
		}
		uids[d.UID] = name
		defined := make(map[string]bool)
		for _, v := range d.Templating.List {
			defined[v.Name] = true
			if v.Datasource != nil && types[v.Datasource.UID] == "" {
				t.Errorf("%s: variable %s: datasource uid %q is not in %s", name, v.Name, v.Datasource.UID, DatasourcesFile)
			}
		}
		ids := make(map[int]bool)
		for _, p := range d.allPanels() {
			where := fmt.Sprintf("%s: panel %d %q", name, p.ID, p.Title)
			if ids[p.ID] {
				t.Errorf("%s: duplicate panel id", where)
			}
			ids[p.ID] = true
			if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
				t.Errorf("%s: gridPos %+v outside the 24-column grid", where, p.GridPos)
			}
			if p.Type == "row" {
				continue // A row only groups panels; it queries nothing.
			}
			if p.Datasource == nil || types[p.Datasource.UID] == "" {
				t.Errorf("%s: datasource %+v is not a uid in %s", where, p.Datasource, DatasourcesFile)
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no targets", where)
			}
			for _, tg := range p.Targets {
				tds := p.datasource(tg)
				if types[tds.UID] == "" || types[tds.UID] != tds.Type {
					t.Errorf("%s [%s]: datasource %+v is not in %s", where, tg.RefID, tds, DatasourcesFile)
					continue
				}
				var query string
				switch tds.Type {
				case "prometheus":
					query = tg.Expr
					if strings.TrimSpace(query) == "" {
						t.Errorf("%s [%s]: no expr", where, tg.RefID)
					}
					if tg.Exemplar {
						exemplars++
						if !strings.Contains(query, "wsbroker_upgrade_duration_seconds_bucket") {
							t.Errorf("%s [%s]: exemplars are only recorded on wsbroker_upgrade_duration_seconds", where, tg.RefID)
						}
					}
				case "jaeger":
					query = tg.Tags
					if tg.Service != "wsbroker" || !strings.HasPrefix(tg.Tags, "error.type=") {
						t.Errorf("%s [%s]: a Jaeger query must search service wsbroker by tag error.type=<reason>, got service %q tags %q", where, tg.RefID, tg.Service, tg.Tags)
					}
				default:
					t.Errorf("%s [%s]: unexpected datasource type %q", where, tg.RefID, tds.Type)
				}
				for _, m := range variableUse.FindAllStringSubmatch(query, -1) {
					v := m[1] + m[2]
					if !defined[v] && !grafanaBuiltins[v] {
						t.Errorf("%s [%s]: variable $%s is not defined by the dashboard", where, tg.RefID, v)
					}
				}
			}
		}
	}
	for name, found := range want {
		if !found {
			t.Errorf("%s is missing", name)
		}
	}
	if exemplars == 0 {
		t.Errorf("no panel shows exemplars of wsbroker_upgrade_duration_seconds")
	}
}

func recordedNames(t *testing.T) map[string]bool {
	t.Helper()
	rf, err := readRules(RulesFile)
	if err != nil {
		t.Fatalf("%v", err)
	}
	out := make(map[string]bool)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out[r.Record] = true
			}
		}
	}
	return out
}

func TestRules(t *testing.T) {
	rf, err := readRules(RulesFile)
	if err != nil {
		t.Fatalf("%v", err)
	}
	anchors := runbookAnchors(t)
	tested := testedAlerts(t)
	seen := make(map[string]bool)
	alerts := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				if n := strings.Count(r.Record, ":"); !strings.HasPrefix(r.Record, "wsbroker:") || n < 1 || n > 2 {
					t.Errorf("recording rule %s: want wsbroker:metric[:operations]", r.Record)
				}
				continue
			}
			alerts++
			a := r.Alert
			if seen[a] {
				t.Errorf("alert %s defined twice", a)
			}
			seen[a] = true
			if s := r.Labels["severity"]; s != "page" && s != "ticket" {
				t.Errorf("alert %s: severity %q, want page or ticket", a, s)
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[k]) == "" {
					t.Errorf("alert %s: no %s annotation", a, k)
				}
			}
			if want := runbookBase + strings.ToLower(a); r.Annotations["runbook_url"] != want {
				t.Errorf("alert %s: runbook_url %q, want %q", a, r.Annotations["runbook_url"], want)
			}
			if !anchors[strings.ToLower(a)] {
				t.Errorf("alert %s: %s has no heading with anchor #%s", a, runbooksFile, strings.ToLower(a))
			}
			if !tested[a].fires {
				t.Errorf("alert %s: no test in %s shows it firing", a, RulesTestFile)
			}
			if !tested[a].silent {
				t.Errorf("alert %s: no test in %s shows it silent", a, RulesTestFile)
			}
		}
	}
	for _, want := range []string{
		"WSBrokerAuthFailureBudgetBurnFast",
		"WSBrokerAuthFailureBudgetBurnSlow",
		"WSBrokerTokenMissingSpike",
		"WSBrokerKeyRefreshFailing",
		"WSBrokerEventPublishErrors",
		"WSBrokerSlowConsumers",
		"WSBrokerDown",
	} {
		if !seen[want] {
			t.Errorf("alert %s is missing from %s", want, RulesFile)
		}
	}
	for a := range tested {
		if !seen[a] {
			t.Errorf("%s tests alert %s, which %s does not define", RulesTestFile, a, RulesFile)
		}
	}
}

type alertCoverage struct {
	fires  bool
	silent bool
}

// testedAlerts reads rules_test.yml: for each alert, whether some test
// expects it to fire and some test expects it to stay silent.
func testedAlerts(t *testing.T) map[string]alertCoverage {
	t.Helper()
	var f struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, FS(), RulesTestFile, &f)
	out := make(map[string]alertCoverage)
	for _, tc := range f.Tests {
		for _, at := range tc.AlertRuleTest {
			c := out[at.Alertname]
			if len(at.ExpAlerts) > 0 {
				c.fires = true
			} else {
				c.silent = true
			}
			out[at.Alertname] = c
		}
	}
	return out
}

var (
	markdownHeading = regexp.MustCompile(`^#{1,6}\s+(.+?)\s*#*\s*$`)
	anchorDrop      = regexp.MustCompile(`[^\p{L}\p{N}_\- ]`)
)

// githubAnchor is the fragment GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	s := strings.ToLower(heading)
	s = anchorDrop.ReplaceAllString(s, "")
	return strings.ReplaceAll(s, " ", "-")
}

// runbookAnchors returns the anchors of the headings of docs/runbooks.md,
// outside fenced code blocks.
func runbookAnchors(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open(runbooksFile)
	if err != nil {
		t.Fatalf("open runbooks: %v", err)
	}
	defer f.Close()
	out := make(map[string]bool)
	fenced := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if m := markdownHeading.FindStringSubmatch(line); m != nil && !fenced {
			out[githubAnchor(m[1])] = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read runbooks: %v", err)
	}
	return out
}

func TestGithubAnchor(t *testing.T) {
	tests := []struct {
		heading string
		want    string
	}{
		{
			heading: "WSBrokerDown",
			want:    "wsbrokerdown",
		},
		{
			heading: "The incident's five whys, answered",
			want:    "the-incidents-five-whys-answered",
		},
		{
			heading: "Reasons at a glance: `missing_token` vs `source_disabled`",
			want:    "reasons-at-a-glance-missing_token-vs-source_disabled",
		},
	}
	for _, tt := range tests {
		if got := githubAnchor(tt.heading); got != tt.want {
			t.Errorf("githubAnchor(%q) = %q, want %q",
				tt.heading, got, tt.want)
		}
	}
}
