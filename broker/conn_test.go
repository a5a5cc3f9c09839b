package broker

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/internal/wsframe"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// connect upgrades with claims and returns a client.
func (b *testBroker) connect(claims jwt.MapClaims) *wsClient {
	b.t.Helper()
	r := b.doHandshake(handshakeReq{protocols: "wsbroker.v1, bearer." + hsToken(b.t, claims)})
	if r.resp.StatusCode != http.StatusSwitchingProtocols {
		b.t.Fatalf("upgrade: %d %+v", r.resp.StatusCode, r.body)
	}
	b.events.next(b.t, event.TypeConnectionOpened)
	return r.client(b.t)
}

func expectType(t testing.TB, m map[string]any, typ string) {
	t.Helper()
	if m["type"] != typ {
		t.Fatalf("got %v, want a %s frame", m, typ)
	}
}

func TestPubSub(t *testing.T) {
	b := newTestBroker(t, brokerOpts{})
	alice := b.connect(validClaims("alice"))
	bob := b.connect(validClaims("bob"))
	alice.send(map[string]any{"type": "subscribe", "channel": "news", "id": 1})
	expectType(t, alice.read(), "ack")
	bob.send(map[string]any{"type": "publish", "channel": "news", "id": "p1", "data": map[string]any{"text": "hello"}})
	ack := bob.read()
	expectType(t, ack, "ack")
	if ack["id"] != "p1" || ack["offset"] != float64(1) {
		t.Fatalf("publish ack %v", ack)
	}
	m := alice.read()
	expectType(t, m, "message")
	if m["channel"] != "news" || m["offset"] != float64(1) || m["data"].(map[string]any)["text"] != "hello" {
		t.Fatalf("message %v", m)
	}
	if got := testkit.Metric(t, b.reg, "wsbroker_subscriptions", nil); got != 1 {
		t.Fatalf("wsbroker_subscriptions %v", got)
	}
	alice.send(map[string]any{"type": "unsubscribe", "channel": "news", "id": 2})
	expectType(t, alice.read(), "ack")
	alice.send(map[string]any{"type": "unsubscribe", "channel": "news", "id": 3})
	if e := alice.read(); e["reason"] != "not_subscribed" {
		t.Fatalf("second unsubscribe: %v", e)
	}
}

func TestPermissions(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.PublishClaim = "publish" }})
	claims := validClaims("alice")
	claims["channels"] = []string{"news", "user:alice:*"}
	claims["publish"] = "user:alice:*"
	c := b.connect(claims)
	tests := []struct {
		msg    map[string]any
		want   string
		reason string
	}{
		{
			msg:  map[string]any{"type": "subscribe", "channel": "user:alice:inbox"},
			want: "ack",
		},
		{
			msg:    map[string]any{"type": "subscribe", "channel": "user:bob:inbox"},
			want:   "error",
			reason: "permission_denied",
		},
		{
			msg:    map[string]any{"type": "publish", "channel": "news", "data": 1},
			want:   "error",
			reason: "permission_denied",
		},
		{
			msg:  map[string]any{"type": "publish", "channel": "user:alice:inbox", "data": 1},
			want: "ack",
		},
		{
			msg:    map[string]any{"type": "subscribe", "channel": "bad channel"},
			want:   "error",
			reason: "invalid_channel",
		},
		{
			msg:    map[string]any{"type": "dance"},
			want:   "error",
			reason: "bad_request",
		},
	}
	for _, tt := range tests {
		c.send(tt.msg)
		var got map[string]any
		for {
			got = c.read()
			if got["type"] != "message" {
				break
			}
		}
		if got["type"] != tt.want || tt.reason != "" && got["reason"] != tt.reason {
			t.Fatalf("%v: got %v, want %s %s",
				tt.msg, got, tt.want, tt.reason)
		}
	}
}

func TestSlowConsumer(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.SendQueue = 4; c.SocketSendBuffer = 4096 }})
	slow := b.connect(validClaims("slow"))
	fast := b.connect(validClaims("fast"))
	pub := b.connect(validClaims("pub"))
	if tc, ok := slow.c.(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	for _, c := range []*wsClient{slow, fast} {
		c.send(map[string]any{"type": "subscribe", "channel": "firehose"})
		expectType(t, c.read(), "ack")
	}
	const n = 300
	payload := strings.Repeat("x", 8000)
	var wg sync.WaitGroup
	wg.Add(1)
	received := 0
	got := make(chan struct{}, n)
	go func() {
		defer wg.Done()
		for received < n {
			m := fast.read()
			if m["type"] == "message" {
				received++
				got <- struct{}{}
			}
		}
	}()
	// The publisher waits until the fast consumer has each message: it
	// keeps up with that pace, the slow one (which never reads) cannot.
	for i := 0; i < n; i++ {
		pub.send(map[string]any{"type": "publish", "channel": "firehose", "data": payload})
		expectType(t, pub.read(), "ack")
		<-got
	}
	wg.Wait()
	e := b.events.next(t, event.TypeConnectionClosed)
	for e.Subject != "slow" {
		e = b.events.next(t, event.TypeConnectionClosed)
	}
	if e.CloseReason != event.CloseSlowConsumer || e.CloseCode != uint16(CloseSlowConsumer) {
		t.Fatalf("slow consumer closed with %s %d",
			e.CloseReason, e.CloseCode)
	}
	if received != n {
		t.Fatalf("fast consumer got %d of %d", received, n)
	}
	if got := testkit.Metric(t, b.reg, "wsbroker_connection_closes_total", map[string]string{"reason": "slow_consumer"}); got != 1 {
		t.Fatalf("slow_consumer closes %v", got)
	}
}

func TestTokenExpiryAndRefresh(t *testing.T) {
	b := newTestBroker(t, brokerOpts{})
	short := func(sub string, d time.Duration) jwt.MapClaims {
		c := validClaims(sub)
		c["exp"] = time.Now().Add(d).Unix()
		return c
	}
	// Without a refresh the connection closes at exp with 4001.
	c := b.connect(short("alice", 2*time.Second))
	code, text := c.readClose()
	if code != CloseTokenExpired || text != "token_expired" {
		t.Fatalf("close %d %q, want %d token_expired",
			code, text, CloseTokenExpired)
	}
	e := b.events.next(t, event.TypeConnectionClosed)
	if e.CloseReason != event.CloseTokenExpired {
		t.Fatalf("close reason %s", e.CloseReason)
	}

	// A refresh for the same subject moves the deadline.
	r := b.connect(short("bob", 2*time.Second))
	r.send(map[string]any{"type": "refresh", "id": 1, "token": hsToken(t, short("bob", time.Hour))})
	expectType(t, r.read(), "ack")
	b.events.next(t, event.TypeTokenRefreshed)
	// A refresh for another subject is refused.
	r.send(map[string]any{"type": "refresh", "id": 2, "token": hsToken(t, short("mallory", time.Hour))})
	if m := r.read(); m["reason"] != "subject_mismatch" {
		t.Fatalf("foreign refresh: %v", m)
	}
	// Past the old exp the connection still works.
	time.Sleep(3 * time.Second)
	r.send(map[string]any{"type": "subscribe", "channel": "news", "id": 3})
	expectType(t, r.read(), "ack")
}

func TestControlFrames(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.MaxMessageSize = 1024 }})
	c := b.connect(validClaims("alice"))
	// Ping is answered with a pong carrying the same payload.
	if err := wsutil.WriteClientMessage(c.c, ws.OpPing, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	f, err := wsframe.Read(c.br, wsframe.DefaultLimit)
	if err != nil || f.Header.OpCode != ws.OpPong || string(f.Payload) != "hi" {
		t.Fatalf("pong: %v %+v", err, f.Header)
	}
	// A fragmented message is reassembled.
	msg := []byte(`{"type":"subscribe","channel":"news","id":7}`)
	frames := []ws.Frame{
		ws.NewFrame(ws.OpText, false, msg[:10]),
		ws.NewFrame(ws.OpContinuation, false, msg[10:20]),
		ws.NewFrame(ws.OpContinuation, true, msg[20:]),
	}
	for _, fr := range frames {
		if err := ws.WriteFrame(c.c, ws.MaskFrameInPlace(fr)); err != nil {
			t.Fatal(err)
		}
	}
	if m := c.read(); m["type"] != "ack" || m["id"] != float64(7) {
		t.Fatalf("fragmented subscribe: %v", m)
	}
	// Too large a message closes with 1009.
	c.send(map[string]any{"type": "publish", "channel": "news", "data": strings.Repeat("x", 2000)})
	if code, _ := c.readClose(); code != ws.StatusMessageTooBig {
		t.Fatalf("close %d, want 1009", code)
	}
	e := b.events.next(t, event.TypeConnectionClosed)
	if e.CloseReason != event.CloseMessageTooLarge {
		t.Fatalf("close reason %s", e.CloseReason)
	}
}

func TestShutdownDrains(t *testing.T) {
	b := newTestBroker(t, brokerOpts{})
	clients := make([]*wsClient, 5)
	for i := range clients {
		clients[i] = b.connect(validClaims(fmt.Sprintf("user-%d", i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- b.srv.Shutdown(ctx) }()
	for _, c := range clients {
		if code, _ := c.readClose(); code != ws.StatusGoingAway {
			t.Fatalf("close %d, want 1001", code)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := b.srv.Conns(); n != 0 {
		t.Fatalf("%d connections left", n)
	}
	if got := testkit.Metric(t, b.reg, "wsbroker_connection_closes_total", map[string]string{"reason": "server_shutdown"}); got != 5 {
		t.Fatalf("server_shutdown closes %v", got)
	}
	if got := testkit.Metric(t, b.reg, "wsbroker_connections", nil); got != 0 {
		t.Fatalf("wsbroker_connections %v", got)
	}
}

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern string
		name    string
		want    bool
	}{
		{pattern: "news", name: "news", want: true},
		{pattern: "news", name: "newsx", want: false},
		{pattern: "*", name: "anything:at:all", want: true},
		{pattern: "user:alice:*", name: "user:alice:inbox", want: true},
		{pattern: "user:alice:*", name: "user:alicex:inbox", want: false},
		{pattern: "a*b*c", name: "aXXbYYc", want: true},
		{pattern: "a*b*c", name: "aXXbYY", want: false},
		{pattern: "", name: "", want: true},
		{pattern: "**", name: "", want: true},
	}
	for _, tt := range tests {
		if got := Glob(tt.pattern, tt.name); got != tt.want {
			t.Fatalf("Glob(%q, %q) = %v, want %v",
				tt.pattern, tt.name, got, tt.want)
		}
	}
}

func TestIdleTimeoutAndLimits(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) {
		c.PingInterval, c.IdleTimeout = 200*time.Millisecond, 600*time.Millisecond
		c.MaxSubscriptions, c.MaxConns = 2, 2
	}})
	// A client that answers pings stays; the test's reader answers them.
	live := b.connect(validClaims("alive"))
	quiet := b.connect(validClaims("quiet"))
	// The node is full: a third connection is connection_limit.
	r := b.doHandshake(handshakeReq{headers: [][2]string{auth(hsToken(t, validClaims("third")))}})
	if r.body.Reason != "connection_limit" || r.resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("third connection: %d %+v", r.resp.StatusCode, r.body)
	}
	for i, ch := range []string{"a", "b", "c"} {
		live.send(map[string]any{"type": "subscribe", "channel": ch})
		m := live.read()
		if i < 2 && m["type"] != "ack" || i == 2 && m["reason"] != "subscription_limit" {
			t.Fatalf("subscribe %s: %v", ch, m)
		}
	}
	// The quiet client never reads, so it never answers the server's pings:
	// it is closed with 4000 idle_timeout. Meanwhile the live one keeps
	// talking (a ping every 100ms).
	var e event.Event
	deadline := time.After(10 * time.Second)
wait:
	for {
		select {
		case e = <-b.events.ch:
			if e.Type == event.TypeConnectionClosed {
				break wait
			}
		case <-time.After(100 * time.Millisecond):
			if err := wsutil.WriteClientMessage(live.c, ws.OpPing, nil); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatalf("no close within 10s")
		}
	}
	if e.Subject != "quiet" || e.CloseReason != event.CloseIdleTimeout || e.CloseCode != uint16(CloseIdle) {
		t.Fatalf("closed %s with %s %d, want quiet idle_timeout 4000", e.Subject, e.CloseReason, e.CloseCode)
	}
	_ = quiet
	// The live one, reading (and so answering pings), is still served.
	live.send(map[string]any{"type": "unsubscribe", "channel": "a", "id": 9})
	if m := live.read(); m["type"] != "ack" {
		t.Fatalf("live connection after the idle timeout of another: %v", m)
	}
}

// TestExpiryOrderAndCleanup: tokens expire in due order from one heap; a
// refresh moves its entry and a close removes it, so nothing piles up.
func TestExpiryOrderAndCleanup(t *testing.T) {
	b := newTestBroker(t, brokerOpts{})
	at := func(sub string, d time.Duration) jwt.MapClaims {
		c := validClaims(sub)
		c["exp"] = time.Now().Add(d).Unix()
		return c
	}
	c3 := b.connect(at("third", 3*time.Second))
	c2 := b.connect(at("second", 2*time.Second))
	keep := b.connect(at("kept", 2*time.Second))
	keep.send(map[string]any{"type": "refresh", "id": 1, "token": hsToken(t, at("kept", time.Hour))})
	expectType(t, keep.read(), "ack")
	for _, want := range []string{"second", "third"} {
		e := b.events.next(t, event.TypeConnectionClosed)
		if e.Subject != want || e.CloseReason != event.CloseTokenExpired {
			t.Fatalf("closed %s (%s), want %s token_expired",
				e.Subject, e.CloseReason, want)
		}
	}
	_, _ = c2, c3
	b.srv.expiries.mu.Lock()
	n := len(b.srv.expiries.h)
	b.srv.expiries.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d entries in the expiry heap, want the refreshed one", n)
	}
	keep.c.Close()
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		b.srv.expiries.mu.Lock()
		defer b.srv.expiries.mu.Unlock()
		if len(b.srv.expiries.h) != 0 {
			return fmt.Errorf("%d entries left after the last close", len(b.srv.expiries.h))
		}
		return nil
	})
}

// TestLimitRaceAfterUpgrade: two upgrades pass the limit check for the last
// slot; the one that registers second already saw its 101, so it is closed
// 4429 connection_limit and recorded as a refusal with the limit it hit, not
// dropped silently (it used to close with 1013 and no event).
func TestLimitRaceAfterUpgrade(t *testing.T) {
	var bp atomic.Pointer[testBroker]
	var calls atomic.Int32
	second := make(chan handshakeResp, 1)
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.MaxConns = 1 }, openHook: func() {
		if calls.Add(1) != 1 {
			return
		}
		// The first upgrade to get here lets a second one pass the limit
		// check and register before it goes on.
		b := bp.Load()
		second <- b.doHandshake(handshakeReq{headers: [][2]string{auth(hsToken(t, validClaims("bob")))}})
		testkit.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
			return wantCounter(b, "wsbroker_connections", nil, 1)
		})
	}})
	bp.Store(b)
	first := b.doHandshake(handshakeReq{headers: [][2]string{auth(hsToken(t, validClaims("alice")))}})
	won := <-second
	if first.resp.StatusCode != http.StatusSwitchingProtocols || won.resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("statuses %d and %d, want both 101", first.resp.StatusCode, won.resp.StatusCode)
	}
	code, text := first.client(t).readClose()
	if code != 4429 || text != "connection_limit" {
		t.Fatalf("loser closed %d %q, want 4429 connection_limit", code, text)
	}
	e := b.events.next(t, event.TypeUpgradeRejected)
	if e.Reason != authn.ReasonConnectionLimit || e.Status != 4429 || !strings.Contains(e.Detail, "max-conns 1 ") || e.RequestID == "" {
		t.Fatalf("event %s %d %q %q", e.Reason, e.Status, e.Detail, e.RequestID)
	}
	testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		return wantCounter(b, "wsbroker_upgrades_total", map[string]string{"result": "rejected", "reason": "connection_limit", "source": "header"}, 1)
	})
	if got := testkit.Metric(t, b.reg, "wsbroker_connections", nil); got != 1 {
		t.Fatalf("connections gauge %v, want 1 (the winner)", got)
	}
}

// TestFarExpiryEvent: a valid token whose exp lies past the year 9999 (any
// number is a valid exp) is accepted, and its connection.opened event
// carries the last second of 9999, which the event log can encode, instead
// of a time no event can carry.
func TestFarExpiryEvent(t *testing.T) {
	b := newTestBroker(t, brokerOpts{})
	c := validClaims("far")
	c["exp"] = int64(253402300800 + 86400) // 10000-01-02
	r := b.doHandshake(handshakeReq{headers: [][2]string{auth(hsToken(t, c))}})
	if r.resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", r.resp.StatusCode)
	}
	e := b.events.next(t, event.TypeConnectionOpened)
	if !e.TokenExpiry.Equal(maxEventTime) {
		t.Fatalf("token expiry in the event %s, want %s", e.TokenExpiry, maxEventTime)
	}
	if _, err := e.AppendJSON(nil); err != nil {
		t.Fatalf("the event does not encode: %v", err)
	}
}
