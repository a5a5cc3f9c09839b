//go:build !linux

package broker

import (
	"net"
	"time"
)

// detachConn keeps the net.Conn on builds without the epoll poller: their
// connections are read by one goroutine each (package poller).
func detachConn(nc net.Conn) net.Conn { return nc }

// closeFrameDeadline is the write deadline of a close frame: a second.
func closeFrameDeadline(_ net.Conn, now time.Time) time.Time { return now.Add(time.Second) }
