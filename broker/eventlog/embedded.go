package eventlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrDataDirInUse is returned by Open when another process owns the data
// dir.
var ErrDataDirInUse = errors.New("data dir locked")

// startEmbedded runs a NATS server with JetStream inside the process, file
// store under dataDir/jetstream, no network listener (clients connect in
// process). It locks dataDir first: two processes on one store would
// corrupt it, so a second one fails with a clear error instead. The returned
// func releases the lock.
func startEmbedded(dataDir, node string) (*server.Server, func(), error) {
	if dataDir == "" {
		return nil, nil, errors.New("eventlog: data-dir is empty (needed by the embedded NATS server)")
	}
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return nil, nil, fmt.Errorf("eventlog: data-dir %q is not writable: %w", dataDir, err)
	}
	probe, err := os.CreateTemp(dataDir, ".write-check-*")
	if err != nil {
		return nil, nil, fmt.Errorf("eventlog: data-dir %q is not writable: %w", dataDir, err)
	}
	probe.Close()
	os.Remove(probe.Name())

	lf, err := os.OpenFile(filepath.Join(dataDir, "LOCK"), os.O_CREATE|os.O_RDWR, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("eventlog: data-dir %q lock: %w", dataDir, err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		return nil, nil, fmt.Errorf("eventlog: data-dir %q is in use by another process (%w: %v; one process owns a data dir; "+
			"give each broker its own --data-dir, share a NATS with --nats-url, or read a running broker's events "+
			"over its admin API /v1/events)", dataDir, ErrDataDirInUse, err)
	}
	unlock := func() {
		_ = syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
		lf.Close()
	}

	ns, err := server.NewServer(&server.Options{
		ServerName: "wsbroker-" + subjectToken(node),
		DontListen: true,
		JetStream:  true,
		StoreDir:   dataDir,
		NoSigs:     true,
		NoLog:      true,
		// The store is sized by the stream's own limits.
		JetStreamMaxMemory: 64 << 20,
	})
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("eventlog: embedded NATS server: %w", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		ns.WaitForShutdown()
		unlock()
		return nil, nil, fmt.Errorf("eventlog: embedded NATS server (data-dir %q) not ready after 30s", dataDir)
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		unlock()
		return nil, nil, fmt.Errorf("eventlog: embedded NATS server could not enable JetStream on data-dir %q", dataDir)
	}
	return ns, unlock, nil
}
