package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wsbroker/wsbroker/telemetry/event"
)

// lease is the value of a node's key in the nodes bucket.
type lease struct {
	Node  string    `json:"node"`
	Epoch uint64    `json:"epoch"`
	Time  time.Time `json:"time"`
}

// reapAgain is how long a reaped run is not reaped again while presence
// catches up with the node.stopped event.
const reapAgain = time.Minute

// Key returns a node's key in the nodes bucket: the node name with every
// byte outside [-_=/A-Za-z0-9] replaced by '_'.
func Key(node string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '=' || r == '/' {
			return r
		}
		return '_'
	}, node)
}

// renew puts this node's lease in kv.
func (c *Cluster) renew(ctx context.Context, kv jetstream.KeyValue) error {
	v, err := json.Marshal(lease{Node: c.cfg.Node, Epoch: c.cfg.Epoch, Time: c.cfg.Now().UTC()})
	if err != nil {
		return fmt.Errorf("cluster: lease: %w", err)
	}
	if _, err := kv.Put(ctx, Key(c.cfg.Node), v); err != nil {
		return fmt.Errorf("cluster: put the lease of node-id %q in %s: %w", c.cfg.Node, NodesBucket, err)
	}
	return nil
}

// heartbeat renews the lease and reaps dead nodes every Lease/3. A node
// reaps only after renewing its own lease without failure for a whole
// lease, so that a NATS failover that kept every node from renewing does
// not make the nodes reap each other.
func (c *Cluster) heartbeat() {
	t := time.NewTicker(c.cfg.Lease / 3)
	defer t.Stop()
	healthy := c.cfg.Now()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Lease/3)
		if err := c.renew(ctx, c.res.Load().kv); err != nil {
			// The other nodes may be failing to renew too (a NATS
			// server lost, the bucket electing a leader): reap again
			// only after a whole lease of successful renewals.
			c.log.Warn("cluster: lease not renewed", "err", err)
			healthy = time.Time{}
			cancel()
			continue
		}
		now := c.cfg.Now()
		if healthy.IsZero() {
			healthy = now
		}
		if now.Sub(healthy) >= c.cfg.Lease {
			if err := c.reap(ctx); err != nil {
				c.log.Warn("cluster: reaping dead nodes", "err", err)
			}
		}
		cancel()
	}
}

// reap appends node.stopped for every run with connections in presence
// whose node holds no lease any more. Presence is read before the leases,
// so a node that just started (lease first, then connections) is never
// taken for dead. Every live node reaps; the events are identical (same
// id) and the event stream stores one.
func (c *Cluster) reap(ctx context.Context) error {
	if c.cfg.Sink == nil || c.cfg.Present == nil {
		return nil
	}
	present := c.cfg.Present()
	now := c.cfg.Now()
	for k, at := range c.reaped {
		if now.Sub(at) > reapAgain {
			delete(c.reaped, k)
		}
	}
	seen := map[NodeEpoch]bool{}
	for _, ne := range present {
		if ne.Node == c.cfg.Node || seen[ne] {
			continue
		}
		seen[ne] = true
		if _, ok := c.reaped[ne]; ok {
			continue
		}
		alive, err := c.alive(ctx, ne)
		if err != nil {
			return err
		}
		if alive {
			continue
		}
		c.reaped[ne] = now
		e := event.Event{Type: event.TypeNodeStopped, Node: ne.Node, Epoch: ne.Epoch, Time: now, Seq: ^uint64(0),
			Detail: "lease expired; reaped by " + c.cfg.Node}
		c.log.Warn("cluster: node lease expired; its connections leave presence", "node", ne.Node, "epoch", ne.Epoch)
		c.cfg.Sink.Observe(ctx, &e)
	}
	return nil
}

// alive reports whether ne's node holds a lease for ne's run or a later
// one (a later run's node.started closes ne's connections itself).
func (c *Cluster) alive(ctx context.Context, ne NodeEpoch) (bool, error) {
	kve, err := c.res.Load().kv.Get(ctx, Key(ne.Node))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("cluster: lease of %q: %w", ne.Node, err)
	}
	var l lease
	if err := json.Unmarshal(kve.Value(), &l); err != nil {
		return false, nil
	}
	return l.Epoch >= ne.Epoch, nil
}
