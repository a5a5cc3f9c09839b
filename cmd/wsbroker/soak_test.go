package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestSoakShort runs the soak for real for 12 s: a wsbroker built from
// this tree in its own process, 300 churning clients over 8 loopback
// source addresses, a fifth of them broken, 50 publishes/s. Every check of
// the report must pass (runSoak fails otherwise). The settle wait covers
// the broker's idle handshake workers (they exit after 30 s); the heap
// bound is loose because no GC need run within it (make soak waits for
// Go's forced GC and bounds the heap tightly).
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak takes ~50 s")
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	bin := filepath.Join(t.TempDir(), "wsbroker")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s",
			err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	o := &soakOptions{
		brokerBin:          bin,
		duration:           12 * time.Second,
		conns:              300,
		badRatio:           0.2,
		publishRate:        50,
		publishers:         4,
		hold:               time.Second,
		sourceAddrs:        8,
		settle:             45 * time.Second,
		maxGoroutineGrowth: 50,
		maxHeapGrowth:      256 << 20,
		dialTimeout:        10 * time.Second,
		jsonOut:            true,
	}
	var out bytes.Buffer
	err := runSoak(ctx, o, &out, &out)
	if err != nil {
		t.Fatalf("soak: %v\n%s",
			err, out.String())
	}
	var rep soakReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report: %v\n%s",
			err, out.String())
	}
	if rep.GoodUpgrades < 1000 || rep.BadAttempts < 200 {
		t.Fatalf("churn too small to mean anything: %d good, %d bad upgrades",
			rep.GoodUpgrades, rep.BadAttempts)
	}
	if rep.PeakServer < 250 {
		t.Fatalf("peak %v connections on the broker, want about 300",
			rep.PeakServer)
	}
	if rep.Stored == nil || len(rep.Checks) < 14 {
		t.Fatalf("report without the stream's counts or with %d checks:\n%s",
			len(rep.Checks), out.String())
	}
}

func TestSoakOptionsBounded(t *testing.T) {
	valid := func() soakOptions {
		return soakOptions{
			duration:    time.Minute,
			conns:       1000,
			badRatio:    0.2,
			publishRate: 50,
			publishers:  4,
			hold:        time.Second,
			sourceAddrs: 8,
		}
	}
	tests := []struct {
		name   string
		change func(o *soakOptions)
		want   string
	}{
		{
			name:   "valid",
			change: func(*soakOptions) {},
			want:   "",
		},
		{
			name:   "too many connections for one process",
			change: func(o *soakOptions) { o.conns = 20000 },
			want:   "--conns 20000",
		},
		{
			name:   "unbounded duration",
			change: func(o *soakOptions) { o.duration = 0 },
			want:   "--duration",
		},
		{
			name:   "longer than an hour",
			change: func(o *soakOptions) { o.duration = 2 * time.Hour },
			want:   "--duration",
		},
		{
			name:   "bad ratio above 1",
			change: func(o *soakOptions) { o.badRatio = 1.5 },
			want:   "--bad-ratio",
		},
		{
			name:   "publishing without publishers",
			change: func(o *soakOptions) { o.publishers = 0 },
			want:   "--publishers",
		},
		{
			name:   "target without its admin url and secret",
			change: func(o *soakOptions) { o.url = "ws://127.0.0.1:8080/ws" },
			want:   "--admin-url",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := valid()
			tt.change(&o)
			err := o.validate()
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("validate: %v",
					err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("validate: %v, want an error naming %s",
					err, tt.want)
			}
		})
	}
}

func TestSoakRefusesNonLoopback(t *testing.T) {
	o := &soakOptions{
		url:            "ws://192.0.2.1:8080/ws",
		adminURL:       "http://192.0.2.1:9090",
		hmacSecretFile: "unused",
		duration:       time.Second,
		conns:          1,
		hold:           time.Second,
		sourceAddrs:    1,
	}
	err := runSoak(context.Background(), o, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "loopback only") {
		t.Fatalf("soak against 192.0.2.1: %v, want refused (loopback only)",
			err)
	}
}
