package telemetrye2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
)

// TestLoadgen runs `wsbroker loadgen` for a bounded time against brokers in
// both reject modes and checks its summary: every bad kind got exactly its
// reason (an HTTP status and X-Wsbroker-Reason, or a 4000+status close
// code with the reason), and without --jwt-issuer on the broker the
// wrong_issuer kind is accepted and flagged in the text summary.
func TestLoadgen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		brokerFlags []string
		loadFlags   []string
		// result formats the wanted result of a reason.
		result func(r authn.Reason) string
		// accepted are kinds the broker is not configured to refuse.
		accepted []string
	}{
		{
			name:        "reject mode http",
			brokerFlags: []string{"--jwt-issuer", e2eIssuer},
			loadFlags:   []string{"--jwt-issuer", e2eIssuer},
			result:      func(r authn.Reason) string { return fmt.Sprintf("%d %s", r.Status(), r) },
		},
		{
			name:        "reject mode close",
			brokerFlags: []string{"--jwt-issuer", e2eIssuer, "--reject-mode", "close"},
			loadFlags:   []string{"--jwt-issuer", e2eIssuer},
			result:      func(r authn.Reason) string { return fmt.Sprintf("close %d %s", 4000+r.Status(), r) },
		},
		{
			name:     "no issuer configured",
			result:   func(r authn.Reason) string { return fmt.Sprintf("%d %s", r.Status(), r) },
			accepted: []string{"wrong_issuer"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := startBroker(t, tt.brokerFlags, nil)
			args := append([]string{
				"loadgen",
				"--url", "ws://" + b.ws + "/ws",
				"--jwt-hmac-secret-file", writeSecret(t),
				"--good", "2",
				"--bad-per-reason", "2",
				"--interval", "200ms",
				"--publish-interval", "100ms",
				"--duration", "2s",
				"--json",
			}, tt.loadFlags...)
			lg := startProcess(t, "wsbroker loadgen", wsbrokerBin(t), args, nil)
			testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
				if !lg.exited() {
					return errors.New("loadgen still running after its --duration")
				}
				return nil
			})
			if lg.err != nil {
				t.Fatalf("loadgen: %v\nstderr: %s",
					lg.err, lg.stderr.String())
			}
			var sum struct {
				Good struct {
					Connects  uint64 `json:"connects"`
					Failures  uint64 `json:"failures"`
					Published uint64 `json:"published"`
				} `json:"good"`
				Bad []struct {
					Kind     string            `json:"kind"`
					Want     string            `json:"want"`
					Attempts uint64            `json:"attempts"`
					Results  map[string]uint64 `json:"results"`
				} `json:"bad"`
			}
			if err := json.Unmarshal([]byte(lg.stdout.String()), &sum); err != nil {
				t.Fatalf("summary %q: %v",
					lg.stdout.String(), err)
			}
			if sum.Good.Connects != 2 || sum.Good.Failures != 0 || sum.Good.Published == 0 {
				t.Errorf("good clients %+v, want 2 connects, no failure, some publishes",
					sum.Good)
			}
			for _, k := range sum.Bad {
				r, ok := authn.ParseReason(k.Want)
				if !ok {
					t.Errorf("kind %s wants unknown reason %q",
						k.Kind, k.Want)
					continue
				}
				want := tt.result(r)
				for _, a := range tt.accepted {
					if a == k.Kind {
						want = "101"
					}
				}
				if k.Attempts < 2 || len(k.Results) != 1 || k.Results[want] != k.Attempts {
					t.Errorf("kind %s: %d attempts got %v, want all %q",
						k.Kind, k.Attempts, k.Results, want)
				}
			}
		})
	}
}

// TestLoadgenTextSummary checks the human summary and that a wrong flag
// is an error, not a silent run.
func TestLoadgenTextSummary(t *testing.T) {
	t.Parallel()
	b := startBroker(t, nil, nil)
	lg := startProcess(t, "wsbroker loadgen", wsbrokerBin(t), []string{
		"loadgen",
		"--url", "ws://" + b.ws + "/ws",
		// The flag name docker-compose.yml uses.
		"--hmac-secret-file", writeSecret(t),
		"--good", "1",
		"--bad-per-reason", "1",
		"--duration", "500ms",
	}, nil)
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !lg.exited() {
			return errors.New("loadgen still running after its --duration")
		}
		return nil
	})
	if lg.err != nil {
		t.Fatalf("loadgen: %v\nstderr: %s",
			lg.err, lg.stderr.String())
	}
	out := lg.stdout.String()
	for _, want := range []string{
		"good clients 1: 1 connects",
		"expired                  ",
		"401 expired ×",
		"wrong_issuer",
		"never the wanted reason",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s",
				want, out)
		}
	}

	bad := startProcess(t, "wsbroker loadgen", wsbrokerBin(t), []string{
		"loadgen",
		"--url", "ws://" + b.ws + "/ws",
		"--duration", "100ms",
	}, nil)
	testkit.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if !bad.exited() {
			return errors.New("loadgen without a secret still running")
		}
		return nil
	})
	if bad.err == nil || !strings.Contains(bad.stderr.String(), "--jwt-hmac-secret-file is required") {
		t.Errorf("loadgen without a secret: %v, stderr %q; want an error naming the flag",
			bad.err, bad.stderr.String())
	}
}
