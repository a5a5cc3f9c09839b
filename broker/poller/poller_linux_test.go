//go:build linux

package poller

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

func sysfd(t testing.TB, c net.Conn) int {
	t.Helper()
	raw, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatalf(
			"syscall conn: %v",
			err,
		)
	}
	fd := -1
	err = raw.Control(func(u uintptr) { fd = int(u) })
	if err != nil {
		t.Fatalf(
			"control: %v",
			err,
		)
	}
	return fd
}

func slot(p *Poller, fd int) *Desc {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if fd >= len(p.table) {
		return nil
	}
	return p.table[fd]
}

// reuseFD opens connections on ln until one end takes descriptor number
// fd (the kernel hands out the lowest free one); it returns that end and
// its peer.
func reuseFD(t testing.TB, ln net.Listener, fd int) (reused, peer net.Conn) {
	t.Helper()
	for range 256 {
		c, s := tcpPair(t, ln)
		switch fd {
		case sysfd(t, c):
			return c, s
		case sysfd(t, s):
			return s, c
		}
	}
	t.Fatalf("fd %d was not reused by 256 new connections", fd)
	return nil, nil
}

// addCounting adds c with a handler that only counts its calls.
func addCounting(t *testing.T, p *Poller, c net.Conn, what string) (*Desc, *atomic.Int32) {
	t.Helper()
	calls := new(atomic.Int32)
	d, err := p.Add(c, func(*Desc, Event) bool {
		calls.Add(1)
		return true
	})
	if err != nil {
		t.Fatalf("add %s: %v", what, err)
	}
	return d, calls
}

// addByteReader adds c with a handler that reads one byte per call and
// sends it on the channel it returns.
func addByteReader(t *testing.T, p *Poller, c net.Conn, what string) (*Desc, <-chan byte) {
	t.Helper()
	got := make(chan byte, 1)
	d, err := p.Add(c, func(d *Desc, _ Event) bool {
		var b [1]byte
		if _, err := d.Conn().Read(b[:]); err != nil {
			return false
		}
		got <- b[0]
		return true
	})
	if err != nil {
		t.Fatalf("add %s: %v", what, err)
	}
	return d, got
}

func TestAddReusedFd(t *testing.T) {
	p := newPoller(t, Config{
		Workers: 1,
	})
	ln := newListener(t)
	_, serverA := tcpPair(t, ln)
	dA, callsA := addCounting(t, p, serverA, "A")
	oldfd := dA.fd
	// The caller's bug: closed without Remove.
	serverA.Close()

	reused, peer := reuseFD(t, ln, oldfd)
	dB, got := addByteReader(t, p, reused, fmt.Sprintf("B on reused fd %d", oldfd))
	if dA.state.Load() != stateRemoved {
		t.Fatalf(
			"stale Desc state = %d; want removed (%d)",
			dA.state.Load(), stateRemoved,
		)
	}
	// A late Remove of the stale Desc must not touch the new one.
	if err := p.Remove(dA); err != nil {
		t.Fatalf(
			"Remove stale Desc: %v",
			err,
		)
	}
	if s := slot(p, oldfd); s != dB {
		t.Fatalf(
			"table[%d] = %p; want the new Desc %p",
			oldfd, s, dB,
		)
	}
	for _, b := range []byte{7, 8} {
		write(t, peer, []byte{b})
		if g := <-got; g != b {
			t.Fatalf(
				"new Desc read %d; want %d",
				g, b,
			)
		}
	}
	if n := callsA.Load(); n != 0 {
		t.Fatalf(
			"stale handler called %d times; want 0",
			n,
		)
	}
}

func TestCloseWithoutRemoveInHandler(t *testing.T) {
	p := newPoller(t, Config{
		Workers: 1,
	})
	ln := newListener(t)
	client, server := tcpPair(t, ln)
	d, err := p.Add(server, func(d *Desc, ev Event) bool {
		d.Conn().Close()
		// Asks for more, but the fd is gone: re-arming fails and the
		// Desc is dropped.
		return true
	})
	if err != nil {
		t.Fatalf(
			"add: %v",
			err,
		)
	}
	fd := d.fd
	write(t, client, []byte{1})
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		if d.state.Load() != stateRemoved {
			return fmt.Errorf(
				"state = %d; want removed (%d)",
				d.state.Load(), stateRemoved,
			)
		}
		if slot(p, fd) == d {
			return fmt.Errorf(
				"table[%d] still holds the Desc",
				fd,
			)
		}
		return nil
	})
}

func TestAddTwice(t *testing.T) {
	p := newPoller(t, Config{
		Workers: 1,
	})
	ln := newListener(t)
	client, server := tcpPair(t, ln)
	got := make(chan byte, 1)
	d, err := p.Add(server, func(d *Desc, ev Event) bool {
		var b [1]byte
		d.Conn().Read(b[:])
		got <- b[0]
		return true
	})
	if err != nil {
		t.Fatalf(
			"add: %v",
			err,
		)
	}
	_, err = p.Add(server, func(*Desc, Event) bool { return true })
	if !errors.Is(err, unix.EEXIST) {
		t.Fatalf(
			"second Add of the same conn = %v; want %v",
			err, unix.EEXIST,
		)
	}
	if s := slot(p, d.fd); s != d {
		t.Fatalf(
			"table[%d] = %p; want the first Desc %p",
			d.fd, s, d,
		)
	}
	write(t, client, []byte{5})
	if b := <-got; b != 5 {
		t.Fatalf(
			"read %d; want 5",
			b,
		)
	}
}

// TestRemoveClosing: after RemoveClosing no handler runs for the Desc, even
// with data arriving before the close, and once the socket is closed its
// descriptor number serves a new connection (the close dropped the epoll
// registration that RemoveClosing left).
func TestRemoveClosing(t *testing.T) {
	p := newPoller(t, Config{Workers: 1})
	ln := newListener(t)
	clientA, serverA := tcpPair(t, ln)
	dA, callsA := addCounting(t, p, serverA, "A")
	oldfd := dA.fd
	if err := p.RemoveClosing(dA); err != nil {
		t.Fatalf("RemoveClosing: %v", err)
	}
	write(t, clientA, []byte{1}) // readable before the close
	barrier(t, p, ln)
	serverA.Close()

	reused, peer := reuseFD(t, ln, oldfd)
	dB, got := addByteReader(t, p, reused, fmt.Sprintf("B on reused fd %d (the registration outlived the close)", oldfd))
	if s := slot(p, oldfd); s != dB {
		t.Fatalf("table[%d] = %p; want the new Desc %p", oldfd, s, dB)
	}
	write(t, peer, []byte{9})
	select {
	case b := <-got:
		if b != 9 {
			t.Fatalf("new Desc read %d; want 9", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for the connection on the reused descriptor")
	}
	if n := callsA.Load(); n != 0 {
		t.Fatalf("handler of the removed Desc called %d times; want 0", n)
	}
}
