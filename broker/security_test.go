package broker

import (
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// TestHostileHandshakes sends what attackers and broken clients send and
// checks each gets a precise answer while the server keeps serving.
func TestHostileHandshakes(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.FailureBurst = 0 }})
	tok := hsToken(t, validClaims("alice"))
	tests := []struct {
		name   string
		req    handshakeReq
		status int
		reason string
	}{
		{
			name:   "hundreds of subprotocol entries, token last",
			req:    handshakeReq{protocols: strings.Repeat("junk, ", 400) + "wsbroker.v1, bearer." + tok},
			status: http.StatusSwitchingProtocols,
		},
		{
			name: "many Sec-WebSocket-Protocol lines",
			req: handshakeReq{headers: func() [][2]string {
				var h [][2]string
				for i := 0; i < 15; i++ {
					h = append(h, [2]string{"Sec-WebSocket-Protocol", fmt.Sprintf("p%d", i)})
				}
				return h
			}()},
			status: http.StatusUnauthorized,
			reason: "missing_token",
		},
		{
			name: "hundreds of unrelated headers",
			req: handshakeReq{headers: func() [][2]string {
				h := [][2]string{auth(tok)}
				for i := 0; i < 300; i++ {
					h = append(h, [2]string{fmt.Sprintf("X-Pad-%d", i), "v"})
				}
				return h
			}()},
			status: http.StatusSwitchingProtocols,
		},
		{
			name:   "token of JSON garbage",
			req:    handshakeReq{headers: [][2]string{auth("eyJ" + strings.Repeat("A", 4000) + ".eyJ.x")}},
			status: http.StatusUnauthorized,
			reason: "malformed_token",
		},
		{
			name:   "header injection attempt in the token is refused by the b64token grammar",
			req:    handshakeReq{headers: [][2]string{{"Authorization", "Bearer a\tb"}}},
			status: http.StatusBadRequest,
			reason: "malformed_authorization",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.doHandshake(tt.req)
			if r.resp.StatusCode != tt.status || r.body.Reason != tt.reason {
				t.Fatalf("got %d %q, want %d %q",
					r.resp.StatusCode, r.body.Reason, tt.status, tt.reason)
			}
		})
	}
}

// TestFailedAttemptFlood rate-limits one address while another still
// connects.
func TestFailedAttemptFlood(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) {
		c.FailureBurst, c.FailureRate = 5, 0.001
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
	}})
	// The flood comes from 203.0.113.9 behind the trusted proxy (loopback).
	xff := [2]string{"X-Forwarded-For", "203.0.113.9"}
	limited := 0
	for i := 0; i < 20; i++ {
		r := b.doHandshake(handshakeReq{headers: [][2]string{xff}})
		if r.body.Reason == "rate_limited" {
			limited++
		}
	}
	if limited != 15 {
		t.Fatalf("%d of 20 attempts rate_limited, want 15 (burst 5)", limited)
	}
	// Even its good token is refused now...
	r := b.doHandshake(handshakeReq{headers: [][2]string{xff, auth(hsToken(t, validClaims("flood")))}})
	if r.body.Reason != "rate_limited" || r.resp.Header.Get("Retry-After") == "" {
		t.Fatalf("flooding address with a good token: %d %q", r.resp.StatusCode, r.body.Reason)
	}
	// ...while another client behind the same proxy connects.
	r = b.doHandshake(handshakeReq{headers: [][2]string{{"X-Forwarded-For", "198.51.100.7"}, auth(hsToken(t, validClaims("bob")))}})
	if r.resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("other client: %d %q", r.resp.StatusCode, r.body.Reason)
	}
	e := b.events.next(t, event.TypeConnectionOpened)
	if e.RemoteIP != netip.MustParseAddr("198.51.100.7") {
		t.Fatalf("client address %s, want the forwarded one", e.RemoteIP)
	}
}

// TestForwardedForNeedsTrustedProxy ignores X-Forwarded-For from a peer
// that is not a configured proxy: a client cannot dodge the limiter by
// inventing addresses.
func TestForwardedForNeedsTrustedProxy(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.FailureBurst, c.FailureRate = 2, 0.001 }})
	for i := 0; i < 2; i++ {
		b.doHandshake(handshakeReq{headers: [][2]string{{"X-Forwarded-For", fmt.Sprintf("192.0.2.%d", i)}}})
	}
	r := b.doHandshake(handshakeReq{headers: [][2]string{{"X-Forwarded-For", "192.0.2.99"}}})
	if r.body.Reason != "rate_limited" {
		t.Fatalf("reason %q: an untrusted X-Forwarded-For must not change the client address", r.body.Reason)
	}
	for {
		e := b.events.next(t, event.TypeUpgradeRejected)
		if e.Reason == authn.ReasonRateLimited {
			if e.RemoteIP != netip.MustParseAddr("127.0.0.1") {
				t.Fatalf("remote_ip %s, want the peer 127.0.0.1", e.RemoteIP)
			}
			break
		}
	}
}

// TestFrameSlowloris: a peer that sends half a frame and stalls is cut off
// by the frame read timeout instead of holding a worker.
func TestFrameSlowloris(t *testing.T) {
	b := newTestBroker(t, brokerOpts{cfg: func(c *Config) { c.FrameTimeout = 500 * time.Millisecond }})
	c := b.connect(validClaims("slow"))
	// A masked text frame header announcing 100 bytes, then 10 of them.
	hdr := []byte{0x81, 0x80 | 100, 1, 2, 3, 4}
	if _, err := c.c.Write(append(hdr, make([]byte, 10)...)); err != nil {
		t.Fatal(err)
	}
	other := b.connect(validClaims("other"))
	other.send(map[string]any{"type": "subscribe", "channel": "x", "id": 1})
	if m := other.read(); m["type"] != "ack" {
		t.Fatalf("other connection while one stalls mid-frame: %v", m)
	}
	_ = c.c.SetReadDeadline(time.Now().Add(15 * time.Second))
	e := b.events.next(t, event.TypeConnectionClosed)
	if e.Subject != "slow" || e.CloseReason != event.CloseReadError {
		t.Fatalf("closed %s with %s, want slow read_error", e.Subject, e.CloseReason)
	}
	// The peer sees the connection end.
	if _, err := io.ReadAll(c.br); err == nil {
		t.Logf("connection ended cleanly")
	}
}
