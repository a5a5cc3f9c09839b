package eventlog

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/wsbroker/wsbroker/telemetry/event"
	"github.com/wsbroker/wsbroker/telemetry/redact"
)

// Register mounts the admin API on mux:
//
//	GET /v1/presence?channel=          open connections per subject and channel
//	GET /v1/connections?sub=           the open connections
//	GET /v1/events?type=&reason=&since=&limit=
//	                                   stored events, a JSON array of CloudEvents
//	GET /v1/rejections                 rejections by reason, the last 1000
func (l *Log) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/presence", l.servePresence)
	mux.HandleFunc("GET /v1/connections", l.serveConnections)
	mux.HandleFunc("GET /v1/events", l.serveEvents)
	mux.HandleFunc("GET /v1/rejections", l.serveRejections)
}

// Handler returns the admin API alone.
func (l *Log) Handler() http.Handler {
	mux := http.NewServeMux()
	l.Register(mux)
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// notReady answers 503 with the reason while the log is not ready (NATS
// unreachable since start): an empty or partial projection would be wrong
// data, not an outage.
func (l *Log) notReady(w http.ResponseWriter) bool {
	if l.Ready() {
		return false
	}
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, l.Status())
	return true
}

func (l *Log) projection(w http.ResponseWriter) *Projection {
	if l.notReady(w) {
		return nil
	}
	if l.proj == nil {
		writeError(w, http.StatusServiceUnavailable, "no projection on a read-only event log")
	}
	return l.proj
}

func (l *Log) servePresence(w http.ResponseWriter, r *http.Request) {
	p := l.projection(w)
	if p == nil {
		return
	}
	if ch := r.URL.Query().Get("channel"); ch != "" {
		cp := p.ChannelPresence(ch)
		cp.Channel = redact.Text(cp.Channel)
		cp.Subjects = redactKeys(cp.Subjects)
		writeJSON(w, cp)
		return
	}
	pr := p.Presence()
	pr.Subjects, pr.Channels = redactKeys(pr.Subjects), redactKeys(pr.Channels)
	writeJSON(w, pr)
}

func redactKeys(m map[string]int) map[string]int {
	out := make(map[string]int, len(m))
	for k, v := range m {
		out[redact.Text(k)] += v
	}
	return out
}

func (l *Log) serveConnections(w http.ResponseWriter, r *http.Request) {
	p := l.projection(w)
	if p == nil {
		return
	}
	cs := p.Connections(r.URL.Query().Get("sub"))
	for i := range cs {
		c := &cs[i]
		c.Node, c.Subject, c.Subprotocol = redact.Text(c.Node), redact.Text(c.Subject), redact.Text(c.Subprotocol)
		for j := range c.Channels {
			c.Channels[j] = redact.Text(c.Channels[j])
		}
	}
	writeJSON(w, cs)
}

func (l *Log) serveRejections(w http.ResponseWriter, _ *http.Request) {
	p := l.projection(w)
	if p == nil {
		return
	}
	rj := p.Rejections()
	for i := range rj.Recent {
		Redact(&rj.Recent[i])
	}
	writeJSON(w, rj)
}

// ParseQuery reads type, reason, since and limit.
func ParseQuery(get func(string) string) (Query, error) {
	var q Query
	if s := get("type"); s != "" {
		t, ok := event.ParseType(s)
		if !ok {
			return q, fmt.Errorf("type %q: not an event type (e.g. upgrade.rejected)", s)
		}
		q.Type = t
	}
	if s := get("reason"); s != "" {
		if !reasonKnown(s) {
			return q, fmt.Errorf("reason %q: not a reason or close reason label", s)
		}
		q.Reason = s
	}
	if err := q.ParseSince(get("since")); err != nil {
		return q, err
	}
	if s := get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, fmt.Errorf("limit %q: not a count", s)
		}
		q.Limit = n
	}
	return q, nil
}

func (l *Log) serveEvents(w http.ResponseWriter, r *http.Request) {
	if l.notReady(w) {
		return
	}
	q, err := ParseQuery(r.URL.Query().Get)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if q.Limit > MaxQueryLimit {
		writeError(w, http.StatusBadRequest, "limit: at most "+strconv.Itoa(MaxQueryLimit))
		return
	}
	recs, err := l.Events(r.Context(), q)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	for i := range recs {
		Redact(&recs[i].Event)
	}
	writeJSON(w, recs)
}
