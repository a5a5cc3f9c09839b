//go:build linux

package broker

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/wsbroker/wsbroker/internal/testkit"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// fdPair returns a detached server end and the client end of a loopback TCP
// connection.
func fdPair(t *testing.T) (*fdConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	sc, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	fc, ok := detachConn(sc).(*fdConn)
	if !ok {
		t.Fatalf("detachConn(%T) did not detach", sc)
	}
	t.Cleanup(func() { fc.Close() })
	return fc, client
}

// awaitClosed waits for the error of a call (op) that was blocked when its
// conn or listener was closed: net.ErrClosed, within 5 s.
func awaitClosed(t *testing.T, op string, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("%s after close: %v; want net.ErrClosed", op, err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("%s still blocked 5s after close", op)
	}
}

func TestFDConnReadWrite(t *testing.T) {
	fc, client := fdPair(t)
	if _, err := client.Write([]byte("hello")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	buf := make([]byte, 5)
	_ = fc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(fc, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v; want hello", buf, err)
	}
	if _, err := fc.Write([]byte("world")); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "world" {
		t.Fatalf("client read %q, %v; want world", buf, err)
	}
	client.Close()
	if n, err := fc.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("read after peer close: %d, %v; want EOF", n, err)
	}
}

func TestFDConnReadDeadline(t *testing.T) {
	fc, _ := fdPair(t)
	_ = fc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	_, err := fc.Read(make([]byte, 1))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v; want os.ErrDeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("deadline of 50ms returned after %s", d)
	}
}

// A Close on another goroutine ends a blocked Read at once, and the
// descriptor is closed only when the Read has returned.
func TestFDConnCloseDuringRead(t *testing.T) {
	fc, _ := fdPair(t)
	errc := make(chan error, 1)
	go func() {
		_, err := fc.Read(make([]byte, 1))
		errc <- err
	}()
	// Let the read reach poll(2); an earlier Close is fine too.
	time.Sleep(20 * time.Millisecond)
	if err := fc.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	awaitClosed(t, "read", errc)
	if err := fc.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v; want net.ErrClosed", err)
	}
	if _, err := fc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v; want net.ErrClosed", err)
	}
}

// writeBuffers sends more buffers than one writev takes and more bytes than
// the socket buffer holds (partial writes, waits for POLLOUT), in order.
func TestFDConnWriteBuffers(t *testing.T) {
	fc, client := fdPair(t)
	var bufs [][]byte
	var want bytes.Buffer
	for i := range 3 * maxIovecs {
		b := bytes.Repeat([]byte{byte(i)}, 1+i*97%8192)
		bufs = append(bufs, b, nil)
		want.Write(b)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(client, int64(want.Len())))
		got <- b
	}()
	_ = fc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	n, err := fc.writeBuffers(bufs)
	if err != nil || n != int64(want.Len()) {
		t.Fatalf("writeBuffers: %d, %v; want %d bytes", n, err, want.Len())
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("client read %d bytes, differing from the %d written", len(b), want.Len())
	}
}

// A peer that does not read makes a write wait until its deadline.
func TestFDConnWriteDeadline(t *testing.T) {
	fc, _ := fdPair(t)
	_ = fc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	big := make([]byte, 64<<20)
	n, err := fc.Write(big)
	if !errors.Is(err, os.ErrDeadlineExceeded) || n == len(big) {
		t.Fatalf("write to a peer that does not read: %d, %v; want a deadline error", n, err)
	}
}

// TestListenAcceptPeer: Listen's connections are fdConns accepted with their
// peer's address, and Close ends a waiting Accept with net.ErrClosed.
func TestListenAcceptPeer(t *testing.T) {
	ln, err := Listen(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	pa, ok := ln.(peerAccepter)
	if !ok {
		t.Fatalf("Listen returned %T, want a peerAccepter", ln)
	}
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer client.Close()
	a, err := pa.acceptPeer()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	defer a.c.Close()
	if _, ok := a.c.(*fdConn); !ok {
		t.Fatalf("accepted %T, want *fdConn", a.c)
	}
	if want := client.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); a.peer != want {
		t.Fatalf("peer %v, want %v", a.peer, want)
	}
	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	buf := make([]byte, 4)
	_ = a.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(a.c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Accept wait on the poller
	if err := ln.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	awaitClosed(t, "accept", done)
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Fatal("dial after Close succeeded: the socket is still listening")
	}
}

// TestHandshakeInPieces: a request that is not all there at the first read
// moves to Go's network poller and is still upgraded and served.
func TestHandshakeInPieces(t *testing.T) {
	b := newTestBroker(t, brokerOpts{})
	c, err := net.DialTimeout("tcp", b.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET /ws HTTP/1.1\r\nHost: " + b.addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: wsbroker.v1\r\nAuthorization: Bearer " + hsToken(t, validClaims("alice")) + "\r\n\r\n"
	half := len(req) / 2
	if _, err := io.WriteString(c, req[:half]); err != nil {
		t.Fatal(err)
	}
	testkit.CheckFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if b.srv.waited.Load() == 0 {
			return errors.New("the handshake has not waited for the rest of its request")
		}
		return nil
	})
	if _, err := io.WriteString(c, req[half:]); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d, want 101", resp.StatusCode)
	}
	if e := b.events.next(t, event.TypeConnectionOpened); e.RemoteIP != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("remote_ip %v, want 127.0.0.1", e.RemoteIP)
	}
	w := &wsClient{t: t, c: c, br: br}
	w.send(map[string]any{"type": "subscribe", "channel": "news", "id": 1})
	expectType(t, w.read(), "ack")
	w.send(map[string]any{"type": "publish", "channel": "news", "data": "x"})
	got := map[any]int{}
	for range 2 { // the ack and the message, in either order
		m := w.read()
		if m["type"] == "message" && m["data"] != "x" {
			t.Fatalf("message %v, want data x", m)
		}
		got[m["type"]]++
	}
	if got["ack"] != 1 || got["message"] != 1 {
		t.Fatalf("got %v, want one ack and one message", got)
	}
}
