package broker

import (
	"io"
	"net/http"
	"testing"

	"github.com/gobwas/ws"
)

// BenchmarkPingPong measures the steady-state read/handle path: one masked
// ping from the client, read by a poller worker, answered with a pong.
// The client side uses fixed buffers, so allocs/op are the server's.
func BenchmarkPingPong(b *testing.B) {
	tb := newTestBroker(b, brokerOpts{})
	r := tb.doHandshake(handshakeReq{protocols: "wsbroker.v1, bearer." + hsToken(b, validClaims("bench"))})
	if r.resp.StatusCode != http.StatusSwitchingProtocols {
		b.Fatalf("upgrade: %d", r.resp.StatusCode)
	}
	ping := ws.MustCompileFrame(ws.MaskFrameInPlace(ws.NewPingFrame([]byte("ping"))))
	pong := make([]byte, 6)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.conn.Write(ping); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(r.br, pong); err != nil {
			b.Fatal(err)
		}
	}
	if ws.OpCode(pong[0]&0x0f) != ws.OpPong {
		b.Fatalf("answer opcode %x, want pong", pong[0]&0x0f)
	}
}

// BenchmarkEncodeMessage is the fan-out encode: one frame per publish,
// shared by every subscriber.
func BenchmarkEncodeMessage(b *testing.B) {
	data := []byte(`{"text":"hello","n":42}`)
	b.ReportAllocs()
	for b.Loop() {
		_ = encodeMessage("news", 42, data)
	}
}
