package telemetrye2e

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/telemetry/tracing/jaegertest"
)

const allowedOrigin = "http://app.e2e.example"

// allSourcesFlags enables every token source, which the cookie source allows
// only with an Origin allow-list.
var allSourcesFlags = []string{
	"--token-sources", "header,subprotocol,query,cookie",
	"--allowed-origins", allowedOrigin,
}

// TestTracesInJaeger makes accepted and rejected upgrades through each
// source against the real binary exporting to a real Jaeger, then reads the
// traces back: span names and parents, one source.checked event per source,
// error.type on failures, and the X-Trace-Id of every answer finding its
// trace.
func TestTracesInJaeger(t *testing.T) {
	t.Parallel()
	j := jaegertest.Start(t)
	b := startBroker(t, append([]string{"--trace-success-ratio", "1"}, allSourcesFlags...), otelEnv(j.OTLPHTTPEndpoint()))

	good := token(t, claims("trace-user"), nil)
	const parentTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	tests := []struct {
		name    string
		req     upgradeReq
		status  int
		reason  string // "" when accepted
		source  string
		stage   string // span carrying error.type below ws.upgrade
		verify  bool   // an authn.verify span is expected
		traceID string // the trace the answer must continue, if any
	}{
		{
			name:   "accepted header",
			req:    upgradeReq{headers: [][2]string{{"Authorization", "Bearer " + good}}},
			status: http.StatusSwitchingProtocols,
			source: "header",
			verify: true,
		},
		{
			name:   "accepted subprotocol",
			req:    upgradeReq{protocols: "wsbroker.v1, bearer." + good},
			status: http.StatusSwitchingProtocols,
			source: "subprotocol",
			verify: true,
		},
		{
			name:   "accepted query",
			req:    upgradeReq{target: "/ws?access_token=" + good},
			status: http.StatusSwitchingProtocols,
			source: "query",
			verify: true,
		},
		{
			name:   "accepted cookie",
			req:    upgradeReq{headers: [][2]string{{"Cookie", "access_token=" + good}, {"Origin", allowedOrigin}}},
			status: http.StatusSwitchingProtocols,
			source: "cookie",
			verify: true,
		},
		{
			name:   "missing_token",
			req:    upgradeReq{protocols: "wsbroker.v1"},
			status: http.StatusUnauthorized,
			reason: "missing_token",
			source: "none",
			stage:  "authn.extract",
		},
		{
			name:   "malformed_authorization in the header",
			req:    upgradeReq{headers: [][2]string{{"Authorization", "Basic dXNlcjpwYXNz"}}},
			status: http.StatusBadRequest,
			reason: "malformed_authorization",
			source: "header",
			stage:  "authn.extract",
		},
		{
			name:   "protocol_not_offered in the subprotocol",
			req:    upgradeReq{protocols: "bearer." + good},
			status: http.StatusBadRequest,
			reason: "protocol_not_offered",
			source: "subprotocol",
			stage:  "authn.extract",
		},
		{
			name:   "expired in the query",
			req:    upgradeReq{target: "/ws?access_token=" + token(t, claims("trace-user", expired), nil)},
			status: http.StatusUnauthorized,
			reason: "expired",
			source: "query",
			stage:  "authn.verify",
			verify: true,
		},
		{
			name:   "bad_signature in the cookie",
			req:    upgradeReq{headers: [][2]string{{"Cookie", "access_token=" + token(t, claims("trace-user"), []byte("another-secret-another-secret-0123"))}, {"Origin", allowedOrigin}}},
			status: http.StatusUnauthorized,
			reason: "bad_signature",
			source: "cookie",
			stage:  "authn.verify",
			verify: true,
		},
		{
			name:    "alg_not_allowed continuing the client's trace",
			req:     upgradeReq{headers: [][2]string{{"Authorization", "Bearer " + unsigned(claims("trace-user"))}, {"traceparent", "00-" + parentTrace + "-00f067aa0ba902b7-01"}}},
			status:  http.StatusUnauthorized,
			reason:  "alg_not_allowed",
			source:  "header",
			stage:   "authn.verify",
			verify:  true,
			traceID: parentTrace,
		},
	}
	ids := make([]string, len(tests))
	for i, tt := range tests {
		r := doUpgrade(t, b.ws, tt.req)
		if r.status != tt.status {
			t.Fatalf("%s: status %d, want %d: %s",
				tt.name, r.status, tt.status, r.raw)
		}
		ids[i] = r.header.Get("X-Trace-Id")
		if len(ids[i]) != 32 {
			t.Fatalf("%s: X-Trace-Id %q is not a trace id",
				tt.name, ids[i])
		}
		if tt.traceID != "" && ids[i] != tt.traceID {
			t.Errorf("%s: X-Trace-Id %s, want the client's trace %s",
				tt.name, ids[i], tt.traceID)
		}
		if tt.reason != "" {
			if got := r.header.Get("X-Request-Id"); got != ids[i] {
				t.Errorf("%s: X-Request-Id %q, want the trace id %s",
					tt.name, got, ids[i])
			}
			var body struct {
				Reason    string `json:"reason"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal(r.body, &body); err != nil || body.Reason != tt.reason || body.RequestID != ids[i] {
				t.Errorf("%s: body %s (%v), want reason %s and request_id %s",
					tt.name, r.body, err, tt.reason, ids[i])
			}
		}
	}

	// Every trace shows up in the service's search.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	found := map[string]jaegertest.Trace{}
	err := jaegertest.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		traces, err := j.Traces(ctx, "wsbroker")
		if err != nil {
			return false, nil
		}
		for _, tr := range traces {
			found[tr.TraceID] = tr
		}
		for _, id := range ids {
			if _, ok := found[id]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("traces %v not all in Jaeger (found %d): %v\nbroker logs:\n%s",
			ids, len(found), err, tail(b.stderr.String(), 4000))
	}

	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The id a user reports finds the trace directly.
			tr, err := j.Trace(t.Context(), ids[i])
			if err != nil {
				t.Fatalf("Trace(%s): %v",
					ids[i], err)
			}
			checkUpgradeTrace(t, tr, tt.reason, tt.source, tt.stage, tt.verify, tt.traceID != "")
		})
	}
}

// checkUpgradeTrace asserts the spans of one upgrade: ws.upgrade (root, or
// child of the client's span when continued), authn.extract with one
// source.checked event per source, authn.verify when the token was
// verified, and error.type = reason on ws.upgrade and on the failing stage.
func checkUpgradeTrace(t *testing.T, tr jaegertest.Trace, reason, source, stage string, verify, continued bool) {
	t.Helper()
	root, ok := tr.Span("ws.upgrade")
	if !ok {
		t.Fatalf("trace %s has no ws.upgrade span: %+v",
			tr.TraceID, tr.Spans)
	}
	if continued != (root.ParentSpanID() != "") {
		t.Errorf("ws.upgrade parent %q, continued trace %v",
			root.ParentSpanID(), continued)
	}
	if got := tr.ServiceName(root); got != "wsbroker" {
		t.Errorf("service %q, want wsbroker",
			got)
	}
	wantStatus := "101"
	if reason != "" {
		wantStatus = ""
	}
	wantTags := map[string]string{
		"span.kind":             "server",
		"authn.source":          source,
		"error.type":            reason,
		"network.protocol.name": "websocket",
	}
	if reason != "" {
		wantTags["otel.status_code"] = "ERROR"
		wantTags["authn.reason"] = reason
	} else {
		wantTags["authn.reason"] = "none"
		wantTags["http.response.status_code"] = wantStatus
	}
	for k, v := range wantTags {
		if got := root.TagString(k); got != v {
			t.Errorf("ws.upgrade tag %s = %q, want %q",
				k, got, v)
		}
	}

	extract, ok := tr.Span("authn.extract")
	if !ok {
		t.Fatalf("trace %s has no authn.extract span",
			tr.TraceID)
	}
	if extract.ParentSpanID() != root.SpanID {
		t.Errorf("authn.extract parent %s, want ws.upgrade %s",
			extract.ParentSpanID(), root.SpanID)
	}
	events := extract.Events("source.checked")
	wantSources := []string{"header", "subprotocol", "query", "cookie"}
	if len(events) != len(wantSources) {
		t.Fatalf("%d source.checked events, want one per source %v: %+v",
			len(events), wantSources, extract.Logs)
	}
	for i, e := range events {
		src, _ := e.Field("source")
		found, _ := e.Field("found")
		enabled, _ := e.Field("enabled")
		if src != wantSources[i] || enabled != true {
			t.Errorf("source.checked #%d: source %v enabled %v, want %s enabled",
				i, src, enabled, wantSources[i])
		}
		if wantFound := src == source; found != wantFound {
			outcome, _ := e.Field("outcome")
			t.Errorf("source.checked %v: found %v (outcome %v), want %v",
				src, found, outcome, wantFound)
		}
	}

	v, hasVerify := tr.Span("authn.verify")
	if hasVerify != verify {
		t.Errorf("authn.verify span present %v, want %v",
			hasVerify, verify)
	}
	if hasVerify && v.ParentSpanID() != root.SpanID {
		t.Errorf("authn.verify parent %s, want ws.upgrade %s",
			v.ParentSpanID(), root.SpanID)
	}
	for _, name := range []string{"authn.extract", "authn.verify"} {
		s, ok := tr.Span(name)
		if !ok {
			continue
		}
		want := ""
		if name == stage {
			want = reason
		}
		if got := s.TagString("error.type"); got != want {
			t.Errorf("%s error.type = %q, want %q",
				name, got, want)
		}
	}
	if t.Failed() {
		raw, _ := json.MarshalIndent(tr, "", " ")
		t.Logf("trace:\n%s", raw)
	}
}
