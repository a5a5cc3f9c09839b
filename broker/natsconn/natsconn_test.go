package natsconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/internal/testkit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestUnreachable(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{
			name: "no servers",
			err:  fmt.Errorf("connect: %w", nats.ErrNoServers),
			want: true,
		},
		{
			name: "dial timeout",
			err:  &net.OpError{Op: "dial", Net: "tcp", Err: os.ErrDeadlineExceeded},
			want: true,
		},
		{
			name: "unresolved host",
			err:  &net.DNSError{Err: "no such host", Name: "nats", IsNotFound: true},
			want: true,
		},
		{
			name: "closed during the handshake",
			err:  io.EOF,
			want: true,
		},
		{
			name: "JetStream request timed out",
			err:  context.DeadlineExceeded,
			want: true,
		},
		{
			name: "JetStream cluster not available yet",
			err:  &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"},
			want: true,
		},
		{
			name: "authorization",
			err:  nats.ErrAuthorization,
			want: false,
		},
		{
			name: "TLS alert",
			err:  &net.OpError{Op: "remote error", Err: tls.AlertError(42)},
			want: false,
		},
		{
			name: "JetStream disabled",
			err:  nats.ErrNoResponders,
			want: false,
		},
		{
			name: "stream conflict",
			err:  &jetstream.APIError{Code: 500, ErrorCode: 10052, Description: "stream configuration update can not change storage type"},
			want: false,
		},
		{
			name: "credentials file",
			err:  &os.PathError{Op: "open", Path: "x.creds", Err: os.ErrNotExist},
			want: false,
		},
		{
			name: "nil",
			err:  nil,
			want: false,
		},
	}
	for _, tc := range cases {
		if got := Unreachable(tc.err); got != tc.want {
			t.Fatalf("%s: Unreachable(%v) = %v, want %v",
				tc.name, tc.err, got, tc.want)
		}
	}
}

// TestConnectLater: Connect to a port where nothing listens returns a
// connection and the reason; a subscription made meanwhile receives once a
// server starts there.
func TestConnectLater(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v",
			err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	nc, down, err := Connect([]string{url}, nats.ReconnectWait(50*time.Millisecond), nats.MaxReconnects(-1))
	if err != nil || down == nil {
		t.Fatalf("Connect with no server: %v, %v; want a connection and the reason",
			down, err)
	}
	defer nc.Close()
	sub, err := nc.SubscribeSync("x")
	if err != nil {
		t.Fatalf("subscribe while down: %v",
			err)
	}
	testkit.StartNATS(t, server.Options{Port: port})
	pub, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect: %v",
			err)
	}
	defer pub.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := pub.Publish("x", []byte("hi")); err != nil {
			t.Fatalf("publish: %v",
				err)
		}
		m, err := sub.NextMsg(100 * time.Millisecond)
		if err == nil {
			if string(m.Data) != "hi" {
				t.Fatalf("got %q",
					m.Data)
			}
			return
		}
		if !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("next: %v",
				err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the subscription made while down received nothing")
		}
	}
}

func TestCheckCreds(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.creds")
	bad := filepath.Join(dir, "bad.creds")
	creds := "-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n" +
		"-----BEGIN USER NKEY SEED-----\ny\n------END USER NKEY SEED------\n"
	if err := os.WriteFile(good, []byte(creds), 0o600); err != nil {
		t.Fatalf("write: %v",
			err)
	}
	if err := os.WriteFile(bad, []byte("not creds"), 0o600); err != nil {
		t.Fatalf("write: %v",
			err)
	}
	if err := CheckCreds(good); err != nil {
		t.Fatalf("CheckCreds(good): %v",
			err)
	}
	for _, p := range []string{bad, filepath.Join(dir, "missing")} {
		if err := CheckCreds(p); err == nil || !strings.Contains(err.Error(), "nats-creds") {
			t.Fatalf("CheckCreds(%s): %v, want an error naming nats-creds",
				p, err)
		}
	}
}
