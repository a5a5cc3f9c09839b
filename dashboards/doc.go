// Package dashboards owns what an operator sees of wsbroker: the Grafana
// dashboards and their provisioning (grafana/), the Prometheus recording
// rules, alerts and their promtool unit tests (prometheus/), the Prometheus
// and Alertmanager configuration of the docker-compose demo stack
// (prometheus/prometheus.yml, alertmanager/) and its demo secret (compose/).
//
// The files are the product; the Go code only embeds them (FS) and lists
// every PromQL expression they contain (Expressions), so that tests can hold
// them to the contract in DESIGN.md sections 5 and 6: metric names, label
// names and the closed sets of label values. The package tests run promtool
// (required: CI installs Debian's prometheus package) and check that
// docker-compose.yml, the datasources and docs/runbooks.md agree with these
// files.
package dashboards
