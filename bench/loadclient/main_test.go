package main

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestDataField(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{`{"type":"message","channel":"bench","offset":3,"data":1700000000123456789}`, 1700000000123456789, true},
		{`{"type":"message","channel":"bench","data":42,"offset":3}`, 42, true},
		{`{"type":"ack","id":2,"offset":3}`, 0, false},
		{`{"type":"message","channel":"bench","data":"x"}`, 0, false},
	} {
		got, ok := dataField([]byte(c.in))
		if got != c.want || ok != c.ok {
			t.Errorf("dataField(%s) = %d, %v; want %d, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

// TestRunHandshakes drives a stub server that answers every request with
// 101 from several source addresses and counts what it saw.
func TestRunHandshakes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	sources := make(chan string, 1<<16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
				select {
				case sources <- host:
				default:
				}
				_, _ = c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
				_, _ = c.Read(make([]byte, 1))
			}()
		}
	}()
	req := []byte("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := runHandshakes(ln.Addr().String(), req, 101, 4, 300*time.Millisecond, &dialer{sources: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK == 0 || res.Unexpected != 0 || res.Errors != 0 {
		t.Fatalf("result %+v", res)
	}
	seen := map[string]bool{}
	for len(sources) > 0 {
		seen[<-sources] = true
	}
	if len(seen) != 3 {
		t.Fatalf("source addresses %v, want 3", seen)
	}
	// The same server is "unexpected" for a rejection case.
	res, err = runHandshakes(ln.Addr().String(), req, 401, 2, 100*time.Millisecond, &dialer{sources: 1})
	if err == nil || res.Unexpected == 0 {
		t.Fatalf("want unexpected statuses and an error, got %+v, %v", res, err)
	}
}

// TestRxStampReader: the reader returns the bytes sent, a kernel receive
// time taken between the write and the read, and io.EOF at the peer's close.
func TestRxStampReader(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rx, err := enableRxStamps(c)
	if err != nil || rx == nil {
		t.Fatalf("enableRxStamps: %v, %v", rx, err)
	}
	srv := <-accepted
	buf := make([]byte, 16)
	// The kernel switches receive timestamping on for the whole host in
	// deferred work after the first socket asks for it: the first bytes
	// may come without a stamp. Every message must read back whole; one of
	// the first 50 must carry a stamp taken between its write and its read.
	for i := 0; ; i++ {
		rx.last.Store(0)
		before := time.Now().UnixNano()
		if _, err := srv.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := rx.Read(buf)
		after := time.Now().UnixNano()
		if err != nil || string(buf[:n]) != "hello" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		ts := rx.last.Load()
		if ts != 0 {
			if ts < before || ts > after {
				t.Fatalf("receive stamp %d outside [%d, %d]", ts, before, after)
			}
			break
		}
		if i == 49 {
			t.Fatalf("no receive timestamp in 50 messages")
		}
		time.Sleep(10 * time.Millisecond)
	}
	srv.Close()
	if n, err := rx.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("after close: %d, %v; want 0, EOF", n, err)
	}
}
