//go:build linux

package broker

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fdConn is an accepted TCP connection reduced to its socket. Once upgraded,
// an idle connection is only ever read when epoll (package poller) says so,
// so the Go runtime's network poller has nothing to do for it — yet a
// *net.TCPConn costs ~575 bytes of runtime memory (its pollDesc with two
// deadline timers, a finalizer record) and ~300 bytes of heap (netFD, two
// TCPAddr with their sockaddrs) per connection, about as much as everything
// else the broker keeps for an idle connection (docs/benchmarks.md). The
// socket is non-blocking (Go accepted it so); a read or write that would
// block waits in poll(2) until its deadline, which happens only for a frame
// that arrives in pieces or a peer that does not read. Those waits hold a
// thread, and are bounded by the poller's and the writer pool's workers;
// closes, which run on goroutines of their own, write their close frame
// without waiting (closeFrameDeadline).
//
// Close may run while a Read or Write is in progress on another goroutine:
// users hold a reference, Close shuts the socket down (which ends their
// waits) and the last one out closes the descriptor, so that its number is
// never reused under a reader, as internal/poll does for net.Conn.
type fdConn struct {
	fd int
	// state counts the Read, Write and Control calls in progress; closedBit
	// is set by Close.
	state atomic.Int64
	// rdl, wdl are the read and write deadlines in Unix nanoseconds, 0 for
	// none.
	rdl, wdl atomic.Int64
}

const fdClosedBit = 1 << 62

// detachConn turns an accepted *net.TCPConn into an fdConn: it duplicates
// the descriptor and closes the net.Conn, which releases its runtime
// resources. Other connections (TLS, in-memory, wrapped listeners) are
// returned unchanged.
func detachConn(nc net.Conn) net.Conn {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nc
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return nc
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || derr != nil {
		return nc
	}
	tc.Close()
	return &fdConn{fd: fd}
}

// tcpListener is the listener Listen returns on Linux: the broker accepts
// its connections itself, with accept4(2) on a duplicate of the socket that
// waits on Go's network poller (an *os.File's RawConn; a net.TCPListener's
// RawConn does not read). A connection accepted by net.TCPListener.Accept
// costs, before its handshake has read a byte, an epoll registration and
// its removal (the netFD), getsockname(2), the keep-alive and no-delay
// options, and for the poller a dup(2) and a close(2) more (detachConn):
// about a tenth of the server's CPU per accepted upgrade
// (docs/benchmarks.md). Here it costs the accept4 and TCP_NODELAY, the
// peer's address comes with the accept, and the connection is an fdConn
// from the start.
type tcpListener struct {
	ln  *net.TCPListener // set up the socket; closed with f
	f   *os.File         // the duplicate the accepts wait on
	acc *rawAcceptor
}

// newTCPListener takes over ln's socket.
func newTCPListener(ln *net.TCPListener) (net.Listener, error) {
	raw, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd, derr := -1, error(nil)
	if err := raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, os.NewSyscallError("dup", derr)
	}
	// The kernel hands over a connection once its first data has arrived
	// (or a second after the handshake, for a client that sends nothing),
	// so the first read nearly always finds the request and the handshake
	// stays on the socket; without it the accept often wins the race with
	// the request and 40% of the upgrades took the net.Conn path
	// (waitable). A client that sends nothing is handed over a second
	// later and gets its 408 at the handshake timeout (TestHandshakeLimits).
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 1)
	// Non-blocking (shared with ln's descriptor), so os.NewFile puts the
	// duplicate on Go's network poller.
	f := os.NewFile(uintptr(fd), "listener")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	a := &rawAcceptor{rc: rc}
	a.fn = a.try
	return &tcpListener{ln: ln, f: f, acc: a}, nil
}

func (l *tcpListener) Accept() (net.Conn, error) {
	a, err := l.acceptPeer()
	return a.c, err
}

// acceptPeer is Accept with the peer's address (Server.Serve).
func (l *tcpListener) acceptPeer() (accepted, error) { return l.acc.accept() }

// Close stops the accepts; the socket closes with its last descriptor.
func (l *tcpListener) Close() error {
	l.acc.closed.Store(true)
	ferr := l.f.Close()
	if err := l.ln.Close(); err != nil {
		return err
	}
	return ferr
}

func (l *tcpListener) Addr() net.Addr { return l.ln.Addr() }

// rawAcceptor runs accept4(2) for a tcpListener. Its buffers are reused, so
// an accept does not allocate beyond the fdConn; mu keeps them to one
// Accept at a time.
type rawAcceptor struct {
	mu   sync.Mutex
	rc   syscall.RawConn
	fn   func(fd uintptr) bool // a.try, bound once
	rsa  unix.RawSockaddrAny
	nfd  int
	serr error
	// closed is set by Close, before it wakes a waiting accept.
	closed atomic.Bool
}

// try runs on the listener's socket when Go's poller finds it readable; it
// reports false to wait again (EAGAIN).
func (a *rawAcceptor) try(fd uintptr) bool {
	for {
		l := uint32(unix.SizeofSockaddrAny)
		r, _, e := syscall.Syscall6(unix.SYS_ACCEPT4, fd, uintptr(unsafe.Pointer(&a.rsa)), uintptr(unsafe.Pointer(&l)),
			unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			a.nfd, a.serr = int(r), nil
			return true
		case unix.EINTR, unix.ECONNABORTED:
			// Interrupted, or a connection reset while queued (as
			// internal/poll does, try the next one).
			continue
		case unix.EAGAIN:
			return false
		}
		a.serr = os.NewSyscallError("accept4", e)
		return true
	}
}

// accept returns the next connection as an fdConn with its peer's address.
// A closed listener returns an error that wraps net.ErrClosed; EMFILE and
// its kind are Temporary, as from net.TCPListener.Accept.
func (a *rawAcceptor) accept() (accepted, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.rc.Read(a.fn); err != nil {
		if a.closed.Load() {
			err = net.ErrClosed // not the os.File's "use of closed file"
		}
		return accepted{}, &net.OpError{Op: "accept", Net: "tcp", Err: err}
	}
	if a.serr != nil {
		return accepted{}, &net.OpError{Op: "accept", Net: "tcp", Err: a.serr}
	}
	fd := a.nfd
	// As net does for every TCP connection: frames are written whole, and
	// waiting for an ACK before the next small one only delays it.
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	return accepted{c: &fdConn{fd: fd}, peer: sockaddrAddr(&a.rsa)}, nil
}

// sockaddrAddr is the IP address of a raw socket address (IPv4-mapped IPv6
// addresses unmapped, as for net.TCPAddr in clientAddr).
func sockaddrAddr(rsa *unix.RawSockaddrAny) netip.Addr {
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(rsa))
		return netip.AddrFrom4(sa.Addr)
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(rsa))
		return netip.AddrFrom16(sa.Addr).Unmap()
	}
	return netip.Addr{}
}

// errWouldBlock is readNow's answer for a socket with nothing to read.
var errWouldBlock = errors.New("broker: read would block")

// readNow reads c without waiting when it is an fdConn: errWouldBlock when
// the socket holds nothing yet. Any other conn is read as usual.
func readNow(nc net.Conn, p []byte) (int, error) {
	c, ok := nc.(*fdConn)
	if !ok {
		return nc.Read(p)
	}
	return c.read(p, false)
}

// waitable returns a connection whose reads and writes wait on Go's network
// poller: an fdConn's socket as a *net.TCPConn (the fdConn is spent: its
// descriptor is closed and the net.Conn holds a duplicate), anything else
// unchanged. For a handshake that has to wait for its client, so that the
// wait parks a goroutine instead of holding a thread in poll(2).
func waitable(nc net.Conn) (net.Conn, error) {
	c, ok := nc.(*fdConn)
	if !ok {
		return nc, nil
	}
	if !c.state.CompareAndSwap(0, fdClosedBit) {
		return nil, net.ErrClosed
	}
	f := os.NewFile(uintptr(c.fd), "")
	tc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("broker: socket to net.Conn: %w", err)
	}
	return tc, nil
}

// soleDescriptor reports a connection whose socket has no descriptor but
// its own: an fdConn (accepted raw, or detached from its net.Conn).
func soleDescriptor(nc net.Conn) bool {
	_, ok := nc.(*fdConn)
	return ok
}

// setSendBuffer sets the socket's send buffer (SO_SNDBUF).
func setSendBuffer(nc net.Conn, n int) {
	switch c := nc.(type) {
	case *net.TCPConn:
		_ = c.SetWriteBuffer(n)
	case *fdConn:
		_ = (*fdRaw)(c).Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, n)
		})
	}
}

func (c *fdConn) acquire() bool {
	for {
		s := c.state.Load()
		if s&fdClosedBit != 0 {
			return false
		}
		if c.state.CompareAndSwap(s, s+1) {
			return true
		}
	}
}

func (c *fdConn) release() {
	if c.state.Add(-1) == fdClosedBit {
		unix.Close(c.fd)
	}
}

// Close closes the socket once no call uses it; calls in progress return.
func (c *fdConn) Close() error {
	for {
		s := c.state.Load()
		if s&fdClosedBit != 0 {
			return net.ErrClosed
		}
		if s == 0 {
			if !c.state.CompareAndSwap(0, fdClosedBit) {
				continue
			}
			return unix.Close(c.fd)
		}
		// Calls are in progress: take a reference of our own with the
		// closed bit, so that the descriptor cannot be closed (and its
		// number reused by another socket) between the bit and the
		// shutdown that wakes their waits; the last one out closes it.
		if !c.state.CompareAndSwap(s, (s+1)|fdClosedBit) {
			continue
		}
		_ = unix.Shutdown(c.fd, unix.SHUT_RDWR)
		c.release()
		return nil
	}
}

func (c *fdConn) Read(p []byte) (int, error) { return c.read(p, true) }

// read reads the socket; when it has nothing, it waits up to the read
// deadline, or returns errWouldBlock if wait is false.
func (c *fdConn) read(p []byte, wait bool) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	for {
		n, err := unix.Read(c.fd, p)
		switch {
		case err == nil && n == 0 && len(p) > 0:
			if c.state.Load()&fdClosedBit != 0 {
				return 0, net.ErrClosed
			}
			return 0, io.EOF
		case err == nil:
			return n, nil
		case err == unix.EINTR:
			continue
		case err != unix.EAGAIN:
			return 0, c.opError("read", err)
		case !wait:
			return 0, errWouldBlock
		}
		if err := c.wait(unix.POLLIN, &c.rdl); err != nil {
			return 0, err
		}
	}
}

func (c *fdConn) Write(p []byte) (int, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	n := 0
	for n < len(p) {
		m, err := unix.Write(c.fd, p[n:])
		switch {
		case err == nil:
			n += m
			continue
		case err == unix.EINTR:
			continue
		case err != unix.EAGAIN:
			return n, c.opError("write", err)
		}
		if err := c.wait(unix.POLLOUT, &c.wdl); err != nil {
			return n, err
		}
	}
	return n, nil
}

// maxIovecs bounds one writev; a longer batch takes several calls.
const maxIovecs = 64

// writeBuffers writes bufs with writev(2), like net.Buffers.WriteTo does for
// a *net.TCPConn, without allocating: the iovec array is on the stack.
func (c *fdConn) writeBuffers(bufs [][]byte) (int64, error) {
	if !c.acquire() {
		return 0, net.ErrClosed
	}
	defer c.release()
	var iov [maxIovecs]unix.Iovec
	var total int64
	for len(bufs) > 0 {
		if len(bufs[0]) == 0 {
			bufs = bufs[1:]
			continue
		}
		n := 0
		for _, b := range bufs {
			if n == maxIovecs {
				break
			}
			if len(b) == 0 {
				continue
			}
			iov[n].Base = &b[0]
			iov[n].SetLen(len(b))
			n++
		}
		r, _, e := syscall.Syscall(unix.SYS_WRITEV, uintptr(c.fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		switch {
		case e == 0:
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			if err := c.wait(unix.POLLOUT, &c.wdl); err != nil {
				return total, err
			}
			continue
		default:
			return total, c.opError("writev", e)
		}
		written := int(r)
		total += int64(written)
		for written > 0 {
			if written < len(bufs[0]) {
				bufs[0] = bufs[0][written:]
				break
			}
			written -= len(bufs[0])
			bufs = bufs[1:]
		}
	}
	return total, nil
}

// wait blocks until the socket is ready for ev, the deadline in dl passes
// (os.ErrDeadlineExceeded) or the conn is closed. A deadline moved while
// waiting is seen within a second.
func (c *fdConn) wait(ev int16, dl *atomic.Int64) error {
	for {
		if c.state.Load()&fdClosedBit != 0 {
			return net.ErrClosed
		}
		timeout := 1000
		if d := dl.Load(); d != 0 {
			left := d - time.Now().UnixNano()
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			timeout = int(min((left+int64(time.Millisecond)-1)/int64(time.Millisecond), 1000))
		}
		pfd := unix.PollFd{Fd: int32(c.fd), Events: ev}
		r, _, e := syscall.Syscall(unix.SYS_POLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(timeout))
		if e != 0 && e != unix.EINTR {
			return c.opError("poll", e)
		}
		if e == 0 && r > 0 {
			// Ready, hung up or errored: the next read or write says which.
			return nil
		}
	}
}

func (c *fdConn) opError(op string, err error) error {
	return &net.OpError{Op: op, Net: "tcp", Err: os.NewSyscallError(op, err)}
}

func (c *fdConn) setDeadline(dl *atomic.Int64, t time.Time) error {
	if t.IsZero() {
		dl.Store(0)
	} else {
		dl.Store(max(t.UnixNano(), 1))
	}
	return nil
}

func (c *fdConn) SetDeadline(t time.Time) error {
	c.setDeadline(&c.rdl, t)
	return c.setDeadline(&c.wdl, t)
}
func (c *fdConn) SetReadDeadline(t time.Time) error  { return c.setDeadline(&c.rdl, t) }
func (c *fdConn) SetWriteDeadline(t time.Time) error { return c.setDeadline(&c.wdl, t) }

// LocalAddr and RemoteAddr are not kept (they were two TCPAddr per
// connection); the client address is in the connection's events.
func (c *fdConn) LocalAddr() net.Addr  { return fdAddr{} }
func (c *fdConn) RemoteAddr() net.Addr { return fdAddr{} }

type fdAddr struct{}

func (fdAddr) Network() string { return "tcp" }
func (fdAddr) String() string  { return "" }

// SyscallConn lets the poller register the socket with epoll.
func (c *fdConn) SyscallConn() (syscall.RawConn, error) { return (*fdRaw)(c), nil }

// fdRaw is the syscall.RawConn of an fdConn; only Control is used.
type fdRaw fdConn

func (r *fdRaw) Control(f func(fd uintptr)) error {
	c := (*fdConn)(r)
	if !c.acquire() {
		return net.ErrClosed
	}
	defer c.release()
	f(uintptr(c.fd))
	return nil
}

var errRawIO = errors.New("broker: fdConn raw Read/Write are not supported")

func (r *fdRaw) Read(func(fd uintptr) bool) error  { return errRawIO }
func (r *fdRaw) Write(func(fd uintptr) bool) error { return errRawIO }

// closeFrameDeadline is the write deadline of a close frame. On an fdConn a
// wait would hold an OS thread, and closes run on goroutines of their own
// (10,000 slow consumers closed at once would be 10,000 threads): the
// frame is written if the socket takes it now, else dropped (the FIN
// follows). Other connections park a goroutine, not a thread: a second.
func closeFrameDeadline(nc net.Conn, now time.Time) time.Time {
	if _, ok := nc.(*fdConn); ok {
		return now
	}
	return now.Add(time.Second)
}
