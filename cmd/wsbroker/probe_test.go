package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/broker"
	"github.com/wsbroker/wsbroker/broker/brokertest"
	"github.com/wsbroker/wsbroker/internal/testkit"
)

var probeSecret = []byte("0123456789abcdef0123456789abcdef-probe-test")

// probeServer is an in-process broker for the probe and inspect tests.
type probeServer struct {
	t   *testing.T
	url string
	reg *prometheus.Registry
}

type probeServerOpts struct {
	sources string
	mode    broker.RejectMode
	origins []string
	verify  func(*authn.VerifyConfig)
	// tls serves wss with a self-signed certificate for 127.0.0.1.
	tls bool
}

func startProbeServer(t *testing.T, o probeServerOpts) *probeServer {
	t.Helper()
	bo := brokertest.Options{
		Secret:  probeSecret,
		Sources: o.sources,
		Verify:  o.verify,
		Origins: o.origins,
		Config: func(c *broker.Config) {
			c.Node = "probe-test"
			c.RejectMode = o.mode
		},
	}
	if o.tls {
		bo.TLS = &tls.Config{Certificates: []tls.Certificate{selfSigned(t)}}
	}
	b := brokertest.Start(t, bo)
	return &probeServer{t: t, url: b.URL, reg: b.Registry}
}

// selfSigned returns a certificate for 127.0.0.1 valid for an hour.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "probe-test"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// upgrades reads wsbroker_upgrades_total{result,reason,source}.
func (s *probeServer) upgrades(result, reason, source string) float64 {
	s.t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		s.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "wsbroker_upgrades_total" {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			want := map[string]string{"result": result, "reason": reason, "source": source}
			for _, l := range m.GetLabel() {
				if want[l.GetName()] != l.GetValue() {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// verifyNoLeaks checks, when t ends, that it left no goroutine behind.
// Goroutines that were there when it started (other tests' in this
// package) are not its business.
func verifyNoLeaks(t *testing.T) {
	t.Helper()
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
}

// signProbeToken signs claims (sub, iat, exp, channels by default) with
// method and key; edit changes the claims and header first.
func signProbeToken(t *testing.T, method jwt.SigningMethod, key any, edit func(jwt.MapClaims, map[string]any)) string {
	t.Helper()
	now := time.Now()
	claims := jwt.MapClaims{
		"sub":      "probe-user",
		"iat":      now.Unix(),
		"exp":      now.Add(time.Hour).Unix(),
		"channels": []string{"*"},
	}
	tok := jwt.NewWithClaims(method, claims)
	if edit != nil {
		edit(claims, tok.Header)
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func hsProbeToken(t *testing.T, edit func(jwt.MapClaims, map[string]any)) string {
	t.Helper()
	return signProbeToken(t, jwt.SigningMethodHS256, probeSecret, edit)
}

// runProbeCmd runs `wsbroker probe` through cobra and returns its output
// and error.
func runProbeCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"probe"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestProbe(t *testing.T) {
	verifyNoLeaks(t)
	valid := hsProbeToken(t, nil)
	expired := hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
		c["iat"] = time.Now().Add(-2 * time.Hour).Unix()
		c["exp"] = time.Now().Add(-time.Hour).Unix()
	})
	forged := signProbeToken(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-another"), nil)

	httpSrv := startProbeServer(t, probeServerOpts{})
	closeSrv := startProbeServer(t, probeServerOpts{mode: broker.RejectClose})
	allSrv := startProbeServer(t, probeServerOpts{sources: "header,subprotocol,query,cookie", origins: []string{"https://app.example.com"}})

	type want struct {
		transport   string
		ok          bool
		status      int
		closeCode   int
		subprotocol string
		reason      string
	}
	tests := []struct {
		name        string
		srv         *probeServer
		args        []string
		token       string
		wantErr     bool
		want        []want
		countReason string
		countSource string
	}{
		{
			name:        "subprotocol accepted",
			srv:         httpSrv,
			args:        []string{"--via", "subprotocol"},
			token:       valid,
			want:        []want{{transport: "subprotocol", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"}},
			countReason: "none",
			countSource: "subprotocol",
		},
		{
			name:        "header accepted",
			srv:         httpSrv,
			args:        []string{"--via", "header"},
			token:       valid,
			want:        []want{{transport: "header", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"}},
			countReason: "none",
			countSource: "header",
		},
		{
			name:        "query while only header and subprotocol are read: the incident",
			srv:         httpSrv,
			args:        []string{"--via", "query"},
			token:       valid,
			wantErr:     true,
			want:        []want{{transport: "query", status: 401, reason: "source_disabled"}},
			countReason: "source_disabled",
			countSource: "query",
		},
		{
			name:        "no token",
			srv:         httpSrv,
			args:        []string{"--no-token"},
			wantErr:     true,
			want:        []want{{transport: "none", status: 401, reason: "missing_token"}},
			countReason: "missing_token",
			countSource: "none",
		},
		{
			name:        "expired",
			srv:         httpSrv,
			args:        []string{"--via", "header"},
			token:       expired,
			wantErr:     true,
			want:        []want{{transport: "header", status: 401, reason: "expired"}},
			countReason: "expired",
			countSource: "header",
		},
		{
			name:        "bad signature",
			srv:         httpSrv,
			args:        []string{"--via", "subprotocol"},
			token:       forged,
			wantErr:     true,
			want:        []want{{transport: "subprotocol", status: 401, reason: "bad_signature"}},
			countReason: "bad_signature",
			countSource: "subprotocol",
		},
		{
			name:        "malformed token",
			srv:         httpSrv,
			args:        []string{"--via", "header"},
			token:       "not-a-jwt",
			wantErr:     true,
			want:        []want{{transport: "header", status: 401, reason: "malformed_token"}},
			countReason: "malformed_token",
			countSource: "header",
		},
		{
			name:        "token entry without the application protocol",
			srv:         httpSrv,
			args:        []string{"--via", "subprotocol", "--app-protocol", ""},
			token:       valid,
			wantErr:     true,
			want:        []want{{transport: "subprotocol", status: 400, reason: "protocol_not_offered"}},
			countReason: "protocol_not_offered",
			countSource: "subprotocol",
		},
		{
			name:        "cookie without an origin",
			srv:         allSrv,
			args:        []string{"--via", "cookie"},
			token:       valid,
			wantErr:     true,
			want:        []want{{transport: "cookie", status: 403, reason: "origin_not_allowed"}},
			countReason: "origin_not_allowed",
			countSource: "cookie",
		},
		{
			name:        "expired in close mode: 101, then the reason in the close frame",
			srv:         closeSrv,
			args:        []string{"--via", "subprotocol"},
			token:       expired,
			wantErr:     true,
			want:        []want{{transport: "subprotocol", status: 101, closeCode: 4401, subprotocol: "wsbroker.v1", reason: "expired"}},
			countReason: "expired",
			countSource: "subprotocol",
		},
		{
			name:        "accepted in close mode: the ping is answered",
			srv:         closeSrv,
			args:        []string{"--via", "header"},
			token:       valid,
			want:        []want{{transport: "header", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"}},
			countReason: "none",
			countSource: "header",
		},
		{
			name:        "source_disabled in close mode",
			srv:         closeSrv,
			args:        []string{"--via", "query"},
			token:       valid,
			wantErr:     true,
			want:        []want{{transport: "query", status: 101, closeCode: 4401, subprotocol: "wsbroker.v1", reason: "source_disabled"}},
			countReason: "source_disabled",
			countSource: "query",
		},
		{
			name:    "all transports on a server reading all of them",
			srv:     allSrv,
			args:    []string{"--via", "all", "--origin", "https://app.example.com"},
			token:   valid,
			wantErr: false,
			want: []want{
				{transport: "header", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"},
				{transport: "subprotocol", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"},
				{transport: "query", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"},
				{transport: "cookie", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"},
			},
			countReason: "none",
			countSource: "cookie",
		},
		{
			name:    "all transports, some fail: success",
			srv:     httpSrv,
			args:    []string{"--via", "all"},
			token:   valid,
			wantErr: false,
			want: []want{
				{transport: "header", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"},
				{transport: "subprotocol", ok: true, status: 101, subprotocol: "wsbroker.v1", reason: "none"},
				{transport: "query", status: 401, reason: "source_disabled"},
				{transport: "cookie", status: 401, reason: "source_disabled"},
			},
			countReason: "source_disabled",
			countSource: "cookie",
		},
		{
			name:    "all transports fail",
			srv:     httpSrv,
			args:    []string{"--via", "all"},
			token:   expired,
			wantErr: true,
			want: []want{
				{transport: "header", status: 401, reason: "expired"},
				{transport: "subprotocol", status: 401, reason: "expired"},
				{transport: "query", status: 401, reason: "source_disabled"},
				{transport: "cookie", status: 401, reason: "source_disabled"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before float64
			if tt.countReason != "" {
				before = tt.srv.upgrades(resultOf(tt.countReason), tt.countReason, tt.countSource)
			}
			args := append([]string{tt.srv.url, "--json"}, tt.args...)
			if tt.token != "" {
				args = append(args, "--token", tt.token)
			}
			out, err := runProbeCmd(t, args...)
			if (err != nil) != tt.wantErr {
				t.Fatalf("probe error %v, want error %v; output:\n%s",
					err, tt.wantErr, out)
			}
			if tt.token != "" && strings.Contains(out, tt.token) {
				t.Fatalf("the output holds the token:\n%s",
					out)
			}
			var rep probeReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("output is not the JSON report: %v\n%s",
					err, out)
			}
			if len(rep.Results) != len(tt.want) {
				t.Fatalf("%d results, want %d:\n%s",
					len(rep.Results), len(tt.want), out)
			}
			for i, w := range tt.want {
				r := rep.Results[i]
				got := want{transport: r.Transport, ok: r.OK, status: r.Status, closeCode: r.CloseCode, subprotocol: r.Subprotocol, reason: r.Reason}
				if got != w {
					t.Fatalf("result %d = %+v, want %+v\n%s",
						i, got, w, out)
				}
				if !r.OK && r.Hint == "" {
					t.Fatalf("result %d has no hint:\n%s",
						i, out)
				}
				if !r.OK && r.CloseCode == 0 && r.RequestID == "" {
					t.Fatalf("result %d has no request id to search for:\n%s",
						i, out)
				}
			}
			if tt.countReason != "" {
				testkit.CheckFor(t, 5*time.Second, 10*time.Millisecond, func() error {
					if got := tt.srv.upgrades(resultOf(tt.countReason), tt.countReason, tt.countSource); got != before+1 {
						return fmt.Errorf("wsbroker_upgrades_total{reason=%q,source=%q} = %v, want %v", tt.countReason, tt.countSource, got, before+1)
					}
					return nil
				})
			}
		})
	}
}

func resultOf(reason string) string {
	if reason == "none" {
		return "accepted"
	}
	return "rejected"
}

// TestProbeText checks the human output: the reason, the fix and the id to
// search for, and never the token.
func TestProbeText(t *testing.T) {
	verifyNoLeaks(t)
	srv := startProbeServer(t, probeServerOpts{})
	tok := hsProbeToken(t, nil)
	out, err := runProbeCmd(t, srv.url+"?access_token="+tok, "--via", "query", "--token", tok)
	if err == nil {
		t.Fatalf("probe succeeded, want the query transport to fail:\n%s",
			out)
	}
	for _, want := range []string{
		"probe " + strings.TrimSuffix(srv.url, "/ws") + "/ws?access_token=REDACTED",
		"query        FAIL  401 Unauthorized",
		"reason=source_disabled",
		"fix:   move the token to an enabled source",
		"search: request_id=",
		`token HS256, sub "probe-user", expires in`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("output lacks %q:\n%s",
				want, out)
		}
	}
	if strings.Contains(out, tok) || strings.Contains(out, tok[strings.LastIndexByte(tok, '.')+1:]) {
		t.Fatalf("the output holds the token:\n%s",
			out)
	}
}

// TestProbeBadServers points probe at servers that get the handshake wrong.
func TestProbeBadServers(t *testing.T) {
	verifyNoLeaks(t)
	tok := hsProbeToken(t, nil)
	tests := []struct {
		name        string
		answer      func(offered []string) string
		wantSub     string
		wantProblem string
	}{
		{
			name:        "101 without a subprotocol",
			answer:      func([]string) string { return "" },
			wantSub:     "",
			wantProblem: "selected no subprotocol",
		},
		{
			name:        "the token entry echoed",
			answer:      func(offered []string) string { return offered[len(offered)-1] },
			wantSub:     "<the token entry>",
			wantProblem: "echoed the token entry",
		},
		{
			name:        "a protocol that was not offered",
			answer:      func([]string) string { return "wsbroker.v2" },
			wantSub:     "wsbroker.v2",
			wantProblem: "which was not offered",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := startFakeWSServer(t, tt.answer)
			out, err := runProbeCmd(t, "ws://"+addr+"/ws", "--token", tok, "--json")
			if err == nil {
				t.Fatalf("probe succeeded against a bad server:\n%s",
					out)
			}
			if strings.Contains(out, tok) {
				t.Fatalf("the output holds the token:\n%s",
					out)
			}
			var rep probeReport
			if err := json.Unmarshal([]byte(out), &rep); err != nil {
				t.Fatalf("output is not JSON: %v\n%s",
					err, out)
			}
			r := rep.Results[0]
			if r.OK || r.Subprotocol != tt.wantSub || !strings.Contains(strings.Join(r.Problems, "\n"), tt.wantProblem) {
				t.Fatalf("result %+v, want failed with subprotocol %q and a problem about %q",
					r, tt.wantSub, tt.wantProblem)
			}
		})
	}

	t.Run("not a broker", func(t *testing.T) {
		srv := httptest.NewServer(http.NotFoundHandler())
		t.Cleanup(srv.Close)
		out, err := runProbeCmd(t, srv.URL+"/ws", "--token", tok, "--json")
		if err == nil {
			t.Fatalf("probe succeeded against a plain HTTP server:\n%s",
				out)
		}
		var rep probeReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		if r := rep.Results[0]; r.Reason != "http_404" || len(r.Problems) == 0 {
			t.Fatalf("result %+v, want http_404 with a note that the broker did not answer",
				r)
		}
	})

	t.Run("nothing listening", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		out, err := runProbeCmd(t, "ws://"+addr+"/ws", "--token", tok, "--json", "--timeout", "2s")
		if err == nil {
			t.Fatalf("probe succeeded with nothing listening:\n%s",
				out)
		}
		var rep probeReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		if r := rep.Results[0]; r.Reason != "unreachable" || !strings.Contains(r.Error, "connect") {
			t.Fatalf("result %+v, want unreachable",
				r)
		}
	})
}

func TestProbeFlags(t *testing.T) {
	tok := hsProbeToken(t, nil)
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{
			name:    "no token",
			args:    []string{"ws://127.0.0.1:1/ws"},
			wantErr: "no token",
		},
		{
			name:    "unknown transport",
			args:    []string{"ws://127.0.0.1:1/ws", "--token", tok, "--via", "carrier-pigeon"},
			wantErr: "via:",
		},
		{
			name:    "bad scheme",
			args:    []string{"ftp://127.0.0.1:1/ws", "--token", tok},
			wantErr: "scheme",
		},
		{
			name:    "token and no-token",
			args:    []string{"ws://127.0.0.1:1/ws", "--token", tok, "--no-token"},
			wantErr: "--no-token",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("WSBROKER_TOKEN", "")
			out, err := runProbeCmd(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one about %q",
					err, tt.wantErr)
			}
			if strings.Contains(out+err.Error(), tok) {
				t.Fatalf("the output holds the token")
			}
		})
	}
}

// TestProbeTLS probes a wss:// broker.
func TestProbeTLS(t *testing.T) {
	verifyNoLeaks(t)
	srv := startProbeServer(t, probeServerOpts{tls: true})
	tok := hsProbeToken(t, nil)
	if out, err := runProbeCmd(t, srv.url, "--token", tok, "--insecure", "--via", "all"); err != nil || !strings.Contains(out, "subprotocol  OK") {
		t.Fatalf("probe over TLS: %v\n%s",
			err, out)
	}
	out, err := runProbeCmd(t, srv.url, "--token", tok, "--json")
	if err == nil {
		t.Fatalf("probe trusted a self-signed certificate:\n%s",
			out)
	}
	var rep probeReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if r := rep.Results[0]; r.Reason != "unreachable" || !strings.Contains(r.Error, "certificate") {
		t.Fatalf("result %+v, want unreachable with a certificate error",
			r)
	}
}

// TestProbeTokenFile reads the token from a file.
func TestProbeTokenFile(t *testing.T) {
	verifyNoLeaks(t)
	srv := startProbeServer(t, probeServerOpts{})
	path := filepath.Join(t.TempDir(), "tok.jwt")
	if err := os.WriteFile(path, []byte(hsProbeToken(t, nil)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runProbeCmd(t, srv.url, "--token-file", path); err != nil {
		t.Fatalf("probe with --token-file: %v\n%s",
			err, out)
	}
}

// startFakeWSServer completes handshakes with a chosen subprotocol answer
// and then holds the connection (answers nothing), like a misconfigured
// server or proxy. It returns the address.
func startFakeWSServer(t *testing.T, answer func(offered []string) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				req, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				var offered []string
				for _, p := range strings.Split(req.Header.Get("Sec-WebSocket-Protocol"), ",") {
					if p = strings.TrimSpace(p); p != "" {
						offered = append(offered, p)
					}
				}
				sum := sha1.Sum([]byte(req.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
				resp := "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
					base64.StdEncoding.EncodeToString(sum[:]) + "\r\n"
				if p := answer(offered); p != "" {
					resp += "Sec-WebSocket-Protocol: " + p + "\r\n"
				}
				if _, err := io.WriteString(c, resp+"\r\n"); err != nil {
					return
				}
				// Answer a ping with a pong so that only the subprotocol is wrong.
				_, _ = io.Copy(&pongWriter{c: c}, br)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// pongWriter answers the first bytes it is given (the probe's ping) with an
// unmasked empty pong frame.
type pongWriter struct {
	c    net.Conn
	done bool
}

func (p *pongWriter) Write(b []byte) (int, error) {
	if !p.done {
		p.done = true
		if _, err := p.c.Write([]byte{0x8a, 0x00}); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// TestInspect checks `token inspect` verdicts, with and without keys.
func TestInspect(t *testing.T) {
	verifyNoLeaks(t)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, append(probeSecret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	otherSecret := filepath.Join(dir, "other")
	if err := os.WriteFile(otherSecret, []byte("a-different-secret-a-different-secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	jwks := fmt.Sprintf(`{"keys":[{"kty":"RSA","kid":"k1","alg":"RS256","use":"sig","n":%q,"e":"AQAB"}]}`,
		base64.RawURLEncoding.EncodeToString(rsaKey.PublicKey.N.Bytes()))
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, []byte(jwks), 0o600); err != nil {
		t.Fatal(err)
	}
	jwksSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, jwks)
	}))
	t.Cleanup(jwksSrv.Close)
	rsWithKid := func(kid string) string {
		return signProbeToken(t, jwt.SigningMethodRS256, rsaKey, func(_ jwt.MapClaims, h map[string]any) { h["kid"] = kid })
	}
	now := time.Now()

	tests := []struct {
		name       string
		token      string
		args       []string
		wantReason string
		verified   bool
		wantCheck  string
	}{
		{
			name:       "valid, verified with the secret",
			token:      hsProbeToken(t, nil),
			args:       []string{"--jwt-hmac-secret-file", secretFile},
			wantReason: "none",
			verified:   true,
			wantCheck:  "HS256 is allowed",
		},
		{
			name:       "valid, no keys: predicted",
			token:      hsProbeToken(t, nil),
			wantReason: "none",
			wantCheck:  "not checked (no keys given)",
		},
		{
			name: "expired, no keys",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
				c["exp"] = now.Add(-time.Hour).Unix()
			}),
			wantReason: "expired",
			// Minutes, not seconds: the command's clock reads later than
			// the test's now, a second boundary apart on a busy machine.
			wantCheck: "expired 1h0m",
		},
		{
			name: "expired but inside the leeway",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
				c["exp"] = now.Add(-10 * time.Second).Unix()
			}),
			args:       []string{"--jwt-hmac-secret-file", secretFile},
			wantReason: "none",
			verified:   true,
			wantCheck:  "still inside the leeway",
		},
		{
			name: "not yet valid",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
				c["nbf"] = now.Add(10 * time.Minute).Unix()
			}),
			args:       []string{"--jwt-hmac-secret-file", secretFile},
			wantReason: "not_yet_valid",
			verified:   true,
			wantCheck:  "the issuer's clock runs ahead",
		},
		{
			name:       "bad signature",
			token:      hsProbeToken(t, nil),
			args:       []string{"--jwt-hmac-secret-file", otherSecret},
			wantReason: "bad_signature",
			verified:   true,
		},
		{
			name:       "alg not allowed",
			token:      hsProbeToken(t, nil),
			args:       []string{"--jwt-hmac-secret-file", secretFile, "--jwt-algs", "HS512"},
			wantReason: "alg_not_allowed",
			verified:   true,
			wantCheck:  "HS256 is not in the allow-list (HS512)",
		},
		{
			name: "wrong issuer",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
				c["iss"] = "https://evil.example.com"
			}),
			args:       []string{"--jwt-hmac-secret-file", secretFile, "--jwt-issuer", "https://id.example.com"},
			wantReason: "wrong_issuer",
			verified:   true,
			wantCheck:  `"https://evil.example.com", want "https://id.example.com"`,
		},
		{
			name: "wrong audience",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
				c["aud"] = []string{"billing"}
			}),
			args:       []string{"--jwt-hmac-secret-file", secretFile, "--jwt-audience", "broker"},
			wantReason: "wrong_audience",
			verified:   true,
			wantCheck:  `does not include "broker"`,
		},
		{
			name: "no subject",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
				delete(c, "sub")
			}),
			args:       []string{"--jwt-hmac-secret-file", secretFile},
			wantReason: "missing_claim",
			verified:   true,
		},
		{
			name:       "kid in the JWKS file",
			token:      rsWithKid("k1"),
			args:       []string{"--jwt-key-file", jwksFile},
			wantReason: "none",
			verified:   true,
			wantCheck:  `"k1" is in the key set`,
		},
		{
			name:       "unknown kid",
			token:      rsWithKid("k2"),
			args:       []string{"--jwt-key-file", jwksFile},
			wantReason: "unknown_key",
			verified:   true,
			wantCheck:  `"k2" is not among the known kids`,
		},
		{
			name:       "kid from a JWKS URL",
			token:      rsWithKid("k1"),
			args:       []string{"--jwks-url", jwksSrv.URL},
			wantReason: "none",
			verified:   true,
			wantCheck:  `"k1" is in the key set`,
		},
		{
			name:       "malformed",
			token:      "abc.def",
			wantReason: "malformed_token",
			wantCheck:  "2 segments",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, format := range []string{"text", "json"} {
				args := append([]string{"token", "inspect", tt.token}, tt.args...)
				if format == "json" {
					args = append(args, "--json")
				}
				root := newRoot()
				var out bytes.Buffer
				root.SetOut(&out)
				root.SetErr(&out)
				root.SetArgs(args)
				err := root.ExecuteContext(context.Background())
				if (err != nil) != (tt.wantReason != "none") {
					t.Fatalf("%s: error %v, want one only when refused (%s):\n%s",
						format, err, tt.wantReason, out.String())
				}
				if parts := strings.Split(tt.token, "."); len(parts) == 3 && strings.Contains(out.String(), parts[2]) {
					t.Fatalf("%s: the output holds the signature:\n%s",
						format, out.String())
				}
				if format == "text" && tt.wantCheck != "" && !strings.Contains(out.String(), tt.wantCheck) {
					t.Fatalf("%s: output lacks %q:\n%s",
						format, tt.wantCheck, out.String())
				}
				if format == "text" {
					continue
				}
				var rep inspectReport
				if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
					t.Fatalf("not JSON: %v\n%s",
						err, out.String())
				}
				if rep.Reason != tt.wantReason || rep.Verified != tt.verified {
					t.Fatalf("reason %q verified %v, want %q %v:\n%s",
						rep.Reason, rep.Verified, tt.wantReason, tt.verified, out.String())
				}
			}
		})
	}
}

// TestInspectAgreesWithServer checks that what inspect predicts is what a
// server with the same settings answers (through probe).
func TestInspectAgreesWithServer(t *testing.T) {
	verifyNoLeaks(t)
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, probeSecret, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startProbeServer(t, probeServerOpts{verify: func(c *authn.VerifyConfig) {
		c.Issuer, c.Leeway = "https://id.example.com", 30*time.Second
	}})
	now := time.Now()
	tokens := []struct {
		name  string
		token string
	}{
		{
			name:  "good",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) { c["iss"] = "https://id.example.com" }),
		},
		{
			name:  "wrong issuer",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) { c["iss"] = "https://other.example.com" }),
		},
		{
			name: "expired",
			token: hsProbeToken(t, func(c jwt.MapClaims, _ map[string]any) {
				c["iss"] = "https://id.example.com"
				c["exp"] = now.Add(-time.Minute).Unix()
			}),
		},
		{
			name:  "no issuer",
			token: hsProbeToken(t, nil),
		},
		{
			name:  "forged",
			token: signProbeToken(t, jwt.SigningMethodHS256, []byte("forged-forged-forged-forged-forged-forged"), nil),
		},
	}
	for _, tt := range tokens {
		t.Run(tt.name, func(t *testing.T) {
			var ins bytes.Buffer
			_ = runInspect(context.Background(), &inspectOptions{
				hmacSecretFile: secretFile,
				issuer:         "https://id.example.com",
				leeway:         30 * time.Second,
				json:           true,
				timeout:        time.Second,
			}, tt.token, &ins)
			var irep inspectReport
			if err := json.Unmarshal(ins.Bytes(), &irep); err != nil {
				t.Fatal(err)
			}
			out, _ := runProbeCmd(t, srv.url, "--token", tt.token, "--via", "header", "--json")
			var prep probeReport
			if err := json.Unmarshal([]byte(out), &prep); err != nil {
				t.Fatalf("probe output: %v\n%s",
					err, out)
			}
			if got := prep.Results[0].Reason; got != irep.Reason {
				t.Fatalf("inspect says %q, the server %q",
					irep.Reason, got)
			}
		})
	}
}
