package main

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rxStampReader reads a TCP socket with recvmsg and keeps the kernel's
// receive timestamp (SO_TIMESTAMPNS) of the last bytes read: when they
// reached this socket, whatever the client's own goroutines were doing then.
// On a loopback benchmark where client and server share two CPUs, that is
// the server's delivery time; the time a reader goroutine got to run adds
// the client's scheduling of 10,000 readers on top.
type rxStampReader struct {
	rc   syscall.RawConn
	oob  [64]byte
	last atomic.Int64 // Unix ns of the last read; 0 when it had no stamp
}

// enableRxStamps asks the kernel to timestamp what c receives.
func enableRxStamps(c net.Conn) (*rxStampReader, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil {
		return nil, err
	}
	if serr != nil {
		return nil, serr
	}
	return &rxStampReader{rc: rc}, nil
}

func (r *rxStampReader) Read(p []byte) (int, error) {
	var n, oobn int
	var rerr error
	err := r.rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), p, r.oob[:], 0)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return 0, err
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	// 0 when these bytes came without a stamp (the kernel turns receive
	// stamping on in deferred work), so that a delivery is never timed by
	// an earlier read's stamp.
	ts, _ := rxStamp(r.oob[:oobn])
	r.last.Store(ts)
	return n, nil
}

// rxStamp returns the SCM_TIMESTAMPNS of a control message buffer.
func rxStamp(oob []byte) (int64, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= int(unsafe.Sizeof(unix.Timespec{})) {
			ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
			return ts.Nano(), true
		}
	}
	return 0, false
}
