package testkit

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// recorder is a testing.TB that records a Fatalf instead of stopping.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
}

func TestCheckFor(t *testing.T) {
	n := 0
	CheckFor(t, 5*time.Second, time.Millisecond, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if n != 3 {
		t.Fatalf("f called %d times, want 3", n)
	}
	r := &recorder{TB: t}
	CheckFor(r, 20*time.Millisecond, time.Millisecond, func() error { return errors.New("never") })
	if r.failed == "" || !strings.Contains(r.failed, "never") {
		t.Fatalf("a condition never met: %q, want a failure naming its last error", r.failed)
	}
}

func TestMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"a", "b"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "y", Help: "y"})
	reg.MustRegister(c, g)
	c.WithLabelValues("1", "2").Add(3)
	c.WithLabelValues("1", "3").Add(5)
	g.Set(7)
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"x_total", map[string]string{"a": "1", "b": "2"}, 3},
		{"x_total", map[string]string{"a": "1", "b": "3"}, 5},
		{"x_total", map[string]string{"a": "1"}, 0}, // labels must match exactly
		{"y", nil, 7},
		{"z", nil, 0},
	} {
		if got := Metric(t, reg, tt.name, tt.labels); got != tt.want {
			t.Errorf("Metric(%s, %v) = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
}

func TestFreePortsDiffer(t *testing.T) {
	p := FreePorts(t, 3)
	if p[0] == p[1] || p[1] == p[2] || p[0] == p[2] || p[0] == 0 {
		t.Fatalf("ports %v", p)
	}
}
