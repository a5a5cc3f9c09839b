//go:build !linux

package broker

import (
	"errors"
	"net"
	"time"
)

// newTCPListener keeps net's listener: connections are read by one
// goroutine each here (package poller), through Go's network poller.
func newTCPListener(ln *net.TCPListener) (net.Listener, error) { return ln, nil }

// errWouldBlock is never returned here: reads wait on Go's network poller.
var errWouldBlock = errors.New("broker: read would block")

func readNow(nc net.Conn, p []byte) (int, error) { return nc.Read(p) }

func waitable(nc net.Conn) (net.Conn, error) { return nc, nil }

func soleDescriptor(net.Conn) bool { return false }

func setSendBuffer(nc net.Conn, n int) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetWriteBuffer(n)
	}
}

// detachConn keeps the net.Conn on builds without the epoll poller: their
// connections are read by one goroutine each (package poller).
func detachConn(nc net.Conn) net.Conn { return nc }

// closeFrameDeadline is the write deadline of a close frame: a second.
func closeFrameDeadline(_ net.Conn, now time.Time) time.Time { return now.Add(time.Second) }
