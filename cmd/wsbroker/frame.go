package main

import (
	"fmt"
	"io"

	"github.com/gobwas/ws"
)

// maxServerFrame bounds a frame the client commands (probe, loadgen, soak)
// accept from a server: probe in particular talks to servers it does not
// trust, and ws.ReadFrame would read whatever length a peer declares.
const maxServerFrame = 1 << 20

// readFrame reads one server frame, refusing one longer than maxServerFrame
// before reading its payload.
func readFrame(r io.Reader) (ws.Frame, error) {
	h, err := ws.ReadHeader(r)
	if err != nil {
		return ws.Frame{}, err
	}
	if h.Length < 0 || h.Length > maxServerFrame {
		return ws.Frame{}, fmt.Errorf("frame of %d bytes, over the %d-byte bound", h.Length, maxServerFrame)
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
