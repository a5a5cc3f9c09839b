//go:build !linux

package broker

import "net"

// detachConn keeps the net.Conn on builds without the epoll poller: their
// connections are read by one goroutine each (package poller).
func detachConn(nc net.Conn) net.Conn { return nc }
