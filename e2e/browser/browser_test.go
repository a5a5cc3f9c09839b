package browser

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestBrowserTransports connects from Chromium with every token transport a
// browser can use, subscribes, and receives a message published by a Go
// client.
func TestBrowserTransports(t *testing.T) {
	bctx := newBrowser(t)
	site := newPageServer(t)
	tests := []struct {
		name       string
		sources    string
		origins    []string
		query      func(tok string) string
		protocols  func(tok string) []string
		cookie     bool
		wantSource string
	}{
		{
			name:       "subprotocol bearer entry",
			protocols:  func(tok string) []string { return []string{authn.Protocol, "bearer." + tok} },
			wantSource: "subprotocol",
		},
		{
			name:       "subprotocol pair form",
			protocols:  func(tok string) []string { return []string{authn.Protocol, "access_token", tok} },
			wantSource: "subprotocol",
		},
		{
			name: "subprotocol kubernetes base64url form",
			protocols: func(tok string) []string {
				return []string{authn.Protocol, "base64url.bearer.authorization.k8s.io." + base64.RawURLEncoding.EncodeToString([]byte(tok))}
			},
			wantSource: "subprotocol",
		},
		{
			name:       "query with the query source enabled",
			sources:    "header,subprotocol,query",
			query:      func(tok string) string { return "access_token=" + tok },
			protocols:  func(string) []string { return []string{authn.Protocol} },
			wantSource: "query",
		},
		{
			name:       "cookie with an allowed origin",
			sources:    "header,subprotocol,cookie",
			origins:    []string{site.URL},
			protocols:  func(string) []string { return []string{authn.Protocol} },
			cookie:     true,
			wantSource: "cookie",
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBroker(t, brokerOpts{sources: tt.sources, origins: tt.origins})
			p := newTab(t, bctx, site.URL)
			tok := newToken(t, "browser-user", time.Hour)
			query := ""
			if tt.query != nil {
				query = tt.query(tok)
			}
			if tt.cookie {
				p.call(nil, "setCookie", "access_token", tok)
			}
			id := fmt.Sprintf("t%d", i)
			channel := fmt.Sprintf("news-%d", i)
			p.call(nil, "startRaw", id, b.url(query), tt.protocols(tok), channel)
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				r := p.raw(id)
				if r.Closed {
					return fmt.Errorf("closed with %d %q before subscribing", r.Code, r.Reason)
				}
				if !r.Subscribed {
					return fmt.Errorf("not subscribed yet: %+v", r)
				}
				return nil
			})
			b.publish(channel, map[string]any{"form": tt.name})
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				for _, m := range p.raw(id).Messages {
					d, _ := m["data"].(map[string]any)
					if m["type"] == "message" && m["channel"] == channel && d["form"] == tt.name {
						return nil
					}
				}
				return fmt.Errorf("message not received")
			})
			r := p.raw(id)
			if r.Protocol != authn.Protocol {
				t.Fatalf("selected protocol %q, want %q",
					r.Protocol, authn.Protocol)
			}
			b.waitUpgrades("accepted", "none", tt.wantSource, 1)
			p.call(nil, "closeRaw", id)
		})
	}
}

// TestBrowserRejections shows what a page can observe of a refused upgrade:
// nothing but 1006 in the default HTTP reject mode, the reason in a 44xx
// close in close mode. The server counts the reason either way.
func TestBrowserRejections(t *testing.T) {
	bctx := newBrowser(t)
	site := newPageServer(t)
	valid := newToken(t, "browser-user", time.Hour)
	expired := newToken(t, "browser-user", -time.Hour)
	tests := []struct {
		name        string
		sources     string
		mode        broker.RejectMode
		query       string
		protocols   []string
		wantOpened  bool
		wantCode    int
		wantReason  string
		countReason string
		countSource string
	}{
		{
			name:        "expired, http mode",
			protocols:   []string{authn.Protocol, "bearer." + expired},
			wantCode:    1006,
			countReason: "expired",
			countSource: "subprotocol",
		},
		{
			name:        "expired, close mode",
			mode:        broker.RejectClose,
			protocols:   []string{authn.Protocol, "bearer." + expired},
			wantOpened:  true,
			wantCode:    4401,
			wantReason:  "expired",
			countReason: "expired",
			countSource: "subprotocol",
		},
		{
			name:        "no token, http mode",
			protocols:   []string{authn.Protocol},
			wantCode:    1006,
			countReason: "missing_token",
			countSource: "none",
		},
		{
			name:        "no token, close mode",
			mode:        broker.RejectClose,
			protocols:   []string{authn.Protocol},
			wantOpened:  true,
			wantCode:    4401,
			wantReason:  "missing_token",
			countReason: "missing_token",
			countSource: "none",
		},
		{
			name:        "no protocol list at all, close mode",
			mode:        broker.RejectClose,
			protocols:   nil,
			wantOpened:  true,
			wantCode:    4401,
			wantReason:  "missing_token",
			countReason: "missing_token",
			countSource: "none",
		},
		{
			name:        "malformed token, close mode",
			mode:        broker.RejectClose,
			protocols:   []string{authn.Protocol, "bearer.not-a-jwt"},
			wantOpened:  true,
			wantCode:    4401,
			wantReason:  "malformed_token",
			countReason: "malformed_token",
			countSource: "subprotocol",
		},
		{
			name:        "token entry without wsbroker.v1, http mode",
			protocols:   []string{"bearer." + valid},
			wantCode:    1006,
			countReason: "protocol_not_offered",
			countSource: "subprotocol",
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBroker(t, brokerOpts{sources: tt.sources, rejectMode: tt.mode})
			p := newTab(t, bctx, site.URL)
			id := fmt.Sprintf("r%d", i)
			p.call(nil, "startRaw", id, b.url(tt.query), tt.protocols, "")
			var r rawRun
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if r = p.raw(id); !r.Closed {
					return fmt.Errorf("still open: %+v", r)
				}
				return nil
			})
			if r.Opened != tt.wantOpened || r.Code != tt.wantCode || r.Reason != tt.wantReason {
				t.Fatalf("page saw opened=%v code=%d reason=%q, want opened=%v code=%d reason=%q",
					r.Opened, r.Code, r.Reason, tt.wantOpened, tt.wantCode, tt.wantReason)
			}
			if tt.mode == broker.RejectHTTP && !r.Errored {
				t.Fatalf("a refused handshake did not fire onerror: %+v",
					r)
			}
			b.waitUpgrades("rejected", tt.countReason, tt.countSource, 1)
		})
	}
}

// TestBrowserDetectsBadServers proves that the tests would notice a broker
// that gets the subprotocol answer wrong: fake servers complete the
// handshake without selecting a protocol, or by echoing what the client
// offered. A browser drops the first and the list echo; it accepts an echo
// of the token entry (it was offered), which leaks the token to every proxy
// log and is caught by the JS client's protocol check.
func TestBrowserDetectsBadServers(t *testing.T) {
	bctx := newBrowser(t)
	site := newPageServer(t)
	tok := newToken(t, "browser-user", time.Hour)
	tests := []struct {
		name         string
		answer       func(offered []string) string
		wantOpened   bool
		wantProtocol string
	}{
		{
			name:   "101 without Sec-WebSocket-Protocol",
			answer: func([]string) string { return "" },
		},
		{
			name:   "the whole offered list echoed",
			answer: func(offered []string) string { return strings.Join(offered, ", ") },
		},
		{
			name:   "a protocol that was not offered",
			answer: func([]string) string { return "wsbroker.v2" },
		},
		{
			name:         "the token entry echoed",
			answer:       func(offered []string) string { return offered[len(offered)-1] },
			wantOpened:   true,
			wantProtocol: "bearer." + tok,
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeServer(t, tt.answer)
			p := newTab(t, bctx, site.URL)
			id := fmt.Sprintf("f%d", i)
			p.call(nil, "startRaw", id, f.url(), []string{authn.Protocol, "bearer." + tok}, "")
			var r rawRun
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				r = p.raw(id)
				switch {
				case r.Closed:
					return nil
				case tt.wantOpened && r.Opened:
					return nil
				}
				return fmt.Errorf("undecided: %+v", r)
			})
			if f.handshakes() != 1 {
				t.Fatalf("the fake server saw %d handshakes, want 1",
					f.handshakes())
			}
			if !tt.wantOpened {
				if r.Opened || r.Code != 1006 || !r.Errored {
					t.Fatalf("page saw opened=%v code=%d errored=%v, want a failed connection (1006, onerror, never onopen)",
						r.Opened, r.Code, r.Errored)
				}
				return
			}
			if !r.Opened || r.Protocol != tt.wantProtocol {
				t.Fatalf("page saw opened=%v protocol of %d bytes, want it open with the echoed token entry",
					r.Opened, len(r.Protocol))
			}
			// The client refuses such a server.
			p.call(nil, "startClient", "c"+id, map[string]any{
				"url":    f.url(),
				"tokens": []string{tok},
			})
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				c := p.client("c" + id)
				if c.Failed == nil || c.Failed.Reason != "protocol_mismatch" || c.lastState().State != "closed" {
					return fmt.Errorf("client did not refuse the server: %+v", c)
				}
				if strings.Contains(c.Failed.Message, tok) {
					return fmt.Errorf("the client's error message holds the token")
				}
				return nil
			})
			p.call(nil, "closeRaw", id)
		})
	}
}

// TestIncidentQueryTokenWhileQueryDisabled is the incident's regression: a
// browser client puts its token in the query string while the server reads
// only the header and the subprotocol. The page sees 1006 (HTTP mode) or
// the reason source_disabled (close mode); the server counts
// source_disabled/query, records it in the rejection event and marks the
// upgrade span with error.type=source_disabled, without the token anywhere.
func TestIncidentQueryTokenWhileQueryDisabled(t *testing.T) {
	bctx := newBrowser(t)
	site := newPageServer(t)
	tests := []struct {
		name       string
		mode       broker.RejectMode
		wantOpened bool
		wantCode   int
		wantReason string
		wantStatus int
	}{
		{
			name:       "http mode",
			mode:       broker.RejectHTTP,
			wantCode:   1006,
			wantStatus: 401,
		},
		{
			name:       "close mode",
			mode:       broker.RejectClose,
			wantOpened: true,
			wantCode:   4401,
			wantReason: "source_disabled",
			wantStatus: 4401,
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTestBroker(t, brokerOpts{sources: "header,subprotocol", rejectMode: tt.mode, tracing: true})
			p := newTab(t, bctx, site.URL)
			tok := newToken(t, "incident-user", time.Hour)
			id := fmt.Sprintf("i%d", i)
			p.call(nil, "startRaw", id, b.url("access_token="+tok), []string{authn.Protocol}, "")
			var r rawRun
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if r = p.raw(id); !r.Closed {
					return fmt.Errorf("still open: %+v", r)
				}
				return nil
			})
			if r.Opened != tt.wantOpened || r.Code != tt.wantCode || r.Reason != tt.wantReason {
				t.Fatalf("page saw opened=%v code=%d reason=%q, want opened=%v code=%d reason=%q",
					r.Opened, r.Code, r.Reason, tt.wantOpened, tt.wantCode, tt.wantReason)
			}
			b.waitUpgrades("rejected", "source_disabled", "query", 1)

			var ev event.Event
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				evs := b.events.find(event.TypeUpgradeRejected)
				if len(evs) != 1 {
					return fmt.Errorf("%d rejection events, want 1", len(evs))
				}
				ev = evs[0]
				return nil
			})
			if ev.Reason != authn.ReasonSourceDisabled || ev.Source != authn.SourceQuery || ev.Status != tt.wantStatus {
				t.Fatalf("event says reason=%s source=%s status=%d, want source_disabled/query/%d",
					ev.Reason, ev.Source, ev.Status, tt.wantStatus)
			}
			if !strings.Contains(ev.Detail, "found in disabled source query") {
				t.Fatalf("event detail %q does not say where the token was",
					ev.Detail)
			}
			for field, v := range map[string]string{"path": ev.Path, "detail": ev.Detail, "user_agent": ev.UserAgent, "origin": ev.Origin} {
				if strings.Contains(v, tok) || strings.Contains(v, tok[strings.LastIndexByte(tok, '.')+1:]) {
					t.Fatalf("event field %s holds the token: %q",
						field, v)
				}
			}
			if ev.Origin != site.URL {
				t.Fatalf("event origin %q, want the page's %q",
					ev.Origin, site.URL)
			}

			if err := b.tp.ForceFlush(context.Background()); err != nil {
				t.Fatal(err)
			}
			var upgrade sdktrace.ReadOnlySpan
			testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if err := b.tp.ForceFlush(context.Background()); err != nil {
					return err
				}
				for _, s := range b.spans.GetSpans().Snapshots() {
					if s.Name() == "ws.upgrade" {
						upgrade = s
						return nil
					}
				}
				return fmt.Errorf("no ws.upgrade span among %d", len(b.spans.GetSpans()))
			})
			attrs := attrMap(upgrade.Attributes())
			if attrs["error.type"] != "source_disabled" || attrs["authn.source"] != "query" {
				t.Fatalf("span error.type=%q authn.source=%q, want source_disabled/query",
					attrs["error.type"], attrs["authn.source"])
			}
			if ev.TraceID != upgrade.SpanContext().TraceID() {
				t.Fatalf("event trace id %s, span's %s",
					ev.TraceID, upgrade.SpanContext().TraceID())
			}
			for _, s := range b.spans.GetSpans().Snapshots() {
				for k, v := range attrMap(s.Attributes()) {
					if strings.Contains(v, tok) {
						t.Fatalf("span %s attribute %s holds the token",
							s.Name(), k)
					}
				}
			}
		})
	}
}

func attrMap(kvs []attribute.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[string(kv.Key)] = kv.Value.String()
	}
	return m
}

// TestBrowserClient drives clients/js/wsbroker.js in the page.
func TestBrowserClient(t *testing.T) {
	bctx := newBrowser(t)
	site := newPageServer(t)

	t.Run("subscribe, receive and publish", func(t *testing.T) {
		b := newTestBroker(t, brokerOpts{})
		p := newTab(t, bctx, site.URL)
		p.call(nil, "startClient", "c1", map[string]any{
			"url":     b.url(""),
			"tokens":  []string{newToken(t, "js-user", time.Hour)},
			"channel": "news",
		})
		waitClient(t, p, "c1", func(c clientRun) error {
			if c.Failed != nil {
				return fmt.Errorf("failed: %+v", *c.Failed)
			}
			if !c.Subscribed {
				return fmt.Errorf("not subscribed: %+v", c)
			}
			return nil
		})
		b.publish("news", map[string]any{"n": 1})
		waitClient(t, p, "c1", func(c clientRun) error {
			if len(c.Messages) != 1 || c.Messages[0]["channel"] != "news" {
				return fmt.Errorf("messages %v, want one on news", c.Messages)
			}
			return nil
		})
		var res struct {
			OK      bool    `json:"ok"`
			Offset  float64 `json:"offset"`
			Reason  string  `json:"reason"`
			Message string  `json:"message"`
		}
		p.call(&res, "clientPublish", "c1", "news", map[string]any{"n": 2})
		if !res.OK || res.Offset != 2 {
			t.Fatalf("publish from the client: %+v, want acked at offset 2",
				res)
		}
		p.call(&res, "clientPublish", "c1", "bad channel!", 1)
		if res.OK || res.Reason != "invalid_channel" {
			t.Fatalf("publish to a bad channel: %+v, want the server's reason invalid_channel",
				res)
		}
		b.waitUpgrades("accepted", "none", "subprotocol", 1)
		p.call(nil, "closeClient", "c1")
	})

	t.Run("expired token in close mode surfaces the reason and does not retry", func(t *testing.T) {
		b := newTestBroker(t, brokerOpts{rejectMode: broker.RejectClose})
		p := newTab(t, bctx, site.URL)
		p.call(nil, "startClient", "c2", map[string]any{
			"url":     b.url(""),
			"tokens":  []string{newToken(t, "js-user", -time.Hour)},
			"channel": "news",
		})
		c := waitClient(t, p, "c2", func(c clientRun) error {
			if c.lastState().State != "closed" {
				return fmt.Errorf("state %+v, want closed", c.lastState())
			}
			return nil
		})
		if len(c.Errors) == 0 || c.Errors[0].Reason != "expired" || c.Errors[0].Code != 4401 {
			t.Fatalf("client errors %+v, want expired/4401 first",
				c.Errors)
		}
		if c.lastState().Reason != "expired" {
			t.Fatalf("final state %+v, want closed with reason expired",
				c.lastState())
		}
		b.waitUpgrades("rejected", "expired", "subprotocol", 1)
	})

	t.Run("expired token in http mode is named by the client", func(t *testing.T) {
		b := newTestBroker(t, brokerOpts{})
		p := newTab(t, bctx, site.URL)
		p.call(nil, "startClient", "c3", map[string]any{
			"url":    b.url(""),
			"tokens": []string{newToken(t, "js-user", -time.Hour)},
		})
		c := waitClient(t, p, "c3", func(c clientRun) error {
			if c.Failed == nil {
				return fmt.Errorf("connect has not failed: %+v", c)
			}
			return nil
		})
		if c.Failed.Reason != "expired" || c.Failed.Code != 1006 {
			t.Fatalf("connect failed with %+v, want expired (detected by the client) and 1006",
				*c.Failed)
		}
		b.waitUpgrades("rejected", "expired", "subprotocol", 1)
	})

	t.Run("query transport against the incident's server", func(t *testing.T) {
		b := newTestBroker(t, brokerOpts{rejectMode: broker.RejectClose})
		p := newTab(t, bctx, site.URL)
		p.call(nil, "startClient", "c4", map[string]any{
			"url":       b.url(""),
			"transport": "query",
			"tokens":    []string{newToken(t, "js-user", time.Hour)},
		})
		c := waitClient(t, p, "c4", func(c clientRun) error {
			if c.lastState().State != "closed" {
				return fmt.Errorf("state %+v, want closed", c.lastState())
			}
			return nil
		})
		if len(c.Errors) == 0 || c.Errors[0].Reason != "source_disabled" || c.Errors[0].Code != 4401 {
			t.Fatalf("client errors %+v, want source_disabled/4401",
				c.Errors)
		}
		b.waitUpgrades("rejected", "source_disabled", "query", 1)
	})

	t.Run("auth failure reconnects when the provider has a new token", func(t *testing.T) {
		b := newTestBroker(t, brokerOpts{rejectMode: broker.RejectClose})
		p := newTab(t, bctx, site.URL)
		p.call(nil, "startClient", "c5", map[string]any{
			"url":    b.url(""),
			"tokens": []string{newToken(t, "js-user", -time.Hour), newToken(t, "js-user", time.Hour)},
		})
		waitClient(t, p, "c5", func(c clientRun) error {
			if c.lastState().State != "open" || len(c.Errors) == 0 {
				return fmt.Errorf("states %+v errors %+v, want open after an error", c.States, c.Errors)
			}
			return nil
		})
		b.waitUpgrades("rejected", "expired", "subprotocol", 1)
		b.waitUpgrades("accepted", "none", "subprotocol", 1)
		p.call(nil, "closeClient", "c5")
	})

	t.Run("refreshes the token before it expires", func(t *testing.T) {
		b := newTestBroker(t, brokerOpts{})
		p := newTab(t, bctx, site.URL)
		short := newToken(t, "js-user", 4*time.Second)
		shortExp := time.Unix(time.Now().Add(4*time.Second).Unix(), 0)
		p.call(nil, "startClient", "c6", map[string]any{
			"url":     b.url(""),
			"tokens":  []string{short, newToken(t, "js-user", time.Hour)},
			"channel": "news",
			"refresh": map[string]any{"marginMs": 1500},
		})
		waitClient(t, p, "c6", func(c clientRun) error {
			if !c.Subscribed {
				return fmt.Errorf("not subscribed: %+v", c)
			}
			return nil
		})
		testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
			if n := len(b.events.find(event.TypeTokenRefreshed)); n == 0 {
				return fmt.Errorf("no token.refreshed event")
			}
			return nil
		})
		// Past the first token's exp the connection is still open. This
		// waits for a deadline to pass, not for an event.
		time.Sleep(time.Until(shortExp.Add(time.Second)))
		b.publish("news", "after refresh")
		c := waitClient(t, p, "c6", func(c clientRun) error {
			if len(c.Messages) != 1 {
				return fmt.Errorf("messages %v", c.Messages)
			}
			return nil
		})
		for _, e := range b.events.find(event.TypeConnectionClosed) {
			if e.Subject == "js-user" {
				t.Fatalf("the refreshed connection closed: %s",
					e.CloseReason)
			}
		}
		if c.lastState().State != "open" {
			t.Fatalf("state %+v, want open",
				c.lastState())
		}
		p.call(nil, "closeClient", "c6")
	})
}

// TestBrowserClientReconnects drops the broker under an open client and
// brings another up on the same address: the client reconnects with
// backoff and subscribes again.
func TestBrowserClientReconnects(t *testing.T) {
	bctx := newBrowser(t)
	site := newPageServer(t)
	b1 := newTestBroker(t, brokerOpts{})
	p := newTab(t, bctx, site.URL)
	p.call(nil, "startClient", "c", map[string]any{
		"url":     b1.url(""),
		"tokens":  []string{newToken(t, "js-user", time.Hour)},
		"channel": "news",
	})
	waitClient(t, p, "c", func(c clientRun) error {
		if !c.Subscribed {
			return fmt.Errorf("not subscribed: %+v", c)
		}
		return nil
	})
	if err := b1.srv.Close(); err != nil {
		t.Fatal(err)
	}
	waitClient(t, p, "c", func(c clientRun) error {
		if c.lastState().State != "reconnecting" {
			return fmt.Errorf("state %+v, want reconnecting", c.lastState())
		}
		return nil
	})
	b2 := newTestBroker(t, brokerOpts{addr: b1.addr})
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := testkit.Metric(t, b2.reg, "wsbroker_subscriptions", map[string]string{}); n != 1 {
			return fmt.Errorf("%v subscriptions on the new broker, want 1", n)
		}
		return nil
	})
	b2.publish("news", "after reconnect")
	c := waitClient(t, p, "c", func(c clientRun) error {
		if len(c.Messages) != 1 {
			return fmt.Errorf("messages %v, want one", c.Messages)
		}
		return nil
	})
	if c.lastState().State != "open" || len(c.Errors) == 0 || c.Errors[0].Code != 1001 {
		t.Fatalf("state %+v errors %+v, want open again after a 1001 going-away close",
			c.lastState(), c.Errors)
	}
	p.call(nil, "closeClient", "c")
}

// TestClientHelpers checks the client's pure functions in the browser.
func TestClientHelpers(t *testing.T) {
	bctx := newBrowser(t)
	site := newPageServer(t)
	p := newTab(t, bctx, site.URL)
	now := time.Unix(1_800_000_000, 0)
	tokenFor := func(lifetime time.Duration, claims map[string]any) string {
		c := jwt.MapClaims{"sub": "zoë", "iat": now.Unix(), "exp": now.Add(lifetime).Unix()}
		for k, v := range claims {
			c[k] = v
		}
		s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(testSecret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	nowMS := now.UnixMilli()
	refresh := []struct {
		name   string
		token  string
		margin float64
		want   *float64
	}{
		{
			name:   "an hour: 10 % before exp",
			token:  tokenFor(time.Hour, nil),
			margin: 30000,
			want:   ptr(3240000.0),
		},
		{
			name:   "a minute: 30 s before exp",
			token:  tokenFor(time.Minute, nil),
			margin: 30000,
			want:   ptr(30000.0),
		},
		{
			name:   "ten seconds: half-way",
			token:  tokenFor(10*time.Second, nil),
			margin: 30000,
			want:   ptr(5000.0),
		},
		{
			name:   "expired: now",
			token:  tokenFor(-time.Minute, nil),
			margin: 30000,
			want:   ptr(0.0),
		},
		{
			name:   "no exp",
			token:  tokenFor(time.Hour, map[string]any{"exp": nil}),
			margin: 30000,
			want:   nil,
		},
		{
			name:   "not a JWT",
			token:  "opaque-token",
			margin: 30000,
			want:   nil,
		},
	}
	for _, tt := range refresh {
		var got *float64
		p.call(&got, "refreshDelay", tt.token, nowMS, tt.margin, 0.1)
		if (got == nil) != (tt.want == nil) || got != nil && *got != *tt.want {
			t.Fatalf("%s: refreshDelay = %v, want %v",
				tt.name, deref(got), deref(tt.want))
		}
	}
	var payload map[string]any
	p.call(&payload, "decodeJwtPayload", tokenFor(time.Hour, nil))
	if payload["sub"] != "zoë" {
		t.Fatalf("decoded sub %q, want the UTF-8 zoë",
			payload["sub"])
	}
	backoff := []struct {
		attempt int
		random  float64
		want    float64
	}{
		{
			attempt: 0,
			random:  0,
			want:    500,
		},
		{
			attempt: 3,
			random:  0,
			want:    4000,
		},
		{
			attempt: 10,
			random:  0,
			want:    30000,
		},
		{
			attempt: 10,
			random:  1,
			want:    15000,
		},
	}
	for _, tt := range backoff {
		var got float64
		p.call(&got, "backoffWith", tt.attempt, map[string]any{}, tt.random)
		if got != tt.want {
			t.Fatalf("backoffDelay(%d, random %v) = %v, want %v",
				tt.attempt, tt.random, got, tt.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func deref(p *float64) any {
	if p == nil {
		return nil
	}
	return *p
}

func waitClient(t *testing.T, p *page, id string, ok func(clientRun) error) clientRun {
	t.Helper()
	var c clientRun
	testkit.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		c = p.client(id)
		return ok(c)
	})
	return c
}
