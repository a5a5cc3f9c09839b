package eventlog

import (
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"
	"unique"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// RecentRejections is how many rejected upgrades the projection keeps.
const RecentRejections = 1000

// Projection is the fold of the event log into presence, the connection
// list and recent rejections. Apply must see events in stream order; it is
// idempotent per position (stream sequence, index in the message), so a
// replay that overlaps is harmless.
type Projection struct {
	mu sync.RWMutex
	// seq and idx are the position of the last applied event; idx is
	// wholeMessage once all of seq's message is.
	seq       uint64
	idx       int
	conns     map[connKey]*connState
	bySubject map[string]int
	byChannel map[string]map[string]int // channel -> subject -> connections
	epochs    map[string]uint64         // node -> latest started epoch
	recent    []event.Event             // ring of RecentRejections
	next      int
	rejected  map[string]uint64 // reason -> rejections, suppressed included
	// closed remembers recently closed connections (a bounded FIFO) so that
	// an open arriving after its close is ignored: a close the log dropped
	// under overload is applied locally at once, while the open may still be
	// on its way through the stream.
	closed     map[connKey]struct{}
	closedRing []connKey
	closedNext int
}

// closedMemory bounds the tombstones of closed connections.
const closedMemory = 1 << 16

// connKey identifies a connection across nodes and restarts: conn ids are
// only unique within one run (epoch) of one node.
type connKey struct {
	node  string
	epoch uint64
	id    uint64
}

// connState is an open connection in the fold: kept compact (one per
// connection, ~150 bytes), turned into a Conn only when listed. Node names
// are interned; the channel set is allocated at the first subscription.
type connState struct {
	id          uint64
	epoch       uint64
	node        string
	subject     string
	subprotocol string
	opened      time.Time
	tokenExpiry time.Time
	remoteIP    netip.Addr
	source      authn.Source
	channels    map[string]struct{}
}

// conn returns the listed form of c.
func (c *connState) conn() Conn {
	out := Conn{
		ID: c.id, Node: c.node, Epoch: c.epoch, Subject: c.subject,
		Source: c.source.String(), Subprotocol: c.subprotocol,
		Opened: c.opened, TokenExpiry: c.tokenExpiry,
		Channels: make([]string, 0, len(c.channels)),
	}
	if c.remoteIP.IsValid() {
		out.RemoteIP = c.remoteIP.String()
	}
	for ch := range c.channels {
		out.Channels = append(out.Channels, ch)
	}
	slices.Sort(out.Channels)
	return out
}

// Conn is an open connection as the log sees it.
type Conn struct {
	ID          uint64    `json:"conn_id"`
	Node        string    `json:"node"`
	Epoch       uint64    `json:"epoch"`
	Subject     string    `json:"sub"`
	Source      string    `json:"source"`
	Subprotocol string    `json:"subprotocol,omitempty"`
	RemoteIP    string    `json:"remote_ip,omitempty"`
	Opened      time.Time `json:"opened"`
	TokenExpiry time.Time `json:"token_expiry,omitzero"`
	Channels    []string  `json:"channels"`
}

// NewProjection returns an empty projection.
func NewProjection() *Projection {
	return &Projection{
		conns:     map[connKey]*connState{},
		bySubject: map[string]int{},
		byChannel: map[string]map[string]int{},
		epochs:    map[string]uint64{},
		rejected:  map[string]uint64{},
	}
}

// wholeMessage is the index past any event of a message.
const wholeMessage = int(^uint(0) >> 1)

// Seq returns the stream sequence of the last applied event.
func (p *Projection) Seq() uint64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.seq
}

// Advance records that the stream's message at seq was folded in already
// (this node's own events, applied when their append was acknowledged).
func (p *Projection) Advance(seq uint64) {
	p.mu.Lock()
	if seq > p.seq || seq == p.seq && p.idx < wholeMessage {
		p.seq, p.idx = seq, wholeMessage
	}
	p.mu.Unlock()
}

// Apply folds the event at stream sequence seq, index idx of its message,
// into the projection; seq 0 means "no position" (always applied).
func (p *Projection) Apply(seq uint64, idx int, e *event.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if seq != 0 {
		if seq < p.seq || seq == p.seq && idx <= p.idx {
			return
		}
		p.seq, p.idx = seq, idx
	}
	k := connKey{e.Node, e.Epoch, e.ConnID}
	switch e.Type {
	case event.TypeConnectionOpened:
		// An open from an epoch the node has since restarted out of arrives
		// late (another node's replicas, a retried append): it is closed.
		if p.epochs[e.Node] > e.Epoch {
			return
		}
		if _, ok := p.conns[k]; ok {
			return
		}
		if _, gone := p.closed[k]; gone {
			return
		}
		// Decoded events carry a fresh copy of the node name each.
		k.node = unique.Make(e.Node).Value()
		p.conns[k] = &connState{
			id: e.ConnID, node: k.node, epoch: e.Epoch, subject: e.Subject,
			source: e.Source, subprotocol: e.Subprotocol,
			opened: e.Time, tokenExpiry: e.TokenExpiry, remoteIP: e.RemoteIP,
		}
		p.bySubject[e.Subject]++
	case event.TypeConnectionClosed:
		if c, ok := p.conns[k]; ok {
			p.removeLocked(k, c)
		}
	case event.TypeSubscriptionAdded:
		if c, ok := p.conns[k]; ok && e.Channel != "" {
			if _, dup := c.channels[e.Channel]; !dup {
				if c.channels == nil {
					c.channels = map[string]struct{}{}
				}
				c.channels[e.Channel] = struct{}{}
				m := p.byChannel[e.Channel]
				if m == nil {
					m = map[string]int{}
					p.byChannel[e.Channel] = m
				}
				m[c.subject]++
			}
		}
	case event.TypeSubscriptionRemoved:
		if c, ok := p.conns[k]; ok {
			p.unsubscribeLocked(c, e.Channel)
		}
	case event.TypeTokenRefreshed:
		if c, ok := p.conns[k]; ok && !e.TokenExpiry.IsZero() {
			c.tokenExpiry = e.TokenExpiry
		}
	case event.TypeNodeStarted:
		// A node that starts again has lost every connection of its earlier
		// runs, whether it stopped cleanly or crashed.
		if e.Epoch > p.epochs[e.Node] {
			p.epochs[e.Node] = e.Epoch
		}
		p.closeNodeLocked(e.Node, func(ep uint64) bool { return ep < e.Epoch })
	case event.TypeNodeStopped:
		p.closeNodeLocked(e.Node, func(ep uint64) bool { return ep <= e.Epoch })
	case event.TypeUpgradeRejected:
		if len(p.recent) < RecentRejections {
			p.recent = append(p.recent, *e)
		} else {
			p.recent[p.next] = *e
		}
		p.next = (p.next + 1) % RecentRejections
		p.rejected[e.Reason.String()] += 1 + e.Suppressed
	}
}

func (p *Projection) closeNodeLocked(node string, match func(epoch uint64) bool) {
	for k, c := range p.conns {
		if k.node == node && match(k.epoch) {
			p.removeLocked(k, c)
		}
	}
}

// ApplyDropped folds in an event of this node that the log could not take
// (its queue was full). A dropped close is remembered, so that the open
// still on its way through the stream does not bring the connection back.
func (p *Projection) ApplyDropped(e *event.Event) {
	p.Apply(0, 0, e)
	if e.Type != event.TypeConnectionClosed {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.tombstoneLocked(connKey{e.Node, e.Epoch, e.ConnID})
}

func (p *Projection) tombstoneLocked(k connKey) {
	if p.closed == nil {
		p.closed = map[connKey]struct{}{}
	}
	if _, ok := p.closed[k]; ok {
		return
	}
	if len(p.closedRing) < closedMemory {
		p.closedRing = append(p.closedRing, k)
	} else {
		delete(p.closed, p.closedRing[p.closedNext])
		p.closedRing[p.closedNext] = k
		p.closedNext = (p.closedNext + 1) % closedMemory
	}
	p.closed[k] = struct{}{}
}

func (p *Projection) removeLocked(k connKey, c *connState) {
	for ch := range c.channels {
		p.unsubscribeLocked(c, ch)
	}
	delete(p.conns, k)
	if p.bySubject[c.subject]--; p.bySubject[c.subject] <= 0 {
		delete(p.bySubject, c.subject)
	}
}

func (p *Projection) unsubscribeLocked(c *connState, ch string) {
	if _, ok := c.channels[ch]; !ok {
		return
	}
	delete(c.channels, ch)
	m := p.byChannel[ch]
	if m[c.subject]--; m[c.subject] <= 0 {
		delete(m, c.subject)
	}
	if len(m) == 0 {
		delete(p.byChannel, ch)
	}
}

// Presence is who is connected: open connections per subject and per
// channel.
type Presence struct {
	// Seq is the stream sequence the projection has folded up to.
	Seq         uint64         `json:"seq"`
	Connections int            `json:"connections"`
	Subjects    map[string]int `json:"subjects"`
	Channels    map[string]int `json:"channels"`
}

// ChannelPresence is the presence in one channel.
type ChannelPresence struct {
	Seq         uint64         `json:"seq"`
	Channel     string         `json:"channel"`
	Connections int            `json:"connections"`
	Subjects    map[string]int `json:"subjects"`
}

// Presence returns the open connections per subject and per channel.
func (p *Projection) Presence() Presence {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := Presence{
		Seq: p.seq, Connections: len(p.conns),
		Subjects: make(map[string]int, len(p.bySubject)),
		Channels: make(map[string]int, len(p.byChannel)),
	}
	for s, n := range p.bySubject {
		out.Subjects[s] = n
	}
	for ch, m := range p.byChannel {
		for _, n := range m {
			out.Channels[ch] += n
		}
	}
	return out
}

// ChannelPresence returns the subjects subscribed to one channel.
func (p *Projection) ChannelPresence(channel string) ChannelPresence {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := ChannelPresence{Seq: p.seq, Channel: channel, Subjects: map[string]int{}}
	for s, n := range p.byChannel[channel] {
		out.Subjects[s] = n
		out.Connections += n
	}
	return out
}

// Connections returns the open connections, of one subject if sub is not
// empty, oldest first.
func (p *Projection) Connections(sub string) []Conn {
	p.mu.RLock()
	out := make([]Conn, 0, len(p.conns))
	for _, c := range p.conns {
		if sub != "" && c.subject != sub {
			continue
		}
		out = append(out, c.conn())
	}
	p.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if !a.Opened.Equal(b.Opened) {
			return a.Opened.Before(b.Opened)
		}
		if a.Node != b.Node {
			return a.Node < b.Node
		}
		if a.Epoch != b.Epoch {
			return a.Epoch < b.Epoch
		}
		return a.ID < b.ID
	})
	return out
}

// Rejections is the recent rejected upgrades.
type Rejections struct {
	// ByReason counts every rejection folded so far, suppressed ones
	// included.
	ByReason map[string]uint64 `json:"by_reason"`
	// Recent are the last RecentRejections stored events, oldest first.
	Recent []event.Event `json:"recent"`
}

// Rejections returns the counts by reason and the recent rejections.
func (p *Projection) Rejections() Rejections {
	p.mu.RLock()
	defer p.mu.RUnlock()
	out := Rejections{ByReason: make(map[string]uint64, len(p.rejected)), Recent: make([]event.Event, 0, len(p.recent))}
	for r, n := range p.rejected {
		out.ByReason[r] = n
	}
	if len(p.recent) < RecentRejections {
		out.Recent = append(out.Recent, p.recent...)
	} else {
		out.Recent = append(out.Recent, p.recent[p.next:]...)
		out.Recent = append(out.Recent, p.recent[:p.next]...)
	}
	return out
}
