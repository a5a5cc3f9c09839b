// Package poller owns readiness notification for the broker's connections:
// it tells a bounded pool of workers which sockets have something to read, so
// that an idle connection holds neither a goroutine nor a read buffer.
//
// On Linux one epoll instance watches every registered socket with
// EPOLLIN|EPOLLRDHUP|EPOLLONESHOT (level-triggered). A single goroutine waits
// for events in batches and hands ready descriptors to Config.Workers worker
// goroutines through a queue of Config.Queue entries; when the queue is full
// the waiting goroutine blocks, so events are delayed, never dropped. The
// poller never reads: the handler does, on the worker, with whatever read
// deadline the caller sets. EPOLLONESHOT guarantees that at most one handler
// runs for a connection at a time; the handler's result re-arms the socket or
// parks it.
//
// The fallback costs one goroutine per connection: the goroutine calls the
// handler in a loop and the handler does a blocking read. It is used for every
// connection on non-Linux builds (Go has no portable readiness API) and, on
// every platform, for connections added with AddBlocking. TLS connections must
// use it: crypto/tls buffers decrypted bytes that the socket does not show as
// readable, so epoll would leave them unread.
package poller

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
)

// Event is a set of readiness flags passed to a Handler.
type Event uint8

// Readiness flags. More than one may be set: a peer that sends data and then
// closes is reported as Readable|HangUp, and the data is still readable.
const (
	// Readable means a read will not block (it may return io.EOF).
	Readable Event = 1 << iota
	// HangUp means the peer closed its side (EPOLLRDHUP) or the connection
	// is gone (EPOLLHUP).
	HangUp
	// Error means the socket has a pending error (EPOLLERR); the next read
	// or write returns it.
	Error
)

// String returns the flags joined by "|", for logs and test failures.
func (e Event) String() string {
	if e == 0 {
		return "0"
	}
	var s string
	for _, f := range [...]struct {
		bit  Event
		name string
	}{
		{
			bit:  Readable,
			name: "Readable",
		},
		{
			bit:  HangUp,
			name: "HangUp",
		},
		{
			bit:  Error,
			name: "Error",
		},
	} {
		if e&f.bit == 0 {
			continue
		}
		if s != "" {
			s += "|"
		}
		s += f.name
	}
	return s
}

// Handler is called on a worker when the connection of d is readable, hung up
// or errored; ev says which. The poller does not read: the handler reads from
// d.Conn(), normally with a read deadline so that a peer that stops in the
// middle of a frame cannot hold the worker forever.
//
// While a handler runs for a Desc no other handler runs for the same Desc.
// Returning true re-arms the socket: the handler runs again when there is
// more to read (at once, if unread bytes remain, since readiness is
// level-triggered). Returning false parks the Desc until Poller.Resume. After
// Poller.Remove, the result is ignored.
//
// In blocking mode (AddBlocking, and every Add on non-Linux builds) ev is
// always Readable and the handler is expected to block in Read; it is called
// again as soon as it returns true.
type Handler func(d *Desc, ev Event) (rearm bool)

// Config holds the Poller's knobs. The zero value selects the defaults.
type Config struct {
	// Workers is the number of goroutines that run handlers for
	// epoll-watched connections. A handler that reads a partial frame parks
	// its worker (a goroutine, not a thread) until the rest arrives or the
	// read deadline passes, so the pool should be larger than GOMAXPROCS for
	// a few slow peers not to stall the others. Zero means
	// 4*runtime.GOMAXPROCS(0). Unused on non-Linux builds.
	Workers int
	// Queue is the number of ready connections that may wait for a worker.
	// When it is full the epoll goroutine blocks until a worker is free.
	// Zero means 4096. Unused on non-Linux builds.
	Queue int
}

// DefaultQueue is the queue length used when Config.Queue is zero.
const DefaultQueue = 4096

// DefaultWorkers returns the worker count used when Config.Workers is zero.
func DefaultWorkers() int {
	return 4 * runtime.GOMAXPROCS(0)
}

// withDefaults validates cfg and fills its zero fields.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Workers < 0 {
		return cfg, fmt.Errorf(
			"poller: config: Workers must not be negative, got %d",
			cfg.Workers,
		)
	}
	if cfg.Queue < 0 {
		return cfg, fmt.Errorf(
			"poller: config: Queue must not be negative, got %d",
			cfg.Queue,
		)
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers()
	}
	if cfg.Queue == 0 {
		cfg.Queue = DefaultQueue
	}
	return cfg, nil
}

var (
	// ErrClosed is returned by Add, AddBlocking and Resume after Close.
	ErrClosed = errors.New("poller: closed")
	// ErrUnsupportedConn is returned by Add for a connection whose socket is
	// not reachable through syscall.Conn (for example *tls.Conn or a
	// net.Pipe end). Use AddBlocking for those.
	ErrUnsupportedConn = errors.New("poller: connection does not expose its socket")
	// ErrNotParked is returned by Resume for a Desc that is not parked.
	ErrNotParked = errors.New("poller: desc is not parked")
)

// Desc states. A Desc moves armed -> queued -> running -> armed (handler
// returned true) or parked (false); removed is final.
const (
	stateArmed uint32 = iota
	stateQueued
	stateRunning
	stateParked
	stateRemoved
)

// Desc is a connection registered with a Poller.
type Desc struct {
	conn     net.Conn
	h        Handler
	p        *Poller
	blocking bool
	state    atomic.Uint32
	// ev carries the flags of one event from the epoll goroutine to the
	// worker; the state transitions order the write before the read.
	ev Event
	// mu orders re-arming against Remove so that a late EPOLL_CTL_MOD
	// cannot follow the EPOLL_CTL_DEL (and a later Add of the same conn).
	mu sync.Mutex
	descSys
}

// Conn returns the connection d was registered with.
func (d *Desc) Conn() net.Conn {
	return d.conn
}

// Poller watches sockets for readability and runs a handler on a bounded
// worker pool. Its methods are safe for concurrent use.
type Poller struct {
	cfg   Config
	tasks chan *Desc
	done  chan struct{}
	// wg counts the epoll goroutine, the workers and blocking-mode loops.
	wg sync.WaitGroup

	// mu guards closed, blocking and the platform's descriptor table.
	mu       sync.RWMutex
	closed   bool
	blocking map[*Desc]struct{}

	closeOnce sync.Once
	closeErr  error

	pollerSys
}

// Supported reports whether Add watches sockets with epoll. When it returns
// false, Add behaves like AddBlocking.
func Supported() bool {
	return supported
}

// New returns a running Poller. Close it to stop its goroutines.
func New(cfg Config) (*Poller, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	p := &Poller{
		cfg:      cfg,
		done:     make(chan struct{}),
		blocking: make(map[*Desc]struct{}),
	}
	err = p.start()
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Add registers conn and calls h whenever it becomes readable. On Linux the
// socket is watched by epoll and no goroutine is held while it is idle; conn
// must expose its socket through syscall.Conn (ErrUnsupportedConn otherwise).
// On other platforms Add is AddBlocking.
//
// The descriptor is used as is, without dup: Remove the Desc before closing
// conn. A Desc whose conn was closed without Remove may still see its handler
// called once (its reads then fail with net.ErrClosed); it is dropped when
// re-arming fails or when another Add reuses its fd, and events meant for it
// never reach the new Desc.
func (p *Poller) Add(conn net.Conn, h Handler) (*Desc, error) {
	if conn == nil || h == nil {
		return nil, errors.New("poller: add: nil conn or handler")
	}
	return p.add(conn, h)
}

// AddBlocking registers conn in blocking mode: a goroutine calls h in a loop
// and h blocks in Read. Use it for connections whose readiness the socket
// does not show, such as TLS. The goroutine exits when h returns false (the
// Desc is parked) or after Remove or Close, once h returns.
func (p *Poller) AddBlocking(conn net.Conn, h Handler) (*Desc, error) {
	if conn == nil || h == nil {
		return nil, errors.New("poller: add blocking: nil conn or handler")
	}
	d := &Desc{
		conn:     conn,
		h:        h,
		p:        p,
		blocking: true,
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	p.blocking[d] = struct{}{}
	p.wg.Add(1)
	go p.loop(d)
	return d, nil
}

// loop runs the handler of a blocking-mode Desc until it parks or is removed.
func (p *Poller) loop(d *Desc) {
	defer p.wg.Done()
	for d.state.CompareAndSwap(stateArmed, stateRunning) {
		if !d.h(d, Readable) {
			d.state.CompareAndSwap(stateRunning, stateParked)
			return
		}
		if !d.state.CompareAndSwap(stateRunning, stateArmed) {
			return
		}
	}
}

// Remove stops watching d. No handler starts for d after Remove returns; one
// already running (possibly the caller itself: Remove may be called from the
// handler) finishes and its result is ignored. Remove does not close the
// connection and does not wait. Removing twice, or after Close, is a no-op.
func (p *Poller) Remove(d *Desc) error { return p.removeDesc(d, false) }

// RemoveClosing is Remove for a connection that the caller closes right
// after and whose socket has no other descriptor (no dup, no fork): epoll
// drops a socket's registration when its last descriptor closes, so the
// epoll_ctl(EPOLL_CTL_DEL) of Remove, a system call per connection, is left
// to the close. Until the close, an event already on its way is discarded
// like after Remove.
func (p *Poller) RemoveClosing(d *Desc) error { return p.removeDesc(d, true) }

func (p *Poller) removeDesc(d *Desc, closing bool) error {
	if d == nil || d.p != p {
		return errors.New("poller: remove: desc is not from this poller")
	}
	if d.blocking {
		p.mu.Lock()
		delete(p.blocking, d)
		p.mu.Unlock()
		d.state.Store(stateRemoved)
		return nil
	}
	return p.remove(d, closing)
}

// Resume re-arms a Desc whose handler returned false. It returns ErrNotParked
// if d is not parked, and ErrClosed after Close.
func (p *Poller) Resume(d *Desc) error {
	if d == nil || d.p != p {
		return errors.New("poller: resume: desc is not from this poller")
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		return ErrClosed
	}
	if d.blocking {
		if !d.state.CompareAndSwap(stateParked, stateArmed) {
			return ErrNotParked
		}
		p.wg.Add(1)
		go p.loop(d)
		return nil
	}
	return p.resume(d)
}

// Close stops watching every connection, stops the poller's goroutines and
// waits for them, including handlers that are running. It neither closes
// connections nor touches their deadlines: a handler blocked in Read delays
// Close until its read returns, so close the connections or set their read
// deadlines first. Close must not be called from a handler. It is idempotent.
func (p *Poller) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		for d := range p.blocking {
			d.state.Store(stateRemoved)
		}
		clear(p.blocking)
		p.removeAll()
		p.mu.Unlock()
		close(p.done)
		p.wake()
		p.wg.Wait()
		p.closeErr = p.release()
	})
	return p.closeErr
}
