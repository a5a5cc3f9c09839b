// Package wsframe reads one WebSocket frame with a bound on its length,
// checked before the payload is read. gobwas/ws's ReadFrame (deprecated)
// allocates whatever length the peer declares; the client commands (probe
// talks to servers it does not trust) and the tests read through Read.
package wsframe

import (
	"fmt"
	"io"

	"github.com/gobwas/ws"
)

// DefaultLimit bounds a frame from a server: far above any frame wsbroker
// sends (its messages are capped by --max-message-size).
const DefaultLimit = 1 << 20

// Read reads one frame, refusing one whose declared length is over limit
// before reading its payload, and unmasks a masked payload.
func Read(r io.Reader, limit int64) (ws.Frame, error) {
	h, err := ws.ReadHeader(r)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length < 0 || h.Length > limit {
		return ws.Frame{}, fmt.Errorf("frame of %d bytes, over the %d-byte bound", h.Length, limit)
	}
	f := ws.Frame{Header: h, Payload: make([]byte, h.Length)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return ws.Frame{}, err
	}
	if h.Masked {
		ws.Cipher(f.Payload, h.Mask, 0)
	}
	return f, nil
}
