package main

import (
	"os"
	"testing"

	"gopkg.in/yaml.v3"
)

// TestComposeCommandsParse runs the flag parser of the real commands on the
// command lines of docker-compose.yml, so that a renamed or misspelt flag
// fails here rather than in a stack nobody can start on this machine.
func TestComposeCommandsParse(t *testing.T) {
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image   string   `yaml:"image"`
			Build   any      `yaml:"build"`
			Command []string `yaml:"command"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	checked := 0
	for name, svc := range compose.Services {
		if svc.Image != "wsbroker:dev" || len(svc.Command) == 0 {
			continue
		}
		root := newRoot()
		cmd, args, err := root.Find(svc.Command)
		if err != nil || cmd == root {
			t.Fatalf("service %s: %q is no wsbroker command: %v",
				name, svc.Command, err)
		}
		if err := cmd.ParseFlags(args); err != nil {
			t.Fatalf("service %s: %s %q: %v",
				name, cmd.Name(), args, err)
		}
		checked++
	}
	if checked < 2 {
		t.Fatalf("checked %d wsbroker services, want the broker and the load generator",
			checked)
	}
}
