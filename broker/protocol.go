package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/wsbroker/wsbroker/authn"
	"github.com/wsbroker/wsbroker/telemetry"
	"github.com/wsbroker/wsbroker/telemetry/event"
)

// clientMessage is a wsbroker.v1 client frame (DESIGN.md §9).
type clientMessage struct {
	Type    string          `json:"type"`
	ID      json.RawMessage `json:"id,omitempty"`
	Channel string          `json:"channel,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	Since   *uint64         `json:"since,omitempty"`
	Token   string          `json:"token,omitempty"`
}

// Error codes of wsbroker.v1 error frames, HTTP-like.
const (
	codeBadRequest  = 400
	codeAuth        = 401
	codeForbidden   = 403
	codeConflict    = 409
	codeTooLarge    = 413
	codeLimit       = 429
	codeUnavailable = 503
)

func (s *Server) handleMessage(c *Conn, p []byte) {
	var m clientMessage
	if err := json.Unmarshal(p, &m); err != nil {
		s.metrics.Dropped(telemetry.DropInvalid)
		c.sendError(nil, codeBadRequest, "bad_request", "not a JSON object: "+err.Error())
		return
	}
	if len(m.ID) > 64 {
		c.sendError(nil, codeBadRequest, "bad_request", "id longer than 64 bytes")
		return
	}
	switch m.Type {
	case "subscribe":
		if !s.validChannel(c, m.ID, m.Channel) {
			return
		}
		if !c.perms.allowed(actSubscribe, m.Channel) {
			s.metrics.Dropped(telemetry.DropPermissionDenied)
			c.sendError(m.ID, codeForbidden, "permission_denied", "the token does not allow subscribing to "+strconv.Quote(m.Channel))
			return
		}
		c.mu.Lock()
		n := len(c.subs)
		c.mu.Unlock()
		if n >= s.cfg.MaxSubscriptions {
			c.sendError(m.ID, codeLimit, "subscription_limit", "at most "+strconv.Itoa(s.cfg.MaxSubscriptions)+" subscriptions per connection")
			return
		}
		replay := m.Since != nil && s.hub.bus != nil && s.hub.bus.History()
		if !s.hub.subscribe(c, m.Channel, replay) {
			c.sendError(m.ID, codeConflict, "already_subscribed", "already subscribed to "+strconv.Quote(m.Channel))
			return
		}
		if s.hub.bus != nil {
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
			if err := s.hub.bus.Sync(ctx, m.Channel); err != nil {
				s.log.Warn("bus subscription not confirmed", "err", err)
			}
			cancel()
		}
		switch {
		case replay:
			s.recover(c, &m)
		case m.Since != nil:
			// No history on this node: the client reloads its state.
			c.sendAck(m.ID, `,"recovered":false`)
		default:
			c.sendAck(m.ID, "")
		}
	case "unsubscribe":
		if !s.validChannel(c, m.ID, m.Channel) {
			return
		}
		if !s.hub.unsubscribe(c, m.Channel, true) {
			c.sendError(m.ID, codeConflict, "not_subscribed", "not subscribed to "+strconv.Quote(m.Channel))
			return
		}
		c.sendAck(m.ID, "")
	case "publish":
		if !s.validChannel(c, m.ID, m.Channel) {
			return
		}
		if !c.perms.allowed(actPublish, m.Channel) {
			s.metrics.Dropped(telemetry.DropPermissionDenied)
			c.sendError(m.ID, codeForbidden, "permission_denied", "the token does not allow publishing to "+strconv.Quote(m.Channel))
			return
		}
		if len(m.Data) == 0 {
			c.sendError(m.ID, codeBadRequest, "bad_request", "publish needs data")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
		off, err := s.hub.publish(ctx, m.Channel, compactJSON(m.Data))
		cancel()
		if err != nil {
			s.log.Warn("history publish failed", "err", err)
			c.sendError(m.ID, codeUnavailable, "unavailable", publishFailure(err))
			return
		}
		c.sendAck(m.ID, `,"offset":`+strconv.FormatUint(off, 10))
	case "refresh":
		s.refresh(c, &m)
	default:
		s.metrics.Dropped(telemetry.DropInvalid)
		c.sendError(m.ID, codeBadRequest, "bad_request", "unknown type "+strconv.Quote(m.Type)+" (want subscribe, unsubscribe, publish or refresh)")
	}
}

// publishFailure tells the client why a history publish failed, without
// the server-side detail (addresses) of err.
func publishFailure(err error) string {
	switch {
	case errors.Is(err, ErrBusUnavailable):
		return "the channel history is unavailable on this node (NATS unreachable); the message was not stored or delivered; publish again later"
	case errors.Is(err, context.DeadlineExceeded):
		return "the channel history did not confirm the message in time; it may have been stored; publish again (a duplicate is possible)"
	}
	return "the message was not stored in the channel history; publish again"
}

// recover answers a subscribe with since on a history channel: the ack
// says whether every message after since is still kept, the kept ones
// follow (in one write, so that a long history does not overflow the send
// queue), then the live messages held meanwhile that are newer than the
// last replayed one, then live messages as they come.
func (s *Server) recover(c *Conn, m *clientMessage) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.WriteTimeout)
	msgs, recovered, err := s.hub.bus.Recover(ctx, m.Channel, *m.Since)
	cancel()
	if err != nil {
		s.log.Warn("history recovery failed; the client reloads", "err", err)
		recovered, msgs = false, nil
	}
	if recovered {
		c.sendAck(m.ID, `,"recovered":true`)
	} else {
		c.sendAck(m.ID, `,"recovered":false`)
	}
	last := *m.Since
	var batch []byte
	for _, hm := range msgs {
		if hm.Offset <= last {
			continue
		}
		batch = append(batch, encodeMessage(m.Channel, hm.Offset, hm.Data)...)
		last = hm.Offset
	}
	if len(batch) > 0 {
		c.send(batch)
	}
	s.hub.live(c, m.Channel, last)
}

// compactJSON drops insignificant white space so that messages are as
// small as they can be; data was already validated by json.Unmarshal.
func compactJSON(b []byte) []byte {
	if !bytes.ContainsAny(b, " \n\t\r") {
		return b
	}
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return b
	}
	return out.Bytes()
}

// validChannel checks a channel name: 1..MaxChannelNameSize bytes of
// [A-Za-z0-9] and ":_-.@/+=". The set needs no JSON escaping.
func (s *Server) validChannel(c *Conn, id json.RawMessage, name string) bool {
	if name == "" || len(name) > s.cfg.MaxChannelNameSize {
		c.sendError(id, codeBadRequest, "invalid_channel", "channel name must be 1 to "+strconv.Itoa(s.cfg.MaxChannelNameSize)+" bytes")
		return false
	}
	for i := 0; i < len(name); i++ {
		if !channelChar(name[i]) {
			c.sendError(id, codeBadRequest, "invalid_channel", "channel names use letters, digits and :_-.@/+= only")
			return false
		}
	}
	return true
}

func channelChar(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
		b == ':' || b == '_' || b == '-' || b == '.' || b == '@' || b == '/' || b == '+' || b == '='
}

// refresh swaps the connection's token for a newer one of the same subject.
func (s *Server) refresh(c *Conn, m *clientMessage) {
	if m.Token == "" {
		c.sendError(m.ID, codeBadRequest, "bad_request", "refresh needs a token")
		return
	}
	p, v := s.ver.Verify(context.Background(), []byte(m.Token))
	if v.Reason != authn.ReasonNone {
		c.sendError(m.ID, codeAuth, v.Reason.String(), "refresh refused: "+v.Reason.Description())
		return
	}
	if p.Subject != c.subject {
		c.sendError(m.ID, codeForbidden, "subject_mismatch", "a refresh token must be for the connection's subject")
		return
	}
	perms := s.permissionsOf(&p)
	c.mu.Lock()
	c.perms = perms
	c.mu.Unlock()
	c.armExpiry(p.ExpiresAt)
	e := s.getEvent()
	e.Type = event.TypeTokenRefreshed
	e.ConnID, e.Subject, e.TokenExpiry = c.id, c.subject, eventExpiry(p.ExpiresAt)
	s.emit(context.Background(), e)
	s.putEvent(e)
	c.sendAck(m.ID, "")
}

func (c *Conn) sendAck(id json.RawMessage, extra string) {
	b := make([]byte, 10, 64)
	b = append(b, `{"type":"ack"`...)
	if len(id) > 0 {
		b = append(b, `,"id":`...)
		b = append(b, id...)
	}
	b = append(b, extra...)
	b = append(b, '}')
	c.send(frameInPlace(b, 10))
}

func (c *Conn) sendError(id json.RawMessage, code int, reason, msg string) {
	b := make([]byte, 10, 128+len(msg))
	b = append(b, `{"type":"error"`...)
	if len(id) > 0 {
		b = append(b, `,"id":`...)
		b = append(b, id...)
	}
	b = append(b, `,"code":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"reason":`...)
	b = strconv.AppendQuote(b, reason)
	q, _ := json.Marshal(msg)
	b = append(b, `,"message":`...)
	b = append(b, q...)
	b = append(b, '}')
	c.send(frameInPlace(b, 10))
}

// action is what a permission allows.
type action uint8

const (
	actSubscribe action = iota
	actPublish
)

// permissions are glob patterns from token claims. They never change once
// built, so connections whose claims are equal share one value.
type permissions struct {
	sub []string
	pub []string
}

// allowed reports whether p lets a connection take action a on ch; nil
// allows nothing.
func (p *permissions) allowed(a action, ch string) bool {
	if p == nil {
		return false
	}
	list := p.sub
	if a == actPublish {
		list = p.pub
	}
	for _, pat := range list {
		if Glob(pat, ch) {
			return true
		}
	}
	return false
}

// permissionsOf reads the channel claims of a principal: ChannelClaim
// grants both actions; SubscribeClaim and PublishClaim, when configured and
// present, replace it for their action. Equal claims give the same shared
// value (nil when there are none).
func (s *Server) permissionsOf(p *authn.Principal) *permissions {
	var perms permissions
	both, _ := p.StringsClaim(s.cfg.ChannelClaim)
	perms.sub, perms.pub = both, both
	if s.cfg.SubscribeClaim != "" {
		if l, err := p.StringsClaim(s.cfg.SubscribeClaim); err == nil && l != nil {
			perms.sub = l
		}
	}
	if s.cfg.PublishClaim != "" {
		if l, err := p.StringsClaim(s.cfg.PublishClaim); err == nil && l != nil {
			perms.pub = l
		}
	}
	if len(perms.sub) == 0 && len(perms.pub) == 0 {
		return nil
	}
	return s.perms.intern(perms)
}

// permCache interns permissions, so that the connections of one role (the
// same claims) hold one copy instead of a slice of strings each. It is
// bounded: when full it starts over, and connections keep what they hold.
type permCache struct {
	mu sync.Mutex
	m  map[string]*permissions
}

const maxPermCache = 4096

func (pc *permCache) intern(p permissions) *permissions {
	var b strings.Builder
	for _, l := range [2][]string{p.sub, p.pub} {
		for _, pat := range l {
			b.WriteString(strconv.Itoa(len(pat)))
			b.WriteByte(':')
			b.WriteString(pat)
		}
		b.WriteByte('|')
	}
	k := b.String()
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if v, ok := pc.m[k]; ok {
		return v
	}
	if pc.m == nil || len(pc.m) >= maxPermCache {
		pc.m = make(map[string]*permissions)
	}
	v := &p
	pc.m[k] = v
	return v
}

// Glob reports whether name matches pattern, where `*` matches any run of
// bytes (`:` included) and every other byte matches itself. It runs in
// O(len(pattern)·len(name)) at worst, without recursion.
func Glob(pattern, name string) bool {
	px, nx := 0, 0
	starPx, starNx := -1, 0
	for nx < len(name) {
		switch {
		case px < len(pattern) && pattern[px] == '*':
			starPx, starNx = px, nx
			px++
		case px < len(pattern) && pattern[px] == name[nx]:
			px++
			nx++
		case starPx >= 0:
			starNx++
			px, nx = starPx+1, starNx
		default:
			return false
		}
	}
	for px < len(pattern) && pattern[px] == '*' {
		px++
	}
	return px == len(pattern)
}
