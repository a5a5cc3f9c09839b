package authn

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestREADMEReasons keeps the README's reason table true: every reason's
// label, status, description and hint appear on its row.
func TestREADMEReasons(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "| `") {
			label := strings.TrimPrefix(line, "| `")
			label = label[:strings.IndexByte(label, '`')]
			rows[label] = line
		}
	}
	for _, r := range Reasons() {
		row, ok := rows[r.String()]
		if !ok {
			t.Fatalf("README has no row for reason %s",
				r)
		}
		for _, want := range []string{"| " + strconv.Itoa(r.Status()) + " |", r.Description(), r.Hint()} {
			if !strings.Contains(row, want) {
				t.Fatalf("README row of %s lacks %q",
					r, want)
			}
		}
	}
}
