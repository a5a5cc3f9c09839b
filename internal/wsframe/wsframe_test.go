package wsframe

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/gobwas/ws"
)

func TestRead(t *testing.T) {
	var b bytes.Buffer
	// A masked client frame is unmasked.
	f := ws.MaskFrame(ws.NewTextFrame([]byte("hello")))
	if err := ws.WriteFrame(&b, f); err != nil {
		t.Fatal(err)
	}
	// A frame over the limit is refused on its header alone: its payload
	// is never read (here it is not even there).
	if err := ws.WriteHeader(&b, ws.Header{Fin: true, OpCode: ws.OpBinary, Length: 1 << 40}); err != nil {
		t.Fatal(err)
	}
	got, err := Read(&b, 16)
	if err != nil || string(got.Payload) != "hello" || got.Header.OpCode != ws.OpText {
		t.Fatalf("Read = %q %v, %v", got.Payload, got.Header.OpCode, err)
	}
	if _, err := Read(&b, 16); err == nil || !strings.Contains(err.Error(), "over the 16-byte bound") {
		t.Fatalf("oversized frame: %v", err)
	}
	if _, err := Read(&b, 16); err != io.EOF {
		t.Fatalf("end of input: %v, want EOF", err)
	}
	// A truncated payload is an error, not a short frame.
	b.Reset()
	_ = ws.WriteHeader(&b, ws.Header{Fin: true, OpCode: ws.OpText, Length: 10})
	b.WriteString("abc")
	if _, err := Read(&b, 16); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated frame: %v, want ErrUnexpectedEOF", err)
	}
}
