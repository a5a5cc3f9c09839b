// Command baseline is the comparison server for wsbroker's benchmarks: a
// WebSocket server written the way most teams write one. net/http accepts,
// gorilla/websocket upgrades, golang-jwt verifies MapClaims, and every
// connection gets a reader and a writer goroutine (the gorilla chat-example
// pattern). It applies the same token rules as wsbroker (HS256 and RS256;
// sub and exp required; the token in "Authorization: Bearer" or as the
// subprotocol "bearer.<jwt>" next to "wsbroker.v1", which is selected) and
// speaks the subset of wsbroker.v1 the fan-out benchmark needs: subscribe,
// publish, message, ack.
//
// It serves /metrics (a few gauges in the Prometheus text format, under the
// names wsbroker uses, so that one load client reads both servers) and
// /debug/mem (the same numbers as JSON) on the same listener.
//
// It lives in its own module so that gorilla/websocket stays out of
// wsbroker's go.mod.
//
//	go run . --listen 127.0.0.1:28080 --hmac-secret-file secret --rsa-pub-file pub.pem
package main

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

const (
	appProtocol  = "wsbroker.v1"
	bearerPrefix = "bearer."
	sendQueue    = 256
	writeWait    = 10 * time.Second
	maxMessage   = 65536
)

func main() {
	listen := flag.String("listen", "127.0.0.1:28080", "listen address (WebSocket on /ws, /metrics, /debug/mem)")
	secretFile := flag.String("hmac-secret-file", "", "HS256 secret file (surrounding white space trimmed)")
	rsaFile := flag.String("rsa-pub-file", "", "RS256 public key (PEM)")
	flag.Parse()
	if err := run(*listen, *secretFile, *rsaFile); err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		os.Exit(1)
	}
}

func run(listen, secretFile, rsaFile string) error {
	var secret []byte
	if secretFile != "" {
		raw, err := os.ReadFile(secretFile)
		if err != nil {
			return fmt.Errorf("hmac-secret-file: %w", err)
		}
		secret = []byte(strings.TrimSpace(string(raw)))
	}
	var pub *rsa.PublicKey
	if rsaFile != "" {
		raw, err := os.ReadFile(rsaFile)
		if err != nil {
			return fmt.Errorf("rsa-pub-file: %w", err)
		}
		if pub, err = jwt.ParseRSAPublicKeyFromPEM(raw); err != nil {
			return fmt.Errorf("rsa-pub-file %s: %w", rsaFile, err)
		}
	}
	if secret == nil && pub == nil {
		return errors.New("give --hmac-secret-file and/or --rsa-pub-file")
	}
	s := newServer(secret, pub)
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.serveWS)
	mux.HandleFunc("/metrics", s.serveMetrics)
	mux.HandleFunc("/debug/mem", s.serveMem)
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	hs := &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- hs.ListenAndServe() }()
	select {
	case err := <-errc:
		return fmt.Errorf("listen: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// server holds the verifier and the channels; nothing is package-level.
type server struct {
	parser   *jwt.Parser
	secret   []byte
	pub      *rsa.PublicKey
	upgrader websocket.Upgrader

	conns atomic.Int64

	mu       sync.RWMutex
	channels map[string]*channel
}

type channel struct {
	offset atomic.Int64
	mu     sync.RWMutex
	subs   map[*client]struct{}
}

type client struct {
	s    *server
	ws   *websocket.Conn
	send chan []byte
	sub  string
	// subs is touched only by the reader goroutine.
	subs map[string]*channel
	done chan struct{}
	once sync.Once
}

// errAlgNotAllowed is the keyfunc's answer to any algorithm but HS256 with
// a secret and RS256 with a public key.
var errAlgNotAllowed = errors.New("algorithm not allowed")

func newServer(secret []byte, pub *rsa.PublicKey) *server {
	s := &server{
		parser: jwt.NewParser(
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(30*time.Second),
		),
		secret:   secret,
		pub:      pub,
		channels: map[string]*channel{},
	}
	s.upgrader = websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
		Subprotocols:    []string{appProtocol},
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	return s
}

// keyFunc picks the key by algorithm; a key is only ever used with its own
// algorithm (no HS256 verified with the RSA key).
func (s *server) keyFunc(t *jwt.Token) (any, error) {
	switch alg := t.Method.Alg(); {
	case alg == "HS256" && s.secret != nil:
		return s.secret, nil
	case alg == "RS256" && s.pub != nil:
		return s.pub, nil
	default:
		return nil, fmt.Errorf("%w: %q", errAlgNotAllowed, alg)
	}
}

// token finds the credential: the Authorization header, else a
// "bearer.<jwt>" subprotocol offered next to wsbroker.v1.
func token(r *http.Request) (string, string) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
			return "", "malformed_authorization"
		}
		return tok, ""
	}
	var tok string
	app := false
	for _, p := range websocket.Subprotocols(r) {
		switch {
		case p == appProtocol:
			app = true
		case strings.HasPrefix(p, bearerPrefix):
			tok = p[len(bearerPrefix):]
		}
	}
	switch {
	case tok == "":
		return "", "missing_token"
	case !app:
		return "", "protocol_not_offered"
	}
	return tok, ""
}

func reject(w http.ResponseWriter, status int, reason string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": http.StatusText(status), "reason": reason})
}

func (s *server) serveWS(w http.ResponseWriter, r *http.Request) {
	tok, reason := token(r)
	if reason != "" {
		reject(w, http.StatusUnauthorized, reason)
		return
	}
	claims := jwt.MapClaims{}
	if _, err := s.parser.ParseWithClaims(tok, claims, s.keyFunc); err != nil {
		reject(w, http.StatusUnauthorized, classify(err))
		return
	}
	sub, _ := claims["sub"].(string)
	if sub == "" {
		reject(w, http.StatusUnauthorized, "missing_claim")
		return
	}
	// Never echo a token entry: answer wsbroker.v1 only (the Upgrader
	// picks the first server protocol the client offered).
	c, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the Upgrader has answered
	}
	cl := &client{s: s, ws: c, send: make(chan []byte, sendQueue), sub: sub, subs: map[string]*channel{}, done: make(chan struct{})}
	s.conns.Add(1)
	go cl.writer()
	go cl.reader()
}

func classify(err error) string {
	switch {
	case errors.Is(err, errAlgNotAllowed):
		return "alg_not_allowed"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "malformed_token"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "bad_signature"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return "not_yet_valid"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "missing_claim"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "alg_not_allowed"
	}
	return "malformed_token"
}

type inMessage struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id,omitempty"`
	Channel string          `json:"channel"`
	Data    json.RawMessage `json:"data,omitempty"`
}

type outMessage struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id,omitempty"`
	Channel string          `json:"channel,omitempty"`
	Offset  int64           `json:"offset,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	Reason  string          `json:"reason,omitempty"`
}

func (c *client) close() {
	c.once.Do(func() {
		close(c.done)
		_ = c.ws.Close()
		c.s.conns.Add(-1)
	})
}

func (c *client) reader() {
	defer func() {
		for name, ch := range c.subs {
			ch.mu.Lock()
			delete(ch.subs, c)
			ch.mu.Unlock()
			delete(c.subs, name)
		}
		c.close()
	}()
	c.ws.SetReadLimit(maxMessage)
	for {
		_, raw, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		var m inMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			c.reply(outMessage{Type: "error", Reason: "bad_request"})
			continue
		}
		switch m.Type {
		case "subscribe":
			ch := c.s.channel(m.Channel)
			ch.mu.Lock()
			ch.subs[c] = struct{}{}
			ch.mu.Unlock()
			c.subs[m.Channel] = ch
			c.reply(outMessage{Type: "ack", ID: m.ID})
		case "publish":
			off := c.s.publish(m.Channel, m.Data)
			c.reply(outMessage{Type: "ack", ID: m.ID, Offset: off})
		default:
			c.reply(outMessage{Type: "error", ID: m.ID, Reason: "bad_request"})
		}
	}
}

func (c *client) reply(m outMessage) {
	b, err := json.Marshal(m)
	if err != nil {
		return
	}
	c.enqueue(b)
}

// enqueue hands b to the writer; a full queue closes the slow consumer.
func (c *client) enqueue(b []byte) {
	select {
	case c.send <- b:
	case <-c.done:
	default:
		c.close()
	}
}

func (c *client) writer() {
	defer c.close()
	for {
		select {
		case b := <-c.send:
			_ = c.ws.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.ws.WriteMessage(websocket.TextMessage, b); err != nil {
				return
			}
		case <-c.done:
			return
		}
	}
}

func (s *server) channel(name string) *channel {
	s.mu.RLock()
	ch := s.channels[name]
	s.mu.RUnlock()
	if ch != nil {
		return ch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch = s.channels[name]; ch == nil {
		ch = &channel{subs: map[*client]struct{}{}}
		s.channels[name] = ch
	}
	return ch
}

// publish encodes the message once and queues it for every subscriber.
func (s *server) publish(name string, data json.RawMessage) int64 {
	ch := s.channel(name)
	off := ch.offset.Add(1)
	b, err := json.Marshal(outMessage{Type: "message", Channel: name, Offset: off, Data: data})
	if err != nil {
		return off
	}
	ch.mu.RLock()
	defer ch.mu.RUnlock()
	for c := range ch.subs {
		c.enqueue(b)
	}
	return off
}

// memStats are the numbers the load client reads.
type memStats struct {
	Connections   int64  `json:"connections"`
	RSSBytes      uint64 `json:"rss_bytes"`
	HeapInuse     uint64 `json:"heap_inuse_bytes"`
	StackInuse    uint64 `json:"stack_inuse_bytes"`
	Goroutines    int    `json:"goroutines"`
	NumGC         uint32 `json:"num_gc"`
	HeapSysBytes  uint64 `json:"heap_sys_bytes"`
	TotalSysBytes uint64 `json:"sys_bytes"`
}

func (s *server) mem() (memStats, error) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, err := rssBytes()
	return memStats{
		Connections:   s.conns.Load(),
		RSSBytes:      rss,
		HeapInuse:     ms.HeapInuse,
		StackInuse:    ms.StackInuse,
		Goroutines:    runtime.NumGoroutine(),
		NumGC:         ms.NumGC,
		HeapSysBytes:  ms.HeapSys,
		TotalSysBytes: ms.Sys,
	}, err
}

// rssBytes reads the resident set from /proc/self/statm (second field,
// in pages).
func rssBytes() (uint64, error) {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, fmt.Errorf("statm: %w", err)
	}
	f := strings.Fields(string(raw))
	if len(f) < 2 {
		return 0, fmt.Errorf("statm: %q", raw)
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("statm: %w", err)
	}
	return pages * uint64(os.Getpagesize()), nil
}

func (s *server) serveMem(w http.ResponseWriter, _ *http.Request) {
	m, err := s.mem()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(m)
}

// serveMetrics writes the gauges under wsbroker's and the Go/process
// collectors' names.
func (s *server) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	m, err := s.mem()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "wsbroker_connections %d\nprocess_resident_memory_bytes %d\ngo_memstats_heap_inuse_bytes %d\ngo_memstats_stack_inuse_bytes %d\ngo_goroutines %d\n",
		m.Connections, m.RSSBytes, m.HeapInuse, m.StackInuse, m.Goroutines)
}
