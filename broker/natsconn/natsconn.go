// Package natsconn connects the broker's NATS users (the event log, the
// cluster) to an external NATS, and tells a NATS that is unreachable, which
// they ride out, from one that is misconfigured, which stops the broker at
// start with an error naming the option.
//
// Unreachable (the broker starts, queues and retries): no server answers
// (connection refused, a dial or TLS handshake timeout, a host name that
// does not resolve yet), the connection ends before the handshake, a
// JetStream request times out, JetStream answers that its cluster is not
// available (no meta leader or no quorum yet).
//
// Misconfigured (the broker does not start): an unreadable or malformed
// credentials file or CA file, an authorization or TLS verification error,
// JetStream disabled on the server (also when a JetStream request finds no
// responders: a server enables JetStream before it accepts clients), a
// stream or bucket whose existing configuration conflicts with the flags,
// any other JetStream API error.
package natsconn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/telemetry/redact"
)

// jsClusterNotAvailable is JetStream's "JetStream system temporarily
// unavailable" (no meta leader yet, a lost quorum).
const jsClusterNotAvailable jetstream.ErrorCode = 10008

// Connect connects to urls. When no server is reachable it returns a
// connection that keeps trying in the background
// (nats.RetryOnFailedConnect: subscriptions and publishes made meanwhile are
// buffered and take effect on connect) together with down, the reason of
// the failed first attempt. Any other failure is err.
func Connect(urls []string, opts ...nats.Option) (nc *nats.Conn, down, err error) {
	u := strings.Join(urls, ",")
	nc, err = nats.Connect(u, opts...)
	if err == nil {
		return nc, nil, nil
	}
	if !Unreachable(err) {
		return nil, nil, err
	}
	down = err
	nc, err = nats.Connect(u, append(opts, nats.RetryOnFailedConnect(true))...)
	if err != nil {
		return nil, nil, err
	}
	return nc, down, nil
}

// Unreachable reports whether err means that NATS (or its JetStream) cannot
// be reached now but may be later, rather than that it is misconfigured.
func Unreachable(err error) bool {
	if err == nil {
		return false
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return api.ErrorCode == jsClusterNotAvailable
	}
	if NoJetStream(err) {
		return false
	}
	switch {
	case errors.Is(err, nats.ErrNoServers),
		errors.Is(err, nats.ErrTimeout),
		errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrConnectionReconnecting),
		errors.Is(err, nats.ErrStaleConnection),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, io.EOF),
		errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	// Network errors, but not a TLS alert (crypto/tls reports a "remote
	// error" as a *net.OpError too): that one is configuration.
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

// NoJetStream reports whether err says that the NATS connected to has no
// JetStream (for the account): nothing answers its API, or it says so.
// nats-server enables JetStream before it accepts clients, so this is
// configuration, not a server still starting.
func NoJetStream(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabled) ||
		errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount)
}

// URLs is the comma list of urls with their user information masked, for
// messages and logs.
func URLs(urls []string) string { return redact.Userinfo(strings.Join(urls, ",")) }

// CheckCreds checks that path is a readable NATS credentials file. The NATS
// client reads it only once a server answers, so without this check a
// wrong --nats-creds would surface only when NATS comes back.
func CheckCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("nats-creds: %w", err)
	}
	s := string(b)
	if !strings.Contains(s, "BEGIN NATS USER JWT") || !strings.Contains(s, "BEGIN USER NKEY SEED") {
		return fmt.Errorf("nats-creds: %q is not a NATS credentials file (want the NATS USER JWT and USER NKEY SEED blocks)", path)
	}
	return nil
}
