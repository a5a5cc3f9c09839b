package brokertest

import (
	"bufio"
	"net"
	"net/http"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStart: the broker answers on its address (a request without a token
// is refused 401 missing_token), and Close may run before the test's own
// cleanup, more than once.
func TestStart(t *testing.T) {
	b := Start(t, Options{Secret: []byte("0123456789abcdef0123456789abcdef")})
	if !strings.HasPrefix(b.URL, "ws://127.0.0.1:") || !strings.HasSuffix(b.URL, "/ws") {
		t.Fatalf("URL %q", b.URL)
	}
	c, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("X-Wsbroker-Reason") != "missing_token" {
		t.Fatalf("answer %d %q, want 401 missing_token", resp.StatusCode, resp.Header.Get("X-Wsbroker-Reason"))
	}
	b.Close()
	b.Close()
}
