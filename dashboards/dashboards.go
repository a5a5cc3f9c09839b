package dashboards

import (
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// Paths of the embedded files, relative to FS.
const (
	RulesFile       = "prometheus/rules.yml"
	RulesTestFile   = "prometheus/rules_test.yml"
	PrometheusFile  = "prometheus/prometheus.yml"
	AlertmanagerDir = "alertmanager"
	DashboardsDir   = "grafana/dashboards"
	DatasourcesFile = "grafana/provisioning/datasources/datasources.yml"
)

//go:embed grafana prometheus alertmanager
var files embed.FS

// FS returns the embedded dashboards, provisioning, rules and configuration,
// laid out as in the repository below dashboards/ (see the path constants).
func FS() fs.FS {
	return files
}

// Expr is one PromQL expression found in a dashboard or a rule file.
type Expr struct {
	// Source is the file it comes from, a path in FS.
	Source string
	// Title names it within Source: "panel <title> [<refId>]",
	// "variable <name>", "record <name>" or "alert <name>".
	Title string
	// Query is the expression as written. Dashboard queries may contain
	// Grafana variables; Substitute makes them evaluable by Prometheus.
	Query string
}

// Expressions lists every PromQL expression in every dashboard panel, every
// dashboard template variable (the selector of label_values or the query of
// query_result) and every recording and alerting rule, in file order.
func Expressions() ([]Expr, error) {
	var out []Expr
	names, err := fs.Glob(files, DashboardsDir+"/*.json")
	if err != nil {
		return nil, err
	}
	for _, name := range names {
		d, err := readDashboard(name)
		if err != nil {
			return nil, err
		}
		exprs, err := d.expressions(name)
		if err != nil {
			return nil, err
		}
		out = append(out, exprs...)
	}
	rf, err := readRules(RulesFile)
	if err != nil {
		return nil, err
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			title := "record " + r.Record
			if r.Alert != "" {
				title = "alert " + r.Alert
			}
			out = append(out, Expr{
				Source: RulesFile,
				Title:  title,
				Query:  r.Expr,
			})
		}
	}
	return out, nil
}

// substitutions are the values Substitute gives the Grafana variables the
// dashboards use.
var substitutions = map[string]string{
	"__rate_interval": "1m",
	"__interval":      "1m",
	"__range":         "1h",
	"instance":        ".+",
	"reason":          ".+",
}

var grafanaVariable = regexp.MustCompile(`\$(?:\{(\w+)(?::\w+)?\}|(\w+))`)

// Substitute replaces the Grafana variables in a dashboard query ($name,
// ${name} and ${name:format}) so that Prometheus itself can evaluate it:
//
//	$__rate_interval, $__interval  1m (enough for rate() at a 15s scrape interval)
//	$__range                       1h
//	$instance, $reason             .+
//
// The dashboard variables become ".+" because the dashboards use them only
// in regular-expression matchers (label=~"$reason", which the package tests
// enforce), so the substituted query selects every value of the label, as
// the dashboard's "All" would. Unknown variables are left as they are; the
// package tests make sure no dashboard uses one.
func Substitute(q string) string {
	return grafanaVariable.ReplaceAllStringFunc(q, func(v string) string {
		m := grafanaVariable.FindStringSubmatch(v)
		name := m[1]
		if name == "" {
			name = m[2]
		}
		if s, ok := substitutions[name]; ok {
			return s
		}
		return v
	})
}

// dashboard is the part of a Grafana dashboard JSON model the tests and
// Expressions read.
type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	Targets    []target       `json:"targets"`
	GridPos    struct {
		H int `json:"h"`
		W int `json:"w"`
		X int `json:"x"`
		Y int `json:"y"`
	} `json:"gridPos"`
	// Panels holds the panels of a collapsed row.
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	RefID      string         `json:"refId"`
	Datasource *datasourceRef `json:"datasource"`
	// Prometheus.
	Expr     string `json:"expr"`
	Exemplar bool   `json:"exemplar"`
	// Jaeger.
	QueryType string `json:"queryType"`
	Service   string `json:"service"`
	Operation string `json:"operation"`
	Tags      string `json:"tags"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Datasource *datasourceRef  `json:"datasource"`
	Query      json.RawMessage `json:"query"`
}

func readDashboard(name string) (*dashboard, error) {
	b, err := fs.ReadFile(files, name)
	if err != nil {
		return nil, err
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &d, nil
}

// allPanels returns the dashboard's panels, with the panels of collapsed
// rows after their row.
func (d *dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

// datasource returns the datasource a target queries: its own, or else its
// panel's.
func (p *panel) datasource(t target) *datasourceRef {
	if t.Datasource != nil {
		return t.Datasource
	}
	return p.Datasource
}

func (d *dashboard) expressions(source string) ([]Expr, error) {
	var out []Expr
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, err := variableQuery(v)
		if err != nil {
			return nil, fmt.Errorf("%s: variable %s: %w", source, v.Name, err)
		}
		out = append(out, Expr{
			Source: source,
			Title:  "variable " + v.Name,
			Query:  q,
		})
	}
	for _, p := range d.allPanels() {
		for _, t := range p.Targets {
			ds := p.datasource(t)
			if ds == nil || ds.Type != "prometheus" {
				continue
			}
			out = append(out, Expr{
				Source: source,
				Title:  fmt.Sprintf("panel %s [%s]", p.Title, t.RefID),
				Query:  t.Expr,
			})
		}
	}
	return out, nil
}

var (
	labelValuesCall = regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	queryResultCall = regexp.MustCompile(`^query_result\((.+)\)$`)
)

// variableQuery returns the PromQL inside a Prometheus template variable's
// query, which Grafana stores either as a string or as {"query": "..."}.
func variableQuery(v variable) (string, error) {
	var q string
	if err := json.Unmarshal(v.Query, &q); err != nil {
		var obj struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &obj); err != nil {
			return "", fmt.Errorf("query is neither a string nor an object: %w", err)
		}
		q = obj.Query
	}
	q = strings.TrimSpace(q)
	for _, re := range []*regexp.Regexp{labelValuesCall, queryResultCall} {
		if m := re.FindStringSubmatch(q); m != nil {
			return strings.TrimSpace(m[1]), nil
		}
	}
	return "", fmt.Errorf("query %q is not label_values(<selector>, <label>) or query_result(<expr>)", q)
}

// ruleFile is a Prometheus rule file.
type ruleFile struct {
	Groups []ruleGroup `yaml:"groups"`
}

type ruleGroup struct {
	Name  string `yaml:"name"`
	Rules []rule `yaml:"rules"`
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readRules(name string) (*ruleFile, error) {
	b, err := fs.ReadFile(files, name)
	if err != nil {
		return nil, err
	}
	var rf ruleFile
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rf); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &rf, nil
}
