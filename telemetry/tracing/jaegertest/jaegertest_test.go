package jaegertest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestPoll(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name      string
		doneAfter int
		failAfter int
		timeout   time.Duration
		wantErr   error
		wantCalls int
	}{
		{
			name:      "done at once",
			doneAfter: 1,
			timeout:   time.Minute,
			wantCalls: 1,
		},
		{
			name:      "done on the third call",
			doneAfter: 3,
			timeout:   time.Minute,
			wantCalls: 3,
		},
		{
			name:      "condition error stops polling",
			failAfter: 2,
			timeout:   time.Minute,
			wantErr:   errBoom,
			wantCalls: 2,
		},
		{
			name:    "context ends",
			timeout: 30 * time.Millisecond,
			wantErr: context.DeadlineExceeded,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), tt.timeout)
			defer cancel()
			calls := 0
			err := Poll(ctx, time.Millisecond, func(context.Context) (bool, error) {
				calls++
				if calls == tt.failAfter {
					return false, errBoom
				}
				return calls == tt.doneAfter, nil
			})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Poll error %v, want %v",
					err, tt.wantErr)
			}
			if tt.wantCalls != 0 && calls != tt.wantCalls {
				t.Errorf("cond called %d times, want %d",
					calls, tt.wantCalls)
			}
		})
	}
}

func TestDeclaresModule(t *testing.T) {
	tests := []struct {
		name  string
		gomod string
		want  bool
	}{
		{
			name:  "main module",
			gomod: "module github.com/wsbroker/wsbroker\n\ngo 1.26.8\n",
			want:  true,
		},
		{
			name:  "quoted",
			gomod: "module \"github.com/wsbroker/wsbroker\"\n",
			want:  true,
		},
		{
			name:  "the tools module is not the repo root",
			gomod: "module github.com/wsbroker/wsbroker/tools/jaeger\n",
			want:  false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := declaresModule([]byte(tt.gomod), modulePath); got != tt.want {
				t.Errorf("declaresModule(%q) = %v, want %v",
					tt.gomod, got, tt.want)
			}
		})
	}
}

func TestRepoRootHasTheBuildScript(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatalf("repoRoot: %v",
			err)
	}
	if _, err := os.Stat(filepath.Join(root, "tools", "jaeger", "build.sh")); err != nil {
		t.Errorf("repo root %s has no tools/jaeger/build.sh: %v",
			root, err)
	}
}

func TestBinaryFromEnv(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "jaeger")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatalf("write: %v",
			err)
	}
	tests := []struct {
		name    string
		bin     string
		wantErr bool
	}{
		{
			name: "executable",
			bin:  exe,
		},
		{
			name:    "missing",
			bin:     filepath.Join(dir, "missing"),
			wantErr: true,
		},
		{
			name:    "directory",
			bin:     dir,
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(BinEnv, tt.bin)
			got, err := Binary()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Binary() = %q, %v; want error %v",
					got, err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), BinEnv) {
				t.Errorf("error %q does not name %s",
					err, BinEnv)
			}
		})
	}
}

func TestStartReportsAnExitedProcess(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "jaeger")
	script := "#!/bin/sh\necho 'listen tcp: address already in use' >&2\nexit 1\n"
	if err := os.WriteFile(exe, []byte(script), 0o755); err != nil {
		t.Fatalf("write: %v",
			err)
	}
	_, err := start(t, exe, dir, 1)
	if !errors.Is(err, errExited) {
		t.Fatalf("start error %v, want %v",
			err, errExited)
	}
	if !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("start error %q does not show the process output",
			err)
	}
}

// sample is an answer of Jaeger v1.75.0 to /api/traces?service=.
const sample = `{"data":[{"traceID":"5b8efff798038103d269b633813fc60d","spans":[
{"traceID":"5b8efff798038103d269b633813fc60d","spanID":"eee19b7ec3c1b174","operationName":"ws.upgrade","references":[],"startTime":1796313852905242,"duration":1000000,
 "tags":[{"key":"error","type":"bool","value":true},{"key":"error.type","type":"string","value":"expired"},{"key":"otel.status_code","type":"string","value":"ERROR"},{"key":"span.kind","type":"string","value":"server"}],
 "logs":[],"processID":"p1","warnings":null},
{"traceID":"5b8efff798038103d269b633813fc60d","spanID":"00000000000000aa","operationName":"authn.extract","references":[{"refType":"CHILD_OF","traceID":"5b8efff798038103d269b633813fc60d","spanID":"eee19b7ec3c1b174"}],"startTime":1796313852905242,"duration":10,
 "tags":[],"logs":[{"timestamp":1796313853405242,"fields":[{"key":"event","type":"string","value":"source.checked"},{"key":"source","type":"string","value":"header"}]}],"processID":"p1","warnings":null}],
"processes":{"p1":{"serviceName":"wsbroker","tags":[]}},"warnings":null}],"total":0,"limit":0,"offset":0,"errors":null}`

func TestDecodeTraces(t *testing.T) {
	var resp response
	if err := json.Unmarshal([]byte(sample), &resp); err != nil {
		t.Fatalf("decode: %v",
			err)
	}
	if err := resp.err(); err != nil {
		t.Fatalf("errors in sample: %v",
			err)
	}
	if len(resp.Data) != 1 {
		t.Fatalf("%d traces, want 1",
			len(resp.Data))
	}
	tr := resp.Data[0]
	root, ok := tr.Span("ws.upgrade")
	if !ok || root.ParentSpanID() != "" || root.TagString("error.type") != "expired" || root.TagString("error") != "true" {
		t.Errorf("ws.upgrade decoded as %+v",
			root)
	}
	child, ok := tr.SpanByID("00000000000000aa")
	if !ok || child.ParentSpanID() != root.SpanID || tr.ServiceName(child) != "wsbroker" {
		t.Errorf("authn.extract decoded as %+v",
			child)
	}
	events := child.Events("source.checked")
	if len(events) != 1 {
		t.Fatalf("%d source.checked events, want 1",
			len(events))
	}
	if v, _ := events[0].Field("source"); v != "header" {
		t.Errorf("event source = %v, want header",
			v)
	}
}
