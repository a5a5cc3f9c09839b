package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/wsbroker/wsbroker/internal/wsframe"
)

func TestBindEnv(t *testing.T) {
	cmd := newServeCmd()
	env := map[string]string{
		"WSBROKER_JWT_ISSUER":      "https://issuer.example",
		"WSBROKER_TOKEN_SOURCES":   "query,header",
		"WSBROKER_LISTEN":          ":1",
		"WSBROKER_ALLOWED_ORIGINS": "https://a.example,https://b.example",
	}
	if err := cmd.ParseFlags([]string{"--listen", ":2"}); err != nil {
		t.Fatal(err)
	}
	if err := bindEnv(cmd, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		flag string
		want string
	}{
		{flag: "jwt-issuer", want: "https://issuer.example"},
		{flag: "token-sources", want: "query,header"},
		{flag: "listen", want: ":2"}, // the command line wins
		{flag: "allowed-origins", want: "[https://a.example,https://b.example]"},
	}
	for _, tt := range tests {
		if got := cmd.Flags().Lookup(tt.flag).Value.String(); got != tt.want {
			t.Fatalf("--%s = %q, want %q",
				tt.flag, got, tt.want)
		}
	}
	if EnvName("jwt-hmac-secret-file") != "WSBROKER_JWT_HMAC_SECRET_FILE" {
		t.Fatalf("EnvName: %s", EnvName("jwt-hmac-secret-file"))
	}
	bad := newServeCmd()
	if err := bindEnv(bad, func(k string) string {
		if k == "WSBROKER_JWT_LEEWAY" {
			return "soon"
		}
		return ""
	}); err == nil || !strings.Contains(err.Error(), "WSBROKER_JWT_LEEWAY") {
		t.Fatalf("a bad value must name its variable, got %v", err)
	}
}

// TestServeRefusesWithoutKey: no key and no --dev is a clear error, not a
// broker that refuses every token.
func TestServeRefusesWithoutKey(t *testing.T) {
	root := newRoot()
	root.SetArgs([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--events=false"})
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	err := root.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "no verification key") || !strings.Contains(err.Error(), "--dev") {
		t.Fatalf("err = %v, want the no-key message naming the flags", err)
	}
}

// TestServeDevAndSIGTERMDrain runs serve --dev, connects with the printed
// token, then cancels (what SIGTERM does): the connection gets 1001.
func TestServeDevAndSIGTERMDrain(t *testing.T) {
	dir := t.TempDir()
	wsAddr, _, token, stop := serveWithEvents(t, filepath.Join(dir, "data"))
	conn, _, _, err := ws.Dialer{Protocols: []string{"wsbroker.v1", "bearer." + token}, Timeout: 5 * time.Second}.Dial(context.Background(), "ws://"+wsAddr+"/ws")
	if err != nil {
		t.Fatalf("dial with the --dev token: %v", err)
	}
	defer conn.Close()
	go stop()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := wsframe.Read(conn, wsframe.DefaultLimit)
		if err != nil {
			t.Fatalf("no close frame before the connection ended: %v", err)
		}
		if f.Header.OpCode == ws.OpClose {
			if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusGoingAway {
				t.Fatalf("close %d, want 1001", code)
			}
			return
		}
	}
}

func TestHMACSecretFileTrimmed(t *testing.T) {
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte("\n  0123456789abcdef0123456789abcdef \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := mintToken(&tokenOptions{hmacSecretFile: p, sub: "a", ttl: time.Hour}, time.Now())
	if err != nil || strings.Count(tok, ".") != 2 {
		t.Fatalf("mint: %q %v", tok, err)
	}
}
