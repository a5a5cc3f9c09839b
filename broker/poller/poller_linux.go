//go:build linux

package poller

import (
	"errors"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

const supported = true

// eventBatch is how many events one epoll_wait returns at most. A full batch
// only means another epoll_wait follows at once, so the value trades syscalls
// against the size of the event buffer; it is not a limit on connections.
const eventBatch = 128

// armEvents is the interest set of every watched socket: level-triggered, so
// bytes left unread after a handler make the socket ready again when it is
// re-armed, and one-shot, so it is reported once per arming.
const armEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

// wakeGen is the generation carried by the wake eventfd's events; descriptor
// generations start at 1.
const wakeGen = 0

type pollerSys struct {
	epfd   int
	wakefd int
	// table maps an fd to its Desc, under Poller.mu. Epoll's user data
	// cannot hold a Go pointer (the collector does not see kernel memory),
	// so events carry the fd and the Desc's generation instead.
	table   []*Desc
	gen     uint32
	waitErr error
}

type descSys struct {
	fd  int
	gen uint32
	raw syscall.RawConn
	// rearmFn is d.rearm bound once at Add, so that re-arming does not
	// allocate a closure per event.
	rearmFn func(fd uintptr)
	ctlErr  error
}

// ready is one event taken from the epoll batch.
type ready struct {
	d  *Desc
	ev Event
}

func (p *Poller) start() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf(
			"poller: epoll_create1: %w",
			err,
		)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf(
			"poller: eventfd: %w",
			err,
		)
	}
	ev := unix.EpollEvent{
		Events: unix.EPOLLIN,
		Fd:     int32(wakefd),
		Pad:    wakeGen,
	}
	err = unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev)
	if err != nil {
		unix.Close(wakefd)
		unix.Close(epfd)
		return fmt.Errorf(
			"poller: epoll_ctl add eventfd %d: %w",
			wakefd, err,
		)
	}
	p.epfd = epfd
	p.wakefd = wakefd
	p.tasks = make(chan *Desc, p.cfg.Queue)
	p.wg.Add(1 + p.cfg.Workers)
	go p.wait()
	for range p.cfg.Workers {
		go p.work()
	}
	return nil
}

func (p *Poller) add(conn net.Conn, h Handler) (*Desc, error) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf(
			"poller: add %T: %w",
			conn, ErrUnsupportedConn,
		)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf(
			"poller: add %T: syscall conn: %w",
			conn, err,
		)
	}
	d := &Desc{
		conn: conn,
		h:    h,
		p:    p,
	}
	d.raw = raw
	d.rearmFn = d.rearm

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	p.gen++
	if p.gen == wakeGen {
		p.gen++
	}
	d.gen = p.gen
	// Control holds a reference on the fd, so it cannot be closed and
	// reused while it is being registered.
	err = raw.Control(func(fd uintptr) {
		d.fd = int(fd)
		ev := unix.EpollEvent{
			Events: armEvents,
			Fd:     int32(fd),
			Pad:    int32(d.gen),
		}
		d.ctlErr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, d.fd, &ev)
	})
	if err != nil {
		return nil, fmt.Errorf(
			"poller: add %T: control: %w",
			conn, err,
		)
	}
	if d.ctlErr != nil {
		// EEXIST means this very socket is registered already: the same
		// conn was added twice.
		return nil, fmt.Errorf(
			"poller: epoll_ctl add fd %d: %w",
			d.fd, d.ctlErr,
		)
	}
	if d.fd >= len(p.table) {
		p.table = append(p.table, make([]*Desc, d.fd+1-len(p.table))...)
	}
	// A Desc still in the slot belongs to a conn that was closed without
	// Remove: its fd number has been reused. The kernel dropped its
	// registration with its socket; drop the Desc too.
	old := p.table[d.fd]
	if old != nil {
		old.mu.Lock()
		old.state.Store(stateRemoved)
		old.mu.Unlock()
	}
	p.table[d.fd] = d
	return d, nil
}

// rearm is called by RawConn.Control with d.mu held.
func (d *Desc) rearm(fd uintptr) {
	ev := unix.EpollEvent{
		Events: armEvents,
		Fd:     int32(fd),
		Pad:    int32(d.gen),
	}
	d.ctlErr = unix.EpollCtl(d.p.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
}

func (p *Poller) remove(d *Desc, closing bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state.Swap(stateRemoved) == stateRemoved || p.closed {
		return nil
	}
	if d.fd < len(p.table) && p.table[d.fd] == d {
		p.table[d.fd] = nil
	}
	if closing {
		// The close drops the registration; the cleared slot and the
		// generation discard any event still in flight until then.
		return nil
	}
	err := d.raw.Control(func(fd uintptr) {
		d.ctlErr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
	if err != nil {
		// The conn is closed (or closing): the kernel drops the
		// registration with the socket, and the cleared table slot and
		// generation discard any event still in flight.
		return nil
	}
	if d.ctlErr != nil && !errors.Is(d.ctlErr, unix.ENOENT) {
		return fmt.Errorf(
			"poller: epoll_ctl del fd %d: %w",
			d.fd, d.ctlErr,
		)
	}
	return nil
}

// resume is called with p.mu read-locked and the poller open.
func (p *Poller) resume(d *Desc) error {
	d.mu.Lock()
	if !d.state.CompareAndSwap(stateParked, stateArmed) {
		d.mu.Unlock()
		return ErrNotParked
	}
	err := d.raw.Control(d.rearmFn)
	if err == nil {
		err = d.ctlErr
	}
	if err != nil {
		d.state.Store(stateRemoved)
	}
	d.mu.Unlock()
	if err != nil {
		return fmt.Errorf(
			"poller: epoll_ctl mod fd %d: %w",
			d.fd, err,
		)
	}
	return nil
}

// forget drops d from the table after re-arming it failed, which happens when
// its conn was closed without Remove.
func (p *Poller) forget(d *Desc) {
	p.mu.Lock()
	if d.fd < len(p.table) && p.table[d.fd] == d {
		p.table[d.fd] = nil
	}
	p.mu.Unlock()
	d.state.Store(stateRemoved)
}

// removeAll is called by Close with p.mu held.
func (p *Poller) removeAll() {
	for _, d := range p.table {
		if d != nil {
			d.state.Store(stateRemoved)
		}
	}
	p.table = nil
}

// wake makes epoll_wait return. The eventfd is never read, so it stays
// readable (level-triggered) and every later epoll_wait returns at once too.
func (p *Poller) wake() {
	var one = [8]byte{1}
	for {
		_, err := unix.Write(p.wakefd, one[:])
		if err != unix.EINTR {
			return
		}
	}
}

// release closes the epoll and eventfd descriptors once every goroutine that
// could use them has returned.
func (p *Poller) release() error {
	errs := []error{p.waitErr}
	err := unix.Close(p.wakefd)
	if err != nil {
		errs = append(errs, fmt.Errorf(
			"poller: close eventfd %d: %w",
			p.wakefd, err,
		))
	}
	err = unix.Close(p.epfd)
	if err != nil {
		errs = append(errs, fmt.Errorf(
			"poller: close epoll fd %d: %w",
			p.epfd, err,
		))
	}
	return errors.Join(errs...)
}

// wait is the epoll goroutine: it turns events into tasks for the workers.
func (p *Poller) wait() {
	defer p.wg.Done()
	events := make([]unix.EpollEvent, eventBatch)
	batch := make([]ready, 0, eventBatch)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			// Only a broken epoll fd gets here (EBADF, EINVAL): Close
			// reports it.
			p.waitErr = fmt.Errorf(
				"poller: epoll_wait fd %d: %w",
				p.epfd, err,
			)
			return
		}
		woken := false
		batch = batch[:0]
		// Look up under the read lock, but send without it: a worker
		// blocked on Remove must not wait for a send that waits for it.
		p.mu.RLock()
		for i := range events[:n] {
			e := &events[i]
			if e.Pad == wakeGen {
				woken = true
				continue
			}
			fd := int(e.Fd)
			if fd >= len(p.table) {
				continue
			}
			d := p.table[fd]
			if d == nil || d.gen != uint32(e.Pad) {
				// An event read before Remove, or for an fd since
				// reused.
				continue
			}
			batch = append(batch, ready{
				d:  d,
				ev: toEvent(e.Events),
			})
		}
		p.mu.RUnlock()
		if woken {
			return
		}
		for i := range batch {
			r := &batch[i]
			if !r.d.state.CompareAndSwap(stateArmed, stateQueued) {
				continue
			}
			r.d.ev = r.ev
			select {
			case p.tasks <- r.d:
			case <-p.done:
				return
			}
			r.d = nil
		}
	}
}

func toEvent(events uint32) Event {
	var ev Event
	if events&unix.EPOLLIN != 0 {
		ev |= Readable
	}
	if events&(unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		ev |= HangUp
	}
	if events&unix.EPOLLERR != 0 {
		ev |= Error
	}
	return ev
}

// work is a worker goroutine.
func (p *Poller) work() {
	defer p.wg.Done()
	for {
		select {
		case d := <-p.tasks:
			p.run(d)
		case <-p.done:
			return
		}
	}
}

func (p *Poller) run(d *Desc) {
	if !d.state.CompareAndSwap(stateQueued, stateRunning) {
		return
	}
	if !d.h(d, d.ev) {
		d.state.CompareAndSwap(stateRunning, stateParked)
		return
	}
	d.mu.Lock()
	if !d.state.CompareAndSwap(stateRunning, stateArmed) {
		// Removed while the handler ran.
		d.mu.Unlock()
		return
	}
	err := d.raw.Control(d.rearmFn)
	if err == nil {
		err = d.ctlErr
	}
	d.mu.Unlock()
	if err != nil {
		p.forget(d)
	}
}
