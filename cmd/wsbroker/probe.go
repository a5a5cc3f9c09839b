package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/gobwas/ws"
	"github.com/spf13/cobra"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/internal/wsframe"
	"github.com/wsbroker/wsbroker/telemetry/redact"
)

// probeTransports are the transports `probe --via all` tries, in order.
var probeTransports = []string{"header", "subprotocol", "query", "cookie"}

type probeOptions struct {
	token      string
	tokenFile  string
	via        string
	origin     string
	json       bool
	timeout    time.Duration
	queryParam string
	cookie     string
	insecure   bool
	noToken    bool
	appProto   string
}

func newProbeCmd() *cobra.Command {
	o := &probeOptions{}
	cmd := &cobra.Command{
		Use:   "probe URL",
		Short: "Try a WebSocket upgrade the way each kind of client would and explain the answer",
		Long: "Open a WebSocket upgrade to URL (ws://, wss://, http:// or https://) carrying the token the way " +
			"a given kind of client does:\n" +
			"  header       Authorization: Bearer <token> (servers, CLIs, mobile apps)\n" +
			"  subprotocol  Sec-WebSocket-Protocol: wsbroker.v1, bearer.<token> (browsers)\n" +
			"  query        ?access_token=<token> (browsers, when the server enables it)\n" +
			"  cookie       Cookie: access_token=<token> plus Origin (browsers, when enabled)\n" +
			"and print, per transport, the HTTP status, the selected subprotocol, the server's reason and " +
			"fix hint (from the JSON body, or from the close frame in --reject-mode close) and the request " +
			"and trace ids to search the logs, events and traces for. The token is never printed.\n\n" +
			"Exit status 1 when the chosen transport fails; with --via all, when every transport fails.",
		Example: "  wsbroker probe ws://localhost:8080/ws --token \"$TOKEN\"\n" +
			"  wsbroker probe wss://broker.example.com/ws --token-file tok.jwt --via all --origin https://app.example.com\n" +
			"  WSBROKER_TOKEN=... wsbroker probe ws://localhost:8080/ws --via query --json",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := bindEnv(cmd, os.Getenv); err != nil {
				return err
			}
			return runProbe(cmd.Context(), o, args[0], cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.token, "token", "", "the JWT to send (or --token-file, or WSBROKER_TOKEN)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the JWT (keeps it out of shell history)")
	f.StringVar(&o.via, "via", "subprotocol", "transport: header, subprotocol, query, cookie or all")
	f.StringVar(&o.origin, "origin", "", "Origin header to send, as a browser page on that origin would (cookie transport: required by the server)")
	f.BoolVar(&o.json, "json", false, "print the results as JSON")
	f.DurationVar(&o.timeout, "timeout", 5*time.Second, "bound on each attempt (connect, handshake, answer)")
	f.StringVar(&o.queryParam, "query-param", "access_token", "query parameter of the query transport (serve's --token-query-param)")
	f.StringVar(&o.cookie, "cookie-name", "access_token", "cookie name of the cookie transport (serve's --token-cookie)")
	f.BoolVar(&o.insecure, "insecure", false, "wss: do not verify the server's certificate")
	f.StringVar(&o.appProto, "app-protocol", authn.Protocol, "application subprotocol to offer next to the token (\"\" offers none, as a client that forgets it)")
	f.BoolVar(&o.noToken, "no-token", false, "send no credential at all (what the server says to a client whose token got lost)")
	return cmd
}

// probeResult is the outcome of one transport. No field ever holds the
// token: every string passes through scrub.
type probeResult struct {
	Transport   string   `json:"transport"`
	OK          bool     `json:"ok"`
	Status      int      `json:"status,omitempty"`
	StatusText  string   `json:"status_text,omitempty"`
	Subprotocol string   `json:"subprotocol"`
	CloseCode   int      `json:"close_code,omitempty"`
	Reason      string   `json:"reason"`
	Description string   `json:"description,omitempty"`
	Hint        string   `json:"hint,omitempty"`
	RequestID   string   `json:"request_id,omitempty"`
	TraceID     string   `json:"trace_id,omitempty"`
	Authn       string   `json:"www_authenticate,omitempty"`
	Error       string   `json:"error,omitempty"`
	Problems    []string `json:"problems,omitempty"`
	DurationMS  float64  `json:"duration_ms"`
}

type probeReport struct {
	URL     string        `json:"url"`
	Token   string        `json:"token"`
	OK      bool          `json:"ok"`
	Results []probeResult `json:"results"`
}

func runProbe(ctx context.Context, o *probeOptions, rawURL string, out io.Writer) error {
	var token string
	if !o.noToken {
		t, err := probeToken(o)
		if err != nil {
			return err
		}
		token = t
	} else if o.token != "" || o.tokenFile != "" {
		return errors.New("--no-token and a token: give one")
	}
	target, err := parseProbeURL(rawURL)
	if err != nil {
		return err
	}
	var transports []string
	switch {
	case o.noToken:
		transports = []string{"none"}
	case o.via == "all":
		transports = probeTransports
	case o.via == "header", o.via == "subprotocol", o.via == "query", o.via == "cookie":
		transports = []string{o.via}
	default:
		return fmt.Errorf("via: %q is not one of header, subprotocol, query, cookie, all", o.via)
	}
	if o.timeout <= 0 {
		return fmt.Errorf("timeout: %s is not positive", o.timeout)
	}
	rep := probeReport{
		URL:   redactedURL(target, o.queryParam),
		Token: "none sent",
	}
	if !o.noToken {
		rep.Token = tokenSummary(token, time.Now())
	}
	for _, tr := range transports {
		r := probeOne(ctx, o, target, tr, token)
		r.scrub(token)
		rep.Results = append(rep.Results, r)
		if r.OK {
			rep.OK = true
		}
	}
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	} else if err := printProbe(out, &rep); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	if !rep.OK {
		var why []string
		for _, r := range rep.Results {
			why = append(why, r.Transport+": "+r.Reason)
		}
		return fmt.Errorf("probe failed (%s)", strings.Join(why, ", "))
	}
	return nil
}

func probeToken(o *probeOptions) (string, error) {
	tok := o.token
	if o.tokenFile != "" {
		if tok != "" {
			return "", errors.New("give --token or --token-file, not both")
		}
		raw, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return "", fmt.Errorf("token-file: %w", err)
		}
		tok = string(raw)
	}
	tok = strings.TrimSpace(tok)
	tok = strings.TrimPrefix(tok, "Bearer ")
	if tok == "" {
		return "", errors.New("no token: give --token, --token-file or WSBROKER_TOKEN (or --no-token to send none)")
	}
	return tok, nil
}

func parseProbeURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	switch u.Scheme {
	case "ws", "http":
		u.Scheme = "ws"
	case "wss", "https":
		u.Scheme = "wss"
	default:
		return nil, fmt.Errorf("url: scheme %q is not ws, wss, http or https", u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("url: %q has no host", raw)
	}
	if u.Path == "" {
		u.Path = "/"
	}
	return u, nil
}

func redactedURL(u *url.URL, param string) string {
	uri := u.RequestURI()
	return u.Scheme + "://" + u.Host + redact.New(param).URI([]byte(uri))
}

// probeOne runs one handshake the way a client of kind transport would.
func probeOne(ctx context.Context, o *probeOptions, target *url.URL, transport, token string) (r probeResult) {
	r.Transport = transport
	start := time.Now()
	defer func() { r.DurationMS = float64(time.Since(start).Microseconds()) / 1000 }()

	u := *target
	hdr := http.Header{}
	var protocols []string
	if o.appProto != "" {
		protocols = append(protocols, o.appProto)
	}
	switch transport {
	case "header":
		hdr.Set("Authorization", "Bearer "+token)
	case "subprotocol":
		protocols = append(protocols, "bearer."+token)
	case "query":
		q := u.Query()
		q.Set(o.queryParam, token)
		u.RawQuery = q.Encode()
	case "cookie":
		hdr.Set("Cookie", o.cookie+"="+token)
		if o.origin == "" {
			r.Problems = append(r.Problems, "no --origin given: a browser always sends its page's Origin, and the server refuses a cookie without an allowed one")
		}
	}
	if o.origin != "" {
		hdr.Set("Origin", o.origin)
	}
	hdr.Set("User-Agent", "wsbroker-probe/"+buildVersion())
	if len(protocols) > 0 {
		hdr.Set("Sec-WebSocket-Protocol", strings.Join(protocols, ", "))
	}

	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	conn, err := dialProbe(ctx, &u, o.insecure)
	if err != nil {
		r.Reason, r.Error = "unreachable", err.Error()
		return r
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)

	key := make([]byte, 16)
	_, _ = rand.Read(key)
	secKey := base64.StdEncoding.EncodeToString(key)
	var req strings.Builder
	fmt.Fprintf(&req, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
		u.RequestURI(), u.Host, secKey)
	for k, vs := range hdr {
		for _, v := range vs {
			fmt.Fprintf(&req, "%s: %s\r\n", k, v)
		}
	}
	req.WriteString("\r\n")
	if _, err := io.WriteString(conn, req.String()); err != nil {
		r.Reason, r.Error = "unreachable", fmt.Sprintf("send handshake: %v", err)
		return r
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		r.Reason, r.Error = "no_answer", fmt.Sprintf("read handshake answer: %v", err)
		return r
	}
	defer resp.Body.Close()
	r.Status, r.StatusText = resp.StatusCode, http.StatusText(resp.StatusCode)
	r.RequestID = resp.Header.Get("X-Request-Id")
	r.TraceID = resp.Header.Get("X-Trace-Id")
	r.Authn = resp.Header.Get("WWW-Authenticate")
	if resp.StatusCode != http.StatusSwitchingProtocols {
		probeRejected(&r, resp)
		return r
	}
	r.Subprotocol = resp.Header.Get("Sec-WebSocket-Protocol")
	if got, want := resp.Header.Get("Sec-WebSocket-Accept"), acceptKey(secKey); got != want {
		r.Problems = append(r.Problems, "Sec-WebSocket-Accept is wrong: clients drop the connection (a proxy rewrote the handshake?)")
	}
	protoOK := checkSelected(&r, protocols, o.appProto, token)
	probeUpgraded(&r, conn, br)
	if r.OK && !protoOK {
		r.OK = false
		r.Reason = "bad_subprotocol"
	}
	return r
}

func dialProbe(ctx context.Context, u *url.URL, insecure bool) (net.Conn, error) {
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "wss" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	var d net.Dialer
	if u.Scheme == "wss" {
		td := tls.Dialer{NetDialer: &d, Config: &tls.Config{ServerName: u.Hostname(), InsecureSkipVerify: insecure, NextProtos: []string{"http/1.1"}}}
		c, err := td.DialContext(ctx, "tcp", host)
		if err != nil {
			return nil, fmt.Errorf("connect %s (TLS): %w", host, err)
		}
		return c, nil
	}
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", host, err)
	}
	return c, nil
}

// rejectionJSON is the broker's rejection body (broker/handshake.go).
type rejectionJSON struct {
	Error     string `json:"error"`
	Reason    string `json:"reason"`
	Hint      string `json:"hint"`
	RequestID string `json:"request_id"`
}

// probeRejected reads a refused handshake: the reason from the JSON body or
// the X-Wsbroker-Reason header.
func probeRejected(r *probeResult, resp *http.Response) {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var rj rejectionJSON
	if json.Unmarshal(body, &rj) == nil && rj.Reason != "" {
		r.Reason, r.Hint = rj.Reason, rj.Hint
		if r.RequestID == "" {
			r.RequestID = rj.RequestID
		}
	} else if h := resp.Header.Get("X-Wsbroker-Reason"); h != "" {
		r.Reason = h
	}
	if r.Reason == "" {
		// Not the broker's answer: a proxy, a load balancer, another server.
		r.Reason = "http_" + fmt.Sprint(resp.StatusCode)
		text := strings.TrimSpace(string(body))
		if len(text) > 200 {
			text = text[:200] + "..."
		}
		r.Problems = append(r.Problems, fmt.Sprintf("the answer is not the broker's (no reason): a proxy or another server answered; body: %q", text))
		return
	}
	fillReason(r)
}

// fillReason adds the description and hint of a known reason label.
func fillReason(r *probeResult) {
	if rs, ok := authn.ParseReason(r.Reason); ok {
		r.Description = rs.Description()
		if r.Hint == "" {
			r.Hint = rs.Hint()
		}
	}
}

// checkSelected checks the selected subprotocol the way a browser would:
// with protocols offered, the server must select exactly one of them, and
// the right one is the application protocol, never a token entry.
func checkSelected(r *probeResult, offered []string, appProto, token string) bool {
	sel := r.Subprotocol
	switch {
	case len(offered) == 0 && sel == "":
		return true
	case len(offered) == 0:
		r.Problems = append(r.Problems, fmt.Sprintf("the server selected %q although the client offered none: clients drop this connection", sel))
	case sel == "":
		r.Problems = append(r.Problems, "the server selected no subprotocol although the client offered some: a browser drops this connection (1006)")
	case token != "" && strings.Contains(sel, token), strings.HasPrefix(sel, "bearer."), sel == "access_token":
		r.Subprotocol = "<the token entry>"
		r.Problems = append(r.Problems, "the server echoed the token entry as the selected subprotocol: the token leaks into proxy logs and page scripts")
	case !contains(offered, sel):
		r.Problems = append(r.Problems, fmt.Sprintf("the server selected %q, which was not offered: clients drop this connection", sel))
	case sel == appProto:
		return true
	default:
		r.Problems = append(r.Problems, fmt.Sprintf("the server selected %q, not %s", sel, appProto))
	}
	return false
}

// probeUpgraded finds out whether an upgraded connection is really open: in
// close reject mode the broker closes it at once with 4000+status and the
// reason. A ping is answered by a pong on an open connection; the first
// frame back tells which.
func probeUpgraded(r *probeResult, conn net.Conn, br *bufio.Reader) {
	ping := ws.NewPingFrame([]byte("wsbroker-probe"))
	if err := ws.WriteFrame(conn, ws.MaskFrame(ping)); err != nil {
		r.Reason, r.Error = "write_failed", fmt.Sprintf("send ping: %v", err)
		return
	}
	for {
		f, err := wsframe.Read(br, wsframe.DefaultLimit)
		if err != nil {
			r.Reason, r.Error = "closed_without_reason", fmt.Sprintf("read after upgrade: %v", err)
			return
		}
		switch f.Header.OpCode {
		case ws.OpPong:
			r.OK, r.Reason = true, "none"
			body := ws.NewCloseFrameBody(ws.StatusNormalClosure, "probe done")
			_ = ws.WriteFrame(conn, ws.MaskFrame(ws.NewCloseFrame(body)))
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
			_, _ = wsframe.Read(br, wsframe.DefaultLimit)
			return
		case ws.OpClose:
			code, text := ws.ParseCloseFrameData(f.Payload)
			r.CloseCode, r.Reason = int(code), text
			if r.Reason == "" {
				r.Reason = "closed_without_reason"
			}
			body := ws.NewCloseFrameBody(code, "")
			_ = ws.WriteFrame(conn, ws.MaskFrame(ws.NewCloseFrame(body)))
			fillReason(r)
			return
		}
		// A server message before the pong: keep reading.
	}
}

func acceptKey(secKey string) string {
	sum := sha1.Sum([]byte(secKey + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// scrub removes the token from every field (a server or proxy may echo it).
func (r *probeResult) scrub(token string) {
	s := func(v *string) {
		if token != "" && strings.Contains(*v, token) {
			*v = strings.ReplaceAll(*v, token, "<token>")
		}
	}
	for _, v := range []*string{&r.StatusText, &r.Subprotocol, &r.Reason, &r.Description, &r.Hint, &r.RequestID, &r.TraceID, &r.Authn, &r.Error} {
		s(v)
	}
	for i := range r.Problems {
		s(&r.Problems[i])
	}
}

func printProbe(w io.Writer, rep *probeReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "probe %s\ntoken %s\n\n", rep.URL, rep.Token)
	for _, r := range rep.Results {
		verdict := "FAIL"
		if r.OK {
			verdict = "OK"
		}
		status := "-"
		switch {
		case r.Status != 0 && r.CloseCode != 0:
			status = fmt.Sprintf("%d %s, then close %d", r.Status, r.StatusText, r.CloseCode)
		case r.Status != 0:
			status = fmt.Sprintf("%d %s", r.Status, r.StatusText)
		}
		sub := r.Subprotocol
		if sub == "" {
			sub = "(none)"
		}
		fmt.Fprintf(&b, "%-12s %-4s  %s  subprotocol=%s  reason=%s  (%.1f ms)\n", r.Transport, verdict, status, sub, r.Reason, r.DurationMS)
		if r.Error != "" {
			fmt.Fprintf(&b, "%13s error: %s\n", "", r.Error)
		}
		if r.Description != "" && !r.OK {
			fmt.Fprintf(&b, "%13s what:  %s\n", "", r.Description)
		}
		if r.Hint != "" && !r.OK {
			fmt.Fprintf(&b, "%13s fix:   %s\n", "", r.Hint)
		}
		for _, p := range r.Problems {
			fmt.Fprintf(&b, "%13s note:  %s\n", "", p)
		}
		if r.CloseCode != 0 && r.RequestID == "" && r.TraceID == "" {
			fmt.Fprintf(&b, "%13s search: reason=%s at this time (close mode sends no request id; `wsbroker events`, logs)\n", "", r.Reason)
		}
		if r.RequestID != "" || r.TraceID != "" {
			fmt.Fprintf(&b, "%13s search: request_id=%s", "", orDash(r.RequestID))
			if r.TraceID != "" {
				fmt.Fprintf(&b, " trace_id=%s", r.TraceID)
			}
			b.WriteString(" (logs, `wsbroker events`, traces)\n")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
