package faults

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openFDs counts the descriptors process pid holds.
func openFDs(t testing.TB, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("open descriptors of %d: %v", pid, err)
	}
	return len(ents)
}

// TestOutOfFileDescriptors: a broker at its open-file limit keeps running.
// An upgrade it cannot accept (accept4 fails with EMFILE) waits in the
// listen backlog, is not answered wrongly, and is served once connections
// close and free descriptors; the broker says why in its log.
func TestOutOfFileDescriptors(t *testing.T) {
	b := startBroker(t, brokerOpts{})
	pid := b.cmd.Process.Pid
	tok := hsToken(t, "fds")

	// Room for about `room` more descriptors from now on.
	const room = 6
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	lim := unix.Rlimit{Cur: uint64(openFDs(t, pid) + room), Max: old.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	var held []*wsConn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	// Fill the room with held connections until one upgrade is not
	// answered: the kernel completes its TCP handshake, the broker cannot
	// accept it. (The broker's own descriptors vary by one or two, the
	// file store opens and closes its block files, so the count is not
	// exact.)
	type result struct {
		status int
		err    error
	}
	var answered chan result
	for attempt := 0; answered == nil; attempt++ {
		if attempt > room+4 {
			t.Fatalf("every one of %d upgrades was answered with room for %d connections", attempt, room)
		}
		c, err := net.DialTimeout("tcp", b.wsAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		req := "GET /ws HTTP/1.1\r\nHost: " + b.wsAddr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
			"Sec-WebSocket-Protocol: wsbroker.v1\r\nAuthorization: Bearer " + tok + "\r\n\r\n"
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatalf("send: %v", err)
		}
		ch := make(chan result, 1)
		br := bufio.NewReader(c)
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				ch <- result{err: err}
				return
			}
			ch <- result{status: resp.StatusCode}
		}()
		select {
		case r := <-ch:
			if r.err != nil || r.status != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade %d below the limit: %d %v, want 101", attempt+1, r.status, r.err)
			}
			held = append(held, &wsConn{c: c, br: br})
		case <-time.After(1500 * time.Millisecond):
			// Not answered, not refused: waiting to be accepted.
			answered = ch
			defer c.Close()
		}
	}
	if !strings.Contains(b.stderr.String(), "too many open files") {
		t.Fatalf("no accept failure in the log:\n%s", b.stderr.String())
	}

	// Two connections go away: the waiting upgrade is served.
	for _, hc := range held[:2] {
		hc.Close()
	}
	held = held[2:]
	select {
	case r := <-answered:
		if r.err != nil || r.status != http.StatusSwitchingProtocols {
			t.Fatalf("after descriptors were freed: %d %v, want 101", r.status, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the waiting upgrade was not served after descriptors were freed:\n%s", b.stderr.String())
	}

	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	if _, err := b.get("/healthz"); err != nil {
		t.Fatalf("healthz after the limit: %v", err)
	}
	b.stop()
}
