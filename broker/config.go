package broker

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// RejectMode selects how a refused upgrade is told to the client.
type RejectMode uint8

const (
	// RejectHTTP answers the handshake with the reason's HTTP status, a
	// WWW-Authenticate header and a JSON body (the default).
	RejectHTTP RejectMode = iota
	// RejectClose accepts the upgrade and closes at once with close code
	// 4000+status and the reason as close text: a browser cannot read a
	// failed handshake, but it can read a CloseEvent.
	RejectClose
)

// ParseRejectMode parses "http" or "close".
func ParseRejectMode(s string) (RejectMode, error) {
	switch s {
	case "http", "":
		return RejectHTTP, nil
	case "close":
		return RejectClose, nil
	}
	return RejectHTTP, fmt.Errorf("reject-mode: %q is neither http nor close", s)
}

func (m RejectMode) String() string {
	if m == RejectClose {
		return "close"
	}
	return "http"
}

// Config holds the listener's options. Zero values are replaced by the
// defaults of DefaultConfig in Validate.
type Config struct {
	// Node names this broker in events and NATS subjects.
	Node string
	// WSPath is the only path upgraded; others get 404.
	WSPath string
	// Realm is the WWW-Authenticate realm.
	Realm string
	// HandshakeTimeout bounds reading the request and writing the answer.
	HandshakeTimeout time.Duration
	// MaxHandshakeBytes bounds the request line and headers together.
	MaxHandshakeBytes int
	// MaxHandshakes bounds concurrent handshakes; more wait in the kernel's
	// accept queue.
	MaxHandshakes int
	RejectMode    RejectMode
	// TrustedProxies may set X-Forwarded-For.
	TrustedProxies []netip.Prefix
	// FailureBurst and FailureRate bound failed attempts per client address
	// (rate_limited); FailureBurst 0 disables the limit.
	FailureBurst int
	FailureRate  float64
	// MaxConnsPerSubject caps one subject's connections (connection_limit);
	// 0 is no cap. MaxConns caps the node's.
	MaxConnsPerSubject int
	MaxConns           int

	// Connection lifecycle.
	// FrameTimeout bounds reading the rest of a frame once its first bytes
	// arrived: a peer that sends half a frame cannot hold a worker.
	FrameTimeout   time.Duration
	PingInterval   time.Duration
	IdleTimeout    time.Duration
	WriteTimeout   time.Duration
	MaxMessageSize int
	// ExpiryLeeway is added to a token's exp before an open connection is
	// closed as token_expired.
	ExpiryLeeway time.Duration
	// SendQueue bounds a connection's outgoing messages before it is closed
	// as a slow consumer.
	SendQueue int
	// SocketSendBuffer sets SO_SNDBUF of accepted sockets; 0 keeps the
	// kernel's default (autotuned, up to megabytes: a slow consumer is only
	// detected once that much is stuck in the kernel).
	SocketSendBuffer int
	// Channels and permissions.
	ChannelClaim       string
	SubscribeClaim     string
	PublishClaim       string
	MaxSubscriptions   int
	MaxChannelNameSize int
	// TraceFailureRate caps the rejection traces exported per second and
	// reason (successes follow the tracer's ratio); negative: no cap.
	TraceFailureRate float64
	// ShutdownDrain bounds the wait for connections to close on shutdown.
	ShutdownDrain time.Duration
}

// DefaultConfig returns the defaults of `wsbroker serve`.
func DefaultConfig() Config {
	return Config{
		Node:               "node-1",
		WSPath:             "/ws",
		Realm:              "wsbroker",
		HandshakeTimeout:   5 * time.Second,
		MaxHandshakeBytes:  32 << 10,
		MaxHandshakes:      1024,
		FailureBurst:       30,
		FailureRate:        1,
		MaxConnsPerSubject: 100,
		MaxConns:           100000,
		FrameTimeout:       5 * time.Second,
		PingInterval:       30 * time.Second,
		IdleTimeout:        90 * time.Second,
		WriteTimeout:       10 * time.Second,
		MaxMessageSize:     64 << 10,
		SendQueue:          256,
		ChannelClaim:       "channels",
		MaxSubscriptions:   100,
		MaxChannelNameSize: 128,
		ShutdownDrain:      10 * time.Second,
		TraceFailureRate:   20,
	}
}

// ParseProxies parses a comma list of CIDR prefixes or addresses.
func ParseProxies(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("trusted-proxies: %w", err)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("trusted-proxies: %w", err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (c *Config) fill() error {
	d := DefaultConfig()
	if c.Node == "" {
		c.Node = d.Node
	}
	if c.WSPath == "" {
		c.WSPath = d.WSPath
	}
	if !strings.HasPrefix(c.WSPath, "/") {
		return fmt.Errorf("ws-path: %q does not start with /", c.WSPath)
	}
	if c.Realm == "" {
		c.Realm = d.Realm
	}
	if strings.ContainsAny(c.Realm, "\"\\\r\n") {
		return fmt.Errorf("realm: %q holds a quote, backslash or line break", c.Realm)
	}
	if strings.ContainsAny(c.Node, ". *>\t\r\n") {
		return fmt.Errorf("node-id: %q must be a NATS subject token (no dots, spaces, * or >)", c.Node)
	}
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&c.HandshakeTimeout, d.HandshakeTimeout)
	set(&c.FrameTimeout, d.FrameTimeout)
	set(&c.PingInterval, d.PingInterval)
	set(&c.IdleTimeout, d.IdleTimeout)
	set(&c.WriteTimeout, d.WriteTimeout)
	set(&c.ShutdownDrain, d.ShutdownDrain)
	seti := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	seti(&c.MaxHandshakeBytes, d.MaxHandshakeBytes)
	seti(&c.MaxHandshakes, d.MaxHandshakes)
	seti(&c.MaxConns, d.MaxConns)
	seti(&c.MaxMessageSize, d.MaxMessageSize)
	seti(&c.SendQueue, d.SendQueue)
	seti(&c.MaxSubscriptions, d.MaxSubscriptions)
	seti(&c.MaxChannelNameSize, d.MaxChannelNameSize)
	if c.MaxHandshakeBytes < 1024 {
		return fmt.Errorf("max-handshake-bytes: %d is below 1024", c.MaxHandshakeBytes)
	}
	if c.TraceFailureRate == 0 {
		c.TraceFailureRate = d.TraceFailureRate
	}
	if c.ChannelClaim == "" {
		c.ChannelClaim = d.ChannelClaim
	}
	if c.IdleTimeout < c.PingInterval {
		return fmt.Errorf("idle-timeout %s is shorter than ping-interval %s: every connection would time out", c.IdleTimeout, c.PingInterval)
	}
	return nil
}
