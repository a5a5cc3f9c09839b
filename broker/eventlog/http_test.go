package eventlog

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

const testJWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl"

func TestAdminAPI(t *testing.T) {
	l := openLog(t, Config{DataDir: t.TempDir()})
	ctx := testContext(t)
	a := opened("node-1", 1, 1, 1, "alice")
	l.Observe(ctx, a)
	l.Observe(ctx, withConn(a, 2, event.TypeSubscriptionAdded, "news"))
	l.Observe(ctx, opened("node-1", 1, 3, 2, "bob"))
	r := rejected("node-1", 1, 4, authn.ReasonExpired)
	// The broker redacts before emitting; the API redacts again.
	r.Detail = "token " + testJWT + " expired"
	l.Observe(ctx, r)
	l.Observe(ctx, rejected("node-1", 1, 5, authn.ReasonBadSignature))
	flush(t, l)
	testkit.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got, want := l.Projection().Seq(), lastSeq(t, l); got != want {
			return fmt.Errorf("projection at %d, want %d", got, want)
		}
		return nil
	})
	srv := httptest.NewServer(l.Handler())
	defer srv.Close()

	get := func(path string, wantStatus int, v any) string {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatalf("GET %s: %v",
				path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != wantStatus {
			t.Fatalf("GET %s: %d %s, want %d",
				path, resp.StatusCode, b, wantStatus)
		}
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatalf("GET %s: %v in %s",
					path, err, b)
			}
		}
		return string(b)
	}

	var p Presence
	get("/v1/presence", 200, &p)
	if p.Connections != 2 || p.Subjects["alice"] != 1 || p.Channels["news"] != 1 {
		t.Errorf("presence = %+v",
			p)
	}
	var cp ChannelPresence
	get("/v1/presence?channel=news", 200, &cp)
	if cp.Connections != 1 || cp.Subjects["alice"] != 1 {
		t.Errorf("presence in news = %+v",
			cp)
	}
	var cs []Conn
	get("/v1/connections?sub=bob", 200, &cs)
	if len(cs) != 1 || cs[0].ID != 2 || cs[0].Subject != "bob" {
		t.Errorf("connections of bob = %+v",
			cs)
	}

	// How the five events are stored depends on the batches the appender
	// took; each type's events, and each connection's, keep their order.
	all, err := l.Events(ctx, Query{})
	if err != nil {
		t.Fatalf("Events: %v",
			err)
	}
	checkOrder(t, all)
	ids := func(rs []Record) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Event.ID())
		}
		return out
	}
	if got := strings.Join(ids(all), " "); len(all) != 5 || !strings.HasPrefix(got, "node-1-1-1 ") {
		t.Fatalf("stored %s, want 5 events, alice's open first",
			got)
	}
	tests := []struct {
		query   string
		wantIDs []string
	}{
		{
			query:   "",
			wantIDs: ids(all),
		},
		{
			query:   "?type=connection.opened",
			wantIDs: []string{"node-1-1-1", "node-1-1-3"},
		},
		{
			query:   "?type=wsbroker.upgrade.rejected&reason=expired",
			wantIDs: []string{"node-1-1-4"},
		},
		{
			query:   "?limit=2",
			wantIDs: ids(all[3:]),
		},
		{
			query:   "?type=connection.opened&limit=1",
			wantIDs: []string{"node-1-1-3"},
		},
		{
			query:   "?since=" + all[1].Sequence() + "&limit=2",
			wantIDs: ids(all[1:3]),
		},
		{
			query:   "?since=" + all[4].Sequence(),
			wantIDs: ids(all[4:]),
		},
		{
			query:   "?since=" + time.Now().Add(-time.Hour).Format(time.RFC3339) + "&type=upgrade.rejected",
			wantIDs: []string{"node-1-1-4", "node-1-1-5"},
		},
	}
	for _, tt := range tests {
		var recs []Record
		body := get("/v1/events"+tt.query, 200, &recs)
		if got := ids(recs); strings.Join(got, " ") != strings.Join(tt.wantIDs, " ") {
			t.Errorf("/v1/events%s ids = %v, want %v",
				tt.query, got, tt.wantIDs)
		}
		if strings.Contains(body, "eyJhbGci") {
			t.Errorf("/v1/events%s serves a token: %s",
				tt.query, body)
		}
	}
	var recs []Record
	get("/v1/events?reason=expired", 200, &recs)
	if len(recs) != 1 || recs[0].Sequence() != all[3].Sequence() || !strings.Contains(recs[0].Event.Detail, "REDACTED") {
		t.Errorf("rejection served as %+v, want at %s",
			recs, all[3].Sequence())
	}

	for _, q := range []string{"?since=yesterday", "?since=1.x", "?since=1.-1", "?type=nope", "?reason=nope", "?limit=-1", "?limit=1001"} {
		get("/v1/events"+q, 400, nil)
	}

	var rj Rejections
	body := get("/v1/rejections", 200, &rj)
	if rj.ByReason["expired"] != 1 || len(rj.Recent) != 2 || strings.Contains(body, "eyJhbGci") {
		t.Errorf("rejections = %s",
			body)
	}
}
