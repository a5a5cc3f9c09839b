package dashboards

import (
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The repository root, where docker-compose.yml resolves its relative paths.
const repoRoot = ".."

type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
	Volumes map[string]any `yaml:"volumes"`
}

type composeService struct {
	Image string `yaml:"image"`
	Build *struct {
		Context    string `yaml:"context"`
		Dockerfile string `yaml:"dockerfile"`
	} `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Expose      []string          `yaml:"expose"`
	Volumes     []string          `yaml:"volumes"`
	Secrets     []string          `yaml:"secrets"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	var c composeFile
	readYAML(t, os.DirFS(repoRoot), "docker-compose.yml", &c)
	return c
}

// portMapping is one entry of a service's ports: "host:container",
// "ip:host:container" or "container", optionally with /proto.
type portMapping struct {
	host      string
	container string
}

func parsePort(s string) portMapping {
	s, _, _ = strings.Cut(s, "/")
	parts := strings.Split(s, ":")
	p := portMapping{container: parts[len(parts)-1]}
	if len(parts) > 1 {
		p.host = parts[len(parts)-2]
	}
	return p
}

// containerPorts are the ports a service listens on inside the compose
// network, as its ports and expose entries declare them.
func (s composeService) containerPorts() []string {
	var out []string
	for _, p := range s.Ports {
		out = append(out, parsePort(p).container)
	}
	for _, p := range s.Expose {
		out = append(out, parsePort(p).container)
	}
	return out
}

// flag returns the value of --name (as "--name value" or "--name=value").
func (s composeService) flag(name string) (string, bool) {
	for i, a := range s.Command {
		if a == name && i+1 < len(s.Command) {
			return s.Command[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func TestComposeServices(t *testing.T) {
	c := readCompose(t)
	for _, name := range []string{"broker", "nats", "prometheus", "alertmanager", "grafana", "jaeger", "loadgen"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("docker-compose.yml has no service %s", name)
		}
	}
	if !slices.Contains(c.Services["prometheus"].Command, "--enable-feature=exemplar-storage") {
		t.Errorf("prometheus is not started with --enable-feature=exemplar-storage: exemplars would be dropped")
	}
	if c.Services["loadgen"].Command[0] != "loadgen" || c.Services["broker"].Command[0] != "serve" {
		t.Errorf("broker must run serve and loadgen loadgen, got %q and %q", c.Services["broker"].Command, c.Services["loadgen"].Command)
	}
}

// TestComposeMountsExist checks that every file docker-compose.yml builds
// from or mounts is in the repository, and every named volume is declared.
func TestComposeMountsExist(t *testing.T) {
	c := readCompose(t)
	exists := func(where, rel string) {
		t.Helper()
		if filepath.IsAbs(rel) {
			t.Errorf("%s: %s is an absolute path; mount files of the repository", where, rel)
			return
		}
		if _, err := os.Stat(filepath.Join(repoRoot, rel)); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	for name, s := range c.Services {
		if s.Build != nil {
			exists(name+" build", filepath.Join(s.Build.Context, s.Build.Dockerfile))
		}
		for _, v := range s.Volumes {
			src, _, ok := strings.Cut(v, ":")
			if !ok {
				t.Errorf("%s: volume %q has no target", name, v)
				continue
			}
			if strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				exists(name+" volume", src)
				continue
			}
			if _, ok := c.Volumes[src]; !ok {
				t.Errorf("%s: named volume %s is not declared", name, src)
			}
		}
		for _, sec := range s.Secrets {
			if _, ok := c.Secrets[sec]; !ok {
				t.Errorf("%s: secret %s is not declared", name, sec)
			}
		}
	}
	for name, sec := range c.Secrets {
		exists("secret "+name, sec.File)
	}
}

func TestComposePorts(t *testing.T) {
	c := readCompose(t)
	tests := []struct {
		service   string
		container string
		// host is the published port; "" means any port other than the
		// container's (Prometheus' 9090 is the broker's admin port on the
		// host).
		host string
	}{
		{
			service:   "broker",
			container: "8080",
			host:      "8080",
		},
		{
			service:   "broker",
			container: "9090",
			host:      "9090",
		},
		{
			service:   "prometheus",
			container: "9090",
		},
		{
			service:   "grafana",
			container: "3000",
			host:      "3000",
		},
		{
			service:   "jaeger",
			container: "16686",
			host:      "16686",
		},
		{
			service:   "jaeger",
			container: "4317",
			host:      "4317",
		},
		{
			service:   "jaeger",
			container: "4318",
			host:      "4318",
		},
		{
			service:   "alertmanager",
			container: "9093",
			host:      "9093",
		},
		{
			service:   "nats",
			container: "4222",
			host:      "4222",
		},
	}
	for _, tt := range tests {
		var got *portMapping
		for _, p := range c.Services[tt.service].Ports {
			if pm := parsePort(p); pm.container == tt.container {
				got = &pm
			}
		}
		switch {
		case got == nil:
			t.Errorf("%s does not publish container port %s", tt.service, tt.container)
		case tt.host == "" && (got.host == "" || got.host == tt.container):
			t.Errorf("%s publishes %s on host port %q; want a host port other than %s", tt.service, tt.container, got.host, tt.container)
		case tt.host != "" && got.host != tt.host:
			t.Errorf("%s publishes %s on host port %q, want %s", tt.service, tt.container, got.host, tt.host)
		}
	}
	hostPorts := make(map[string]string)
	for name, s := range c.Services {
		for _, p := range s.Ports {
			h := parsePort(p).host
			if h == "" {
				continue
			}
			if other, dup := hostPorts[h]; dup {
				t.Errorf("host port %s is published by both %s and %s", h, other, name)
			}
			hostPorts[h] = name
		}
	}
	broker := c.Services["broker"]
	for flag, port := range map[string]string{"--listen": "8080", "--admin-listen": "9090"} {
		v, ok := broker.flag(flag)
		if !ok {
			t.Errorf("broker: no %s flag", flag)
			continue
		}
		if _, p, err := net.SplitHostPort(v); err != nil || p != port {
			t.Errorf("broker: %s %q, want port %s", flag, v, port)
		}
	}
}

// TestComposeAddresses checks that every address one part of the stack
// uses to reach another (Grafana datasources, Prometheus targets, the
// broker's and loadgen's URLs) names a compose service and a port that
// service listens on.
func TestComposeAddresses(t *testing.T) {
	c := readCompose(t)
	check := func(where, hostport string) {
		t.Helper()
		host, port, err := net.SplitHostPort(hostport)
		if err != nil {
			t.Errorf("%s: %q: %v", where, hostport, err)
			return
		}
		s, ok := c.Services[host]
		if !ok {
			t.Errorf("%s: %s is not a compose service", where, host)
			return
		}
		if !slices.Contains(s.containerPorts(), port) {
			t.Errorf("%s: service %s does not declare port %s (ports: %v)", where, host, port, s.containerPorts())
		}
	}
	checkURL := func(where, raw string) {
		t.Helper()
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			t.Errorf("%s: %q is not an absolute URL", where, raw)
			return
		}
		check(where, u.Host)
	}

	ds := readDatasources(t)
	for _, d := range ds.Datasources {
		checkURL("datasource "+d.UID, d.URL)
	}

	var prom struct {
		Alerting struct {
			Alertmanagers []struct {
				StaticConfigs []struct {
					Targets []string `yaml:"targets"`
				} `yaml:"static_configs"`
			} `yaml:"alertmanagers"`
		} `yaml:"alerting"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, FS(), PrometheusFile, &prom)
	for _, am := range prom.Alerting.Alertmanagers {
		for _, sc := range am.StaticConfigs {
			for _, tg := range sc.Targets {
				check("prometheus alertmanager", tg)
			}
		}
	}
	var wsbrokerTargets []string
	for _, job := range prom.ScrapeConfigs {
		for _, sc := range job.StaticConfigs {
			for _, tg := range sc.Targets {
				check("prometheus job "+job.JobName, tg)
				if job.JobName == "wsbroker" {
					wsbrokerTargets = append(wsbrokerTargets, tg)
				}
			}
		}
	}
	if !slices.Equal(wsbrokerTargets, []string{"broker:9090"}) {
		t.Errorf("prometheus job wsbroker scrapes %v, want the broker's admin port broker:9090", wsbrokerTargets)
	}

	for name, s := range c.Services {
		for k, v := range s.Environment {
			if strings.Contains(v, "://") {
				checkURL(name+" "+k, v)
			}
		}
		for _, a := range s.Command {
			if _, v, ok := strings.Cut(a, "="); ok && strings.Contains(v, "://") {
				a = v
			}
			if strings.Contains(a, "://") {
				checkURL(name+" command", a)
			}
		}
	}
	wantFlags := []struct {
		service string
		flag    string
		want    string
	}{
		{
			service: "broker",
			flag:    "--nats-url",
			want:    "nats://nats:4222",
		},
		{
			service: "loadgen",
			flag:    "--url",
			want:    "ws://broker:8080/ws",
		},
	}
	for _, tt := range wantFlags {
		if v, _ := c.Services[tt.service].flag(tt.flag); v != tt.want {
			t.Errorf("%s %s = %q, want %q", tt.service, tt.flag, v, tt.want)
		}
	}
	if v := c.Services["broker"].Environment["OTEL_EXPORTER_OTLP_ENDPOINT"]; v != "http://jaeger:4318" {
		t.Errorf("broker OTEL_EXPORTER_OTLP_ENDPOINT = %q, want http://jaeger:4318", v)
	}
}

// TestComposeSecretsAndConfigPaths checks that the paths the services are
// told to read are where compose puts the files: the HMAC secret, the
// Prometheus and Alertmanager configuration and Grafana's dashboards.
func TestComposeSecretsAndConfigPaths(t *testing.T) {
	c := readCompose(t)
	for _, name := range []string{"broker", "loadgen"} {
		s := c.Services[name]
		flag := "--jwt-hmac-secret-file"
		if name == "loadgen" {
			flag = "--hmac-secret-file"
		}
		v, ok := s.flag(flag)
		if !ok {
			t.Errorf("%s: no %s flag", name, flag)
			continue
		}
		sec, found := strings.CutPrefix(v, "/run/secrets/")
		if !found || !slices.Contains(s.Secrets, sec) {
			t.Errorf("%s: %s %s is not a secret the service is given (%v)", name, flag, v, s.Secrets)
		}
	}

	mounted := func(service, target string) string {
		for _, v := range c.Services[service].Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && parts[1] == target {
				return parts[0]
			}
		}
		return ""
	}
	wantMounts := []struct {
		service string
		target  string
		source  string
	}{
		{
			service: "prometheus",
			target:  "/etc/prometheus/prometheus.yml",
			source:  "./dashboards/" + PrometheusFile,
		},
		{
			service: "prometheus",
			target:  "/etc/prometheus/rules.yml",
			source:  "./dashboards/" + RulesFile,
		},
		{
			service: "alertmanager",
			target:  "/etc/alertmanager/alertmanager.yml",
			source:  "./dashboards/" + AlertmanagerDir + "/alertmanager.yml",
		},
		{
			service: "grafana",
			target:  "/etc/grafana/provisioning",
			source:  "./dashboards/grafana/provisioning",
		},
	}
	for _, tt := range wantMounts {
		if got := mounted(tt.service, tt.target); got != tt.source {
			t.Errorf("%s mounts %q at %s, want %s", tt.service, got, tt.target, tt.source)
		}
	}
	for service, flag := range map[string]string{"prometheus": "--config.file", "alertmanager": "--config.file"} {
		v, _ := c.Services[service].flag(flag)
		if mounted(service, v) == "" {
			t.Errorf("%s %s=%s is not a mounted file", service, flag, v)
		}
	}

	// Prometheus resolves rule_files against the directory of its config.
	var prom struct {
		RuleFiles []string `yaml:"rule_files"`
	}
	readYAML(t, FS(), PrometheusFile, &prom)
	for _, rf := range prom.RuleFiles {
		if mounted("prometheus", path.Join("/etc/prometheus", rf)) == "" {
			t.Errorf("prometheus rule file %s is not mounted in /etc/prometheus", rf)
		}
	}

	// Grafana's dashboard provider reads a directory that must hold the
	// dashboards.
	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, FS(), "grafana/provisioning/dashboards/dashboards.yml", &prov)
	if len(prov.Providers) == 0 {
		t.Fatalf("no Grafana dashboard provider")
	}
	for _, p := range prov.Providers {
		if got := mounted("grafana", p.Options.Path); got != "./dashboards/"+DashboardsDir {
			t.Errorf("grafana dashboard provider reads %s, where compose mounts %q, want ./dashboards/%s", p.Options.Path, got, DashboardsDir)
		}
	}
}
