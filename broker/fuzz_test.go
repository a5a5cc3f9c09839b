package broker

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// FuzzClientMessage feeds arbitrary text messages to the wsbroker.v1
// handler of a live connection: no input may panic, and every input gets
// an answer or is ignored, never a hang.
func FuzzClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"subscribe","channel":"news","id":1}`,
		`{"type":"publish","channel":"news","data":{"a":[1,2,3]}}`,
		`{"type":"unsubscribe","channel":"news"}`,
		`{"type":"refresh","token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}`,
		`{"type":"subscribe","channel":"news","since":18446744073709551615}`,
		`{"type":1}`, `[]`, `null`, `{"id":` + string(make([]byte, 100)) + `}`,
	} {
		f.Add([]byte(s))
	}
	b := newTestBroker(f, brokerOpts{})
	claims := validClaims("fuzz")
	p, vd := b.srv.ver.Verify(f.Context(), []byte(hsToken(f, claims)))
	if vd.Reason != 0 {
		f.Fatal(vd.Reason)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		srvSide, cliSide := net.Pipe()
		defer cliSide.Close()
		go func() { _, _ = io.Copy(io.Discard, cliSide) }()
		c := &Conn{s: b.srv, id: 1 << 40, nc: srvSide, subject: "fuzz", opened: time.Now().UnixNano(), expIdx: -1}
		c.perms = b.srv.permissionsOf(&p)
		b.srv.mu.Lock()
		b.srv.conns[c.id] = c
		b.srv.bySubject[c.subject]++
		b.srv.connWG.Add(1)
		b.srv.mu.Unlock()
		c.message(ws.OpText, in)
		c.close(event.CloseClientClosed, ws.StatusNormalClosure, "")
	})
}

// FuzzGlob checks the matcher against its definition on short inputs:
// no panic, and a pattern without '*' matches only itself.
func FuzzGlob(f *testing.F) {
	f.Add("user:*:inbox", "user:alice:inbox")
	f.Add("**a*", "bbbab")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		got := Glob(pattern, name)
		hasStar := false
		for i := 0; i < len(pattern); i++ {
			if pattern[i] == '*' {
				hasStar = true
				break
			}
		}
		if !hasStar && got != (pattern == name) {
			t.Fatalf("Glob(%q, %q) = %v", pattern, name, got)
		}
		if pattern == "*" && !got {
			t.Fatalf("* must match %q", name)
		}
	})
}

// FuzzHandshake runs arbitrary request bytes through the upgrade path (the
// gobwas/ws callbacks, capture, extraction, verification, rejection).
func FuzzHandshake(f *testing.F) {
	tok := ""
	for _, s := range []string{
		"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wsbroker.v1, bearer.TOKEN\r\n\r\n",
		"GET /ws?access_token=a.b.c HTTP/1.1\r\nHost: x\r\nCookie: access_token=x\r\nAuthorization: Bearer y\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Protocol: access_token\r\nSec-WebSocket-Protocol: ,,,\r\n\r\n",
		"\r\n\r\n", "GET / HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	b := newTestBroker(f, brokerOpts{cfg: func(c *Config) {
		c.HandshakeTimeout = 200 * time.Millisecond
		c.MaxHandshakeBytes = 8 << 10
		c.FailureBurst = 0
	}})
	tok = hsToken(f, validClaims("fuzz"))
	f.Fuzz(func(t *testing.T, in []byte) {
		in = []byte(strings.ReplaceAll(string(in), "TOKEN", tok))
		srvSide, cliSide := net.Pipe()
		defer cliSide.Close()
		done := make(chan struct{})
		go func() {
			defer close(done)
			b.srv.handle(srvSide)
		}()
		go func() {
			_ = cliSide.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = cliSide.Write(in)
		}()
		_ = cliSide.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.Copy(io.Discard, cliSide)
		cliSide.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("handshake did not end within 5s for %q", in)
		}
		// An accepted connection is left to the broker; close it.
		b.srv.mu.Lock()
		var open []*Conn
		for _, c := range b.srv.conns {
			open = append(open, c)
		}
		b.srv.mu.Unlock()
		for _, c := range open {
			c.close(event.CloseClientClosed, ws.StatusNormalClosure, "")
		}
	})
}
