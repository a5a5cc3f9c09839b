package poller

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	waitTotal = 5 * time.Second
	waitStep  = time.Millisecond
)

func newPoller(t testing.TB, cfg Config) *Poller {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatalf(
			"New(%+v): %v",
			cfg, err,
		)
	}
	t.Cleanup(func() {
		err := p.Close()
		if err != nil {
			t.Errorf(
				"Close: %v",
				err,
			)
		}
	})
	return p
}

func newListener(t testing.TB) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf(
			"listen: %v",
			err,
		)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// tcpPair returns both ends of a loopback TCP connection, closed at cleanup
// (before the poller, since cleanups run last-in first-out).
func tcpPair(t testing.TB, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf(
			"dial %s: %v",
			ln.Addr(), err,
		)
	}
	server, err = ln.Accept()
	if err != nil {
		client.Close()
		t.Fatalf(
			"accept: %v",
			err,
		)
	}
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

func write(t testing.TB, conn net.Conn, b []byte) {
	t.Helper()
	_, err := conn.Write(b)
	if err != nil {
		t.Fatalf(
			"write %d bytes: %v",
			len(b), err,
		)
	}
}

func requireEpoll(t testing.TB) {
	t.Helper()
	if !Supported() {
		t.Skip("epoll is not supported on this platform")
	}
}

// barrier waits until a fresh connection on p has been handled. With one
// worker, a Desc that became readable before the barrier's write and was
// armed would have been handled first, so a Desc whose handler count did not
// move is not watched.
func barrier(t testing.TB, p *Poller, ln net.Listener) {
	t.Helper()
	client, server := tcpPair(t, ln)
	handled := make(chan struct{}, 1)
	d, err := p.Add(server, func(d *Desc, ev Event) bool {
		handled <- struct{}{}
		return false
	})
	if err != nil {
		t.Fatalf(
			"add barrier: %v",
			err,
		)
	}
	write(t, client, []byte{0})
	select {
	case <-handled:
	case <-time.After(waitTotal):
		t.Fatalf(
			"barrier not handled after %v",
			waitTotal,
		)
	}
	err = p.Remove(d)
	if err != nil {
		t.Fatalf(
			"remove barrier: %v",
			err,
		)
	}
}

func TestConfig(t *testing.T) {
	for _, test := range []struct {
		name        string
		cfg         Config
		wantErr     string
		wantWorkers int
		wantQueue   int
	}{
		{
			name:        "defaults",
			cfg:         Config{},
			wantWorkers: DefaultWorkers(),
			wantQueue:   DefaultQueue,
		},
		{
			name: "explicit",
			cfg: Config{
				Workers: 3,
				Queue:   7,
			},
			wantWorkers: 3,
			wantQueue:   7,
		},
		{
			name: "negative workers",
			cfg: Config{
				Workers: -1,
			},
			wantErr: "Workers",
		},
		{
			name: "negative queue",
			cfg: Config{
				Queue: -1,
			},
			wantErr: "Queue",
		},
	} {
		t.Run(test.name, func(t *testing.T) {
			p, err := New(test.cfg)
			if test.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), test.wantErr) {
					t.Fatalf(
						"New(%+v) error = %v; want one naming %q",
						test.cfg, err, test.wantErr,
					)
				}
				return
			}
			if err != nil {
				t.Fatalf(
					"New(%+v): %v",
					test.cfg, err,
				)
			}
			defer p.Close()
			if p.cfg.Workers != test.wantWorkers || p.cfg.Queue != test.wantQueue {
				t.Fatalf(
					"config = %+v; want Workers %d, Queue %d",
					p.cfg, test.wantWorkers, test.wantQueue,
				)
			}
		})
	}
}

func TestEventString(t *testing.T) {
	for _, test := range []struct {
		ev   Event
		want string
	}{
		{
			ev:   0,
			want: "0",
		},
		{
			ev:   Readable,
			want: "Readable",
		},
		{
			ev:   Readable | HangUp | Error,
			want: "Readable|HangUp|Error",
		},
	} {
		got := test.ev.String()
		if got != test.want {
			t.Fatalf(
				"Event(%d).String() = %q; want %q",
				uint8(test.ev), got, test.want,
			)
		}
	}
}

// collector is a handler that reads what is available and keeps it.
type collector struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	calls atomic.Int64
	evs   atomic.Uint32 // union of the flags seen
	chunk int
}

func (c *collector) handle(d *Desc, ev Event) bool {
	c.calls.Add(1)
	for {
		old := c.evs.Load()
		if c.evs.CompareAndSwap(old, old|uint32(ev)) {
			break
		}
	}
	b := make([]byte, c.chunk)
	n, err := d.Conn().Read(b)
	c.mu.Lock()
	c.buf.Write(b[:n])
	c.mu.Unlock()
	return err == nil
}

func (c *collector) equal(want []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !bytes.Equal(c.buf.Bytes(), want) {
		return fmt.Errorf(
			"read %d bytes; want %d",
			c.buf.Len(), len(want),
		)
	}
	return nil
}

func TestReadable(t *testing.T) {
	for _, test := range []struct {
		name     string
		blocking bool
		chunk    int
		payload  []byte
	}{
		{
			name:    "one byte",
			chunk:   64,
			payload: []byte{42},
		},
		{
			name:    "more than one read",
			chunk:   7,
			payload: bytes.Repeat([]byte("wsbroker"), 100),
		},
		{
			name:     "blocking mode",
			blocking: true,
			chunk:    7,
			payload:  bytes.Repeat([]byte("wsbroker"), 100),
		},
	} {
		t.Run(test.name, func(t *testing.T) {
			p := newPoller(t, Config{
				Workers: 2,
			})
			ln := newListener(t)
			client, server := tcpPair(t, ln)
			c := &collector{
				chunk: test.chunk,
			}
			add := p.Add
			if test.blocking {
				add = p.AddBlocking
			}
			d, err := add(server, c.handle)
			if err != nil {
				t.Fatalf(
					"add: %v",
					err,
				)
			}
			if d.Conn() != server {
				t.Fatalf(
					"Conn() = %v; want the added conn %v",
					d.Conn(), server,
				)
			}
			write(t, client, test.payload)
			testkit.CheckFor(t, waitTotal, waitStep, func() error {
				return c.equal(test.payload)
			})
			ev := Event(c.evs.Load())
			if ev&Readable == 0 {
				t.Fatalf(
					"events seen = %v; want Readable",
					ev,
				)
			}
		})
	}
}

func TestOneShot(t *testing.T) {
	p := newPoller(t, Config{
		Workers: 8,
	})
	ln := newListener(t)
	client, server := tcpPair(t, ln)
	const size = 2000
	var (
		inflight atomic.Int32
		overlaps atomic.Int32
		read     atomic.Int32
	)
	_, err := p.Add(server, func(d *Desc, ev Event) bool {
		if inflight.Add(1) > 1 {
			overlaps.Add(1)
		}
		defer inflight.Add(-1)
		// Read one byte only: the rest keeps the socket readable, so
		// every re-arm fires again at once.
		var b [1]byte
		n, err := d.Conn().Read(b[:])
		for range 10 {
			runtime.Gosched()
		}
		read.Add(int32(n))
		return err == nil
	})
	if err != nil {
		t.Fatalf(
			"add: %v",
			err,
		)
	}
	write(t, client, make([]byte, size))
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		n := read.Load()
		if n != size {
			return fmt.Errorf(
				"read %d bytes; want %d",
				n, size,
			)
		}
		return nil
	})
	n := overlaps.Load()
	if n != 0 {
		t.Fatalf(
			"%d handler calls overlapped another for the same Desc",
			n,
		)
	}
}

func TestRearmFalseAndResume(t *testing.T) {
	requireEpoll(t)
	p := newPoller(t, Config{
		Workers: 1,
	})
	ln := newListener(t)
	client, server := tcpPair(t, ln)
	c := &collector{
		chunk: 1,
	}
	var park atomic.Bool
	park.Store(true)
	d, err := p.Add(server, func(d *Desc, ev Event) bool {
		c.handle(d, ev)
		return !park.Load()
	})
	if err != nil {
		t.Fatalf(
			"add: %v",
			err,
		)
	}
	// Two bytes, one read per call: a re-armed socket would fire again.
	write(t, client, []byte("ab"))
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		return c.equal([]byte("a"))
	})
	write(t, client, []byte("c"))
	barrier(t, p, ln)
	calls := c.calls.Load()
	if calls != 1 {
		t.Fatalf(
			"handler called %d times after returning false; want 1",
			calls,
		)
	}
	park.Store(false)
	err = p.Resume(d)
	if err != nil {
		t.Fatalf(
			"Resume: %v",
			err,
		)
	}
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		return c.equal([]byte("abc"))
	})
	err = p.Resume(d)
	if !errors.Is(err, ErrNotParked) {
		t.Fatalf(
			"Resume of an armed Desc = %v; want %v",
			err, ErrNotParked,
		)
	}
}

func TestHangUp(t *testing.T) {
	requireEpoll(t)
	for _, test := range []struct {
		name    string
		payload []byte
		hangUp  func(c net.Conn) error
	}{
		{
			name:   "close",
			hangUp: net.Conn.Close,
		},
		{
			name:    "data then close",
			payload: []byte("bye"),
			hangUp:  net.Conn.Close,
		},
		{
			name: "close write",
			hangUp: func(c net.Conn) error {
				return c.(*net.TCPConn).CloseWrite()
			},
		},
	} {
		t.Run(test.name, func(t *testing.T) {
			p := newPoller(t, Config{
				Workers: 1,
			})
			ln := newListener(t)
			client, server := tcpPair(t, ln)
			evs := make(chan Event, 1)
			var got bytes.Buffer
			_, err := p.Add(server, func(d *Desc, ev Event) bool {
				// Read to EOF, as a handler told of a hang-up
				// would, then report what it was told.
				_, err := io.Copy(&got, d.Conn())
				if err != nil {
					t.Errorf(
						"read to EOF: %v",
						err,
					)
				}
				evs <- ev
				return false
			})
			if err != nil {
				t.Fatalf(
					"add: %v",
					err,
				)
			}
			if test.payload != nil {
				write(t, client, test.payload)
			}
			err = test.hangUp(client)
			if err != nil {
				t.Fatalf(
					"hang up: %v",
					err,
				)
			}
			var ev Event
			select {
			case ev = <-evs:
			case <-time.After(waitTotal):
				t.Fatalf(
					"no event after %v",
					waitTotal,
				)
			}
			// The payload may be reported as Readable before the
			// FIN arrives; the handler reads to EOF either way.
			if ev&Readable == 0 || (test.payload == nil && ev&HangUp == 0) {
				t.Fatalf(
					"event = %v; want Readable|HangUp",
					ev,
				)
			}
			if !bytes.Equal(got.Bytes(), test.payload) {
				t.Fatalf(
					"read %q; want %q",
					got.Bytes(), test.payload,
				)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	requireEpoll(t)
	for _, test := range []struct {
		name string
		// remove is called while the handler's first call runs, or
		// before any data is written if it is idle.
		idle         bool
		fromHandler  bool
		wantReadable bool
	}{
		{
			name: "idle",
			idle: true,
		},
		{
			name: "while handler runs",
		},
		{
			name:        "from handler",
			fromHandler: true,
		},
	} {
		t.Run(test.name, func(t *testing.T) {
			p := newPoller(t, Config{
				Workers: 1,
			})
			ln := newListener(t)
			client, server := tcpPair(t, ln)
			var (
				calls   atomic.Int32
				entered = make(chan struct{})
				release = make(chan struct{})
			)
			d, err := p.Add(server, func(d *Desc, ev Event) bool {
				calls.Add(1)
				var b [1]byte
				d.Conn().Read(b[:])
				if test.fromHandler {
					err := p.Remove(d)
					if err != nil {
						t.Errorf(
							"Remove from handler: %v",
							err,
						)
					}
					return true
				}
				entered <- struct{}{}
				<-release
				return true
			})
			if err != nil {
				t.Fatalf(
					"add: %v",
					err,
				)
			}
			wantCalls := int32(1)
			switch {
			case test.idle:
				wantCalls = 0
				err = p.Remove(d)
			case test.fromHandler:
				write(t, client, []byte{1})
				testkit.CheckFor(t, waitTotal, waitStep, func() error {
					if d.state.Load() != stateRemoved {
						return errors.New("Desc not removed by its handler")
					}
					return nil
				})
			default:
				write(t, client, []byte{1})
				<-entered
				err = p.Remove(d)
				close(release)
			}
			if err != nil {
				t.Fatalf(
					"Remove: %v",
					err,
				)
			}
			// The handler returned true, but nothing must re-arm.
			write(t, client, []byte{2, 3})
			barrier(t, p, ln)
			n := calls.Load()
			if n != wantCalls {
				t.Fatalf(
					"handler called %d times; want %d",
					n, wantCalls,
				)
			}
			err = p.Remove(d)
			if err != nil {
				t.Fatalf(
					"second Remove: %v",
					err,
				)
			}
		})
	}
}

func TestClose(t *testing.T) {
	t.Run("idle", func(t *testing.T) {
		p, err := New(Config{
			Workers: 4,
		})
		if err != nil {
			t.Fatalf(
				"New: %v",
				err,
			)
		}
		for i := range 2 {
			err = p.Close()
			if err != nil {
				t.Fatalf(
					"Close #%d: %v",
					i+1, err,
				)
			}
		}
		goleak.VerifyNone(t)
	})

	t.Run("busy", func(t *testing.T) {
		requireEpoll(t)
		// One worker held by a handler and a queue of one filled, so the
		// epoll goroutine is blocked on the queue when Close runs.
		p, err := New(Config{
			Workers: 1,
			Queue:   1,
		})
		if err != nil {
			t.Fatalf(
				"New: %v",
				err,
			)
		}
		ln := newListener(t)
		entered := make(chan struct{}, 1)
		release := make(chan struct{})
		var descs []*Desc
		for range 4 {
			client, server := tcpPair(t, ln)
			d, err := p.Add(server, func(d *Desc, ev Event) bool {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-release
				return true
			})
			if err != nil {
				t.Fatalf(
					"add: %v",
					err,
				)
			}
			descs = append(descs, d)
			write(t, client, []byte{1})
		}
		<-entered
		testkit.CheckFor(t, waitTotal, waitStep, func() error {
			if len(p.tasks) != cap(p.tasks) {
				return fmt.Errorf(
					"queue holds %d of %d",
					len(p.tasks), cap(p.tasks),
				)
			}
			return nil
		})
		closed := make(chan error, 1)
		go func() { closed <- p.Close() }()
		close(release)
		err = <-closed
		if err != nil {
			t.Fatalf(
				"Close: %v",
				err,
			)
		}
		goleak.VerifyNone(t)

		_, server := tcpPair(t, ln)
		for _, test := range []struct {
			name string
			err  error
			want error
		}{
			{
				name: "Add",
				err:  second(p.Add(server, func(*Desc, Event) bool { return true })),
				want: ErrClosed,
			},
			{
				name: "AddBlocking",
				err:  second(p.AddBlocking(server, func(*Desc, Event) bool { return true })),
				want: ErrClosed,
			},
			{
				name: "Remove",
				err:  p.Remove(descs[0]),
				want: nil,
			},
			{
				name: "Resume",
				err:  p.Resume(descs[1]),
				want: ErrClosed,
			},
			{
				name: "Close",
				err:  p.Close(),
				want: nil,
			},
		} {
			if !errors.Is(test.err, test.want) {
				t.Fatalf(
					"%s after Close = %v; want %v",
					test.name, test.err, test.want,
				)
			}
		}
	})
}

func second(_ *Desc, err error) error {
	return err
}

func TestIdleConnsHoldNoGoroutines(t *testing.T) {
	requireEpoll(t)
	const (
		conns   = 1000
		workers = 4
		// The epoll goroutine, plus slack for runtime helpers that come
		// and go (a finalizer or a timer goroutine).
		slack = 1 + 2
	)
	ln := newListener(t)
	base := runtime.NumGoroutine()
	p := newPoller(t, Config{
		Workers: workers,
	})
	clients := make([]net.Conn, 0, conns)
	var read atomic.Int32
	for range conns {
		client, server := tcpPair(t, ln)
		clients = append(clients, client)
		_, err := p.Add(server, func(d *Desc, ev Event) bool {
			var b [1]byte
			n, err := d.Conn().Read(b[:])
			read.Add(int32(n))
			return err == nil
		})
		if err != nil {
			t.Fatalf(
				"add: %v",
				err,
			)
		}
	}
	extra := runtime.NumGoroutine() - base
	if extra > workers+slack {
		t.Fatalf(
			"%d idle connections hold %d goroutines; want at most %d",
			conns, extra, workers+slack,
		)
	}
	// They are watched all the same.
	for _, c := range clients {
		write(t, c, []byte{1})
	}
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		n := read.Load()
		if n != conns {
			return fmt.Errorf(
				"%d of %d connections handled",
				n, conns,
			)
		}
		return nil
	})
	extra = runtime.NumGoroutine() - base
	if extra > workers+slack {
		t.Fatalf(
			"after one message each, %d connections hold %d goroutines; want at most %d",
			conns, extra, workers+slack,
		)
	}
}

func TestBackpressure(t *testing.T) {
	requireEpoll(t)
	const conns = 64
	p := newPoller(t, Config{
		Workers: 1,
		Queue:   1,
	})
	ln := newListener(t)
	release := make(chan struct{})
	var (
		first sync.Once
		mu    sync.Mutex
		got   = make(map[*Desc][]byte)
		want  = make(map[*Desc][]byte)
	)
	h := func(d *Desc, ev Event) bool {
		// Hold the only worker until every connection is readable, so
		// the queue fills and the epoll goroutine has to wait.
		first.Do(func() { <-release })
		var b [16]byte
		n, err := d.Conn().Read(b[:])
		mu.Lock()
		got[d] = append(got[d], b[:n]...)
		mu.Unlock()
		return err == nil
	}
	for i := range conns {
		client, server := tcpPair(t, ln)
		d, err := p.Add(server, h)
		if err != nil {
			t.Fatalf(
				"add: %v",
				err,
			)
		}
		msg := []byte(fmt.Sprintf("conn %d", i))
		want[d] = msg
		write(t, client, msg)
	}
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		if len(p.tasks) != cap(p.tasks) {
			return fmt.Errorf(
				"queue holds %d of %d",
				len(p.tasks), cap(p.tasks),
			)
		}
		return nil
	})
	close(release)
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		mu.Lock()
		defer mu.Unlock()
		for d, w := range want {
			if !bytes.Equal(got[d], w) {
				return fmt.Errorf(
					"conn got %q; want %q",
					got[d], w,
				)
			}
		}
		return nil
	})
}

func TestAddBlocking(t *testing.T) {
	p := newPoller(t, Config{
		Workers: 1,
	})
	ln := newListener(t)
	client, server := tcpPair(t, ln)
	base := runtime.NumGoroutine()
	var (
		park  atomic.Bool
		calls atomic.Int32
		read  = make(chan byte, 4)
	)
	park.Store(true)
	d, err := p.AddBlocking(server, func(d *Desc, ev Event) bool {
		calls.Add(1)
		if ev != Readable {
			t.Errorf(
				"event = %v; want Readable",
				ev,
			)
		}
		var b [1]byte
		_, err := d.Conn().Read(b[:])
		if err != nil {
			return false
		}
		read <- b[0]
		return !park.Load()
	})
	if err != nil {
		t.Fatalf(
			"AddBlocking: %v",
			err,
		)
	}
	write(t, client, []byte{1})
	if b := <-read; b != 1 {
		t.Fatalf(
			"read %d; want 1",
			b,
		)
	}
	// Parked: the goroutine is gone.
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		n := runtime.NumGoroutine() - base
		if n > 0 {
			return fmt.Errorf(
				"parked blocking Desc holds %d goroutines",
				n,
			)
		}
		return nil
	})
	park.Store(false)
	err = p.Resume(d)
	if err != nil {
		t.Fatalf(
			"Resume: %v",
			err,
		)
	}
	write(t, client, []byte{2})
	if b := <-read; b != 2 {
		t.Fatalf(
			"read %d; want 2",
			b,
		)
	}
	err = p.Remove(d)
	if err != nil {
		t.Fatalf(
			"Remove: %v",
			err,
		)
	}
	// The handler is blocked in Read; the byte it reads is its last.
	write(t, client, []byte{3})
	if b := <-read; b != 3 {
		t.Fatalf(
			"read %d; want 3",
			b,
		)
	}
	testkit.CheckFor(t, waitTotal, waitStep, func() error {
		n := runtime.NumGoroutine() - base
		if n > 0 {
			return fmt.Errorf(
				"removed blocking Desc holds %d goroutines",
				n,
			)
		}
		return nil
	})
	if n := calls.Load(); n != 3 {
		t.Fatalf(
			"handler called %d times; want 3",
			n,
		)
	}
}

func TestAddErrors(t *testing.T) {
	p := newPoller(t, Config{
		Workers: 1,
	})
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ln := newListener(t)
	_, server := tcpPair(t, ln)
	noop := func(*Desc, Event) bool { return true }
	for _, test := range []struct {
		name    string
		conn    net.Conn
		h       Handler
		wantIs  error
		wantErr bool
	}{
		{
			name:    "nil conn",
			h:       noop,
			wantErr: true,
		},
		{
			name:    "nil handler",
			conn:    server,
			wantErr: true,
		},
		{
			name:    "no socket",
			conn:    a,
			h:       noop,
			wantIs:  ErrUnsupportedConn,
			wantErr: Supported(),
		},
	} {
		t.Run(test.name, func(t *testing.T) {
			d, err := p.Add(test.conn, test.h)
			if (err != nil) != test.wantErr || (test.wantErr && test.wantIs != nil && !errors.Is(err, test.wantIs)) {
				t.Fatalf(
					"Add error = %v; want error %t (%v)",
					err, test.wantErr, test.wantIs,
				)
			}
			if d != nil {
				p.Remove(d)
			}
		})
	}
}

func BenchmarkDispatch(b *testing.B) {
	for _, bench := range []struct {
		name     string
		blocking bool
	}{
		{
			name: "epoll",
		},
		{
			name:     "blocking",
			blocking: true,
		},
	} {
		b.Run(bench.name, func(b *testing.B) {
			if !bench.blocking && !Supported() {
				b.Skip("epoll is not supported on this platform")
			}
			p := newPoller(b, Config{
				Workers: 1,
			})
			ln := newListener(b)
			client, server := tcpPair(b, ln)
			buf := make([]byte, 1)
			handled := make(chan struct{}, 1)
			h := func(d *Desc, ev Event) bool {
				_, err := d.Conn().Read(buf)
				if err != nil {
					return false
				}
				handled <- struct{}{}
				return true
			}
			add := p.Add
			if bench.blocking {
				add = p.AddBlocking
			}
			d, err := add(server, h)
			if err != nil {
				b.Fatalf(
					"add: %v",
					err,
				)
			}
			msg := []byte{1}
			b.ReportAllocs()
			for b.Loop() {
				_, err := client.Write(msg)
				if err != nil {
					b.Fatalf(
						"write: %v",
						err,
					)
				}
				<-handled
			}
			b.StopTimer()
			p.Remove(d)
			client.Close()
		})
	}
}
