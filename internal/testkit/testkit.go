// Package testkit holds the helpers the tests of several packages share:
// polling for a condition, a buffer for a child process's output, reading a
// metric from a registry, and free loopback ports. Test code only.
package testkit

import (
	"bytes"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// CheckFor calls f every step until it returns nil, and fails the test with
// f's last error if that does not happen within total. Use it for what
// follows an answer asynchronously (events, counters, presence): never
// assert those right after the answer.
func CheckFor(t testing.TB, total, step time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	err := f()
	for err != nil && time.Now().Before(deadline) {
		time.Sleep(step)
		err = f()
	}
	if err != nil {
		t.Fatalf("condition not met within %s: %v", total, err)
	}
}

// SyncBuffer is a bytes.Buffer safe for a child process's output and the
// test reading it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Metric returns the value of the counter or gauge name whose labels are
// exactly labels, 0 if there is none.
func Metric(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !LabelsMatch(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

// LabelsMatch reports whether m has exactly the labels want.
func LabelsMatch(m *dto.Metric, want map[string]string) bool {
	if len(m.GetLabel()) != len(want) {
		return false
	}
	for _, l := range m.GetLabel() {
		if want[l.GetName()] != l.GetValue() {
			return false
		}
	}
	return true
}

// FreePorts returns n loopback ports that were free a moment ago (all held
// at once, so they differ).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("reserve a port: %v", err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// FreePort returns one loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	return FreePorts(t, 1)[0]
}

// StartNATS runs a NATS server for the test on loopback and stops it at
// the end of the test (stopping it earlier is fine). o's zero fields get
// test defaults: host 127.0.0.1, a random port (Port 0 would be NATS's
// 4222), no signal handlers, no logging, and with JetStream a temporary
// store. Its URL is ns.ClientURL().
func StartNATS(t testing.TB, o server.Options) *server.Server {
	t.Helper()
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.Port == 0 {
		o.Port = server.RANDOM_PORT
	}
	o.NoSigs, o.NoLog = true, true
	if o.JetStream && o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	ns, err := server.NewServer(&o)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	ns.Start()
	t.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatalf("nats server on %s:%d not ready", o.Host, o.Port)
	}
	return ns
}

// ProcessCPU is the CPU time (user and system) the test process has used,
// in nanoseconds: benchmarks report it per operation, steadier than wall
// time on a busy machine.
func ProcessCPU(t testing.TB) int64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatalf("getrusage: %v", err)
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
