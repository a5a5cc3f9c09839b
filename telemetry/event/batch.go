package event

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// BatchContentType is the media type of the CloudEvents JSON batch format
// (CloudEvents JSON format §4): a JSON array of structured events.
const BatchContentType = "application/cloudevents-batch+json"

// AppendBatchJSON appends the events as one CloudEvents JSON batch.
func AppendBatchJSON(b []byte, es []Event) ([]byte, error) {
	b = append(b, '[')
	for i := range es {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = es[i].AppendJSON(b); err != nil {
			return b, err
		}
	}
	return append(b, ']'), nil
}

// DecodeBatch calls fn with each event of b, in order: a CloudEvents JSON
// batch (an array, what the broker's event log stores) or a single
// structured event (what logs written before batching hold). An event that
// does not decode stops the walk with its position; fn's error stops it
// too and is returned as is. fn's *Event is reused between calls.
func DecodeBatch(b []byte, fn func(i int, e *Event) error) error {
	b = bytes.TrimLeft(b, " \t\r\n")
	var e Event
	if len(b) == 0 || b[0] != '[' {
		if err := e.UnmarshalJSON(b); err != nil {
			return err
		}
		return fn(0, &e)
	}
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("event: batch: %w", err)
	}
	for i, r := range raw {
		if err := e.UnmarshalJSON(r); err != nil {
			return fmt.Errorf("event: batch element %d: %w", i, err)
		}
		if err := fn(i, &e); err != nil {
			return err
		}
	}
	return nil
}
