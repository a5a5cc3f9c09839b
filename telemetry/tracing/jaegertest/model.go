package jaegertest

import "fmt"

// response is the envelope of Jaeger's /api/traces answers.
type response struct {
	Data   []Trace `json:"data"`
	Errors []struct {
		Code int    `json:"code"`
		Msg  string `json:"msg"`
	} `json:"errors"`
}

func (r response) err() error {
	if len(r.Errors) == 0 {
		return nil
	}
	return fmt.Errorf("jaeger: %d: %s", r.Errors[0].Code, r.Errors[0].Msg)
}

// Trace is one trace as Jaeger's query API returns it.
type Trace struct {
	TraceID   string             `json:"traceID"`
	Spans     []Span             `json:"spans"`
	Processes map[string]Process `json:"processes"`
	Warnings  []string           `json:"warnings"`
}

// Process is the emitting process (OTel resource) of spans.
type Process struct {
	ServiceName string     `json:"serviceName"`
	Tags        []KeyValue `json:"tags"`
}

// Span is one span. OTLP span events appear as Logs whose "event" field is
// the event name; the span kind and status appear as tags (span.kind,
// otel.status_code, otel.status_description, error).
type Span struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []Reference `json:"references"`
	// StartTime is in microseconds since the epoch, Duration in microseconds.
	StartTime int64      `json:"startTime"`
	Duration  int64      `json:"duration"`
	Tags      []KeyValue `json:"tags"`
	Logs      []Log      `json:"logs"`
	ProcessID string     `json:"processID"`
	Warnings  []string   `json:"warnings"`
}

// Reference links a span to another, CHILD_OF for its parent.
type Reference struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

// KeyValue is a tag or log field. Value is a string, bool or float64 as JSON
// decodes it; Type is Jaeger's (string, bool, int64, float64, binary).
type KeyValue struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

// Log is a span event.
type Log struct {
	// Timestamp is in microseconds since the epoch.
	Timestamp int64      `json:"timestamp"`
	Fields    []KeyValue `json:"fields"`
}

// Span returns the first span with the operation name.
func (t Trace) Span(operation string) (Span, bool) {
	for _, s := range t.Spans {
		if s.OperationName == operation {
			return s, true
		}
	}
	return Span{}, false
}

// SpanByID returns the span with the id.
func (t Trace) SpanByID(spanID string) (Span, bool) {
	for _, s := range t.Spans {
		if s.SpanID == spanID {
			return s, true
		}
	}
	return Span{}, false
}

// ServiceName returns the service of the span's process.
func (t Trace) ServiceName(s Span) string {
	return t.Processes[s.ProcessID].ServiceName
}

// ParentSpanID returns the id of the span's CHILD_OF reference, "" for a root.
func (s Span) ParentSpanID() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// Tag returns the value of a tag.
func (s Span) Tag(key string) (any, bool) {
	return lookup(s.Tags, key)
}

// TagString returns a tag's value formatted as a string ("" if absent).
func (s Span) TagString(key string) string {
	v, ok := s.Tag(key)
	if !ok {
		return ""
	}
	return fmt.Sprint(v)
}

// Events returns the span's logs whose "event" field is name.
func (s Span) Events(name string) []Log {
	var out []Log
	for _, l := range s.Logs {
		if l.Name() == name {
			out = append(out, l)
		}
	}
	return out
}

// Name returns the event name (the "event" field).
func (l Log) Name() string {
	v, _ := l.Field("event")
	s, _ := v.(string)
	return s
}

// Field returns the value of a log field.
func (l Log) Field(key string) (any, bool) {
	return lookup(l.Fields, key)
}

func lookup(kvs []KeyValue, key string) (any, bool) {
	for _, kv := range kvs {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return nil, false
}
