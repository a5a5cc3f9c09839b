package main

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSummarize(t *testing.T) {
	if s := summarize([]float64{3, 1, 2}); s.med != 2 || s.lo != 1 || s.hi != 3 || s.n != 3 {
		t.Fatalf("odd: %+v", s)
	}
	if s := summarize([]float64{4, 1, 2, 3}); s.med != 2.5 {
		t.Fatalf("even: %+v", s)
	}
	if s := summarize(nil); s.format(0) != "n/a" {
		t.Fatalf("empty: %q", s.format(0))
	}
}

// TestRatiosPairRounds checks that a ratio divides values of the same
// round only.
func TestRatiosPairRounds(t *testing.T) {
	r := results{}
	r.add("wsbroker", "m", 0, 10)
	r.add("wsbroker", "m", 1, 30)
	r.add("wsbroker", "m", 2, 99) // no baseline in round 2
	r.add("baseline", "m", 0, 5)
	r.add("baseline", "m", 1, 10)
	s := summarize(r.ratios("wsbroker", "baseline", "m"))
	if s.n != 2 || s.lo != 2 || s.hi != 3 {
		t.Fatalf("ratios %+v", s)
	}
	var b strings.Builder
	r.print(&b, false)
	if !strings.Contains(b.String(), "| accepted HS256 handshakes/s |") {
		t.Fatalf("table:\n%s", b.String())
	}
}
