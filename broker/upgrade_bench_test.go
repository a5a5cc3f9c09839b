package broker

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// BenchmarkUpgrade runs one complete handshake per op through the broker's
// own path (Server.handle: gobwas/ws upgrade, extraction, verification,
// events, metrics, and for an accepted upgrade registration, the
// connection's read loop and its close) over an in-memory net.Pipe, so the
// kernel's TCP costs are left out. The client side writes a prepared
// request and reads the response head into a fixed buffer; net.Pipe and
// the server goroutine are the only client-side allocations. A net.Pipe is
// not a socket epoll can watch, so accepted connections take the poller's
// blocking fallback (one goroutine) here, not the epoll path.
func BenchmarkUpgrade(b *testing.B) {
	tb := newTestBroker(b, brokerOpts{cfg: func(c *Config) {
		c.MaxConnsPerSubject = 0
		c.FailureBurst = 0
	}})
	rs, err := jwt.NewWithClaims(jwt.SigningMethodRS256, validClaims("bench")).SignedString(tb.rsaKey)
	if err != nil {
		b.Fatal(err)
	}
	bad, err := jwt.NewWithClaims(jwt.SigningMethodHS256, validClaims("bench")).SignedString([]byte("not-the-secret-not-the-secret-not-the"))
	if err != nil {
		b.Fatal(err)
	}
	cases := []struct {
		name   string
		header string
		status string
	}{
		{"accepted-HS256-header", "Authorization: Bearer " + hsToken(b, validClaims("bench")) + "\r\n", "101"},
		{"accepted-HS256-subprotocol", "Sec-WebSocket-Protocol: wsbroker.v1, bearer." + hsToken(b, validClaims("bench")) + "\r\n", "101"},
		{"accepted-RS256-header", "Authorization: Bearer " + rs + "\r\n", "101"},
		{"rejected-missing_token", "", "401"},
		{"rejected-bad_signature", "Authorization: Bearer " + bad + "\r\n", "401"},
	}
	for _, c := range cases {
		req := []byte(fmt.Sprintf("GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n", c.header))
		b.Run(c.name, func(b *testing.B) {
			buf := make([]byte, 4096)
			b.ReportAllocs()
			for b.Loop() {
				status, err := pipeUpgrade(tb.srv, req, buf)
				if err != nil {
					b.Fatal(err)
				}
				if status != c.status {
					b.Fatalf("status %s, want %s", status, c.status)
				}
			}
		})
	}
}

// pipeUpgrade hands one end of a net.Pipe to the server's handshake stage
// (as Serve would), writes req on the other, reads the response head and
// closes.
func pipeUpgrade(s *Server, req, buf []byte) (string, error) {
	client, conn := net.Pipe()
	defer client.Close()
	go s.handle(conn)
	if _, err := client.Write(req); err != nil {
		return "", fmt.Errorf("write request: %w", err)
	}
	n := 0
	for !bytes.Contains(buf[:n], []byte("\r\n\r\n")) {
		if n == len(buf) {
			return "", io.ErrShortBuffer
		}
		m, err := client.Read(buf[n:])
		if err != nil {
			return "", fmt.Errorf("read response: %w", err)
		}
		n += m
	}
	// "HTTP/1.1 101 ..."; the deferred close ends the connection (an
	// accepted one is then closed by the server as client_closed).
	if n < 12 {
		return "", fmt.Errorf("response %q", buf[:n])
	}
	switch string(buf[9:12]) {
	case "101":
		return "101", nil
	case "401":
		return "401", nil
	}
	return "", fmt.Errorf("response %q", buf[:n])
}
