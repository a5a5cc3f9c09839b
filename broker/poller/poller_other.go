//go:build !linux

package poller

import "net"

// Without a readiness API every connection is served in blocking mode: one
// goroutine per connection, parked in the handler's Read while idle.
const supported = false

type pollerSys struct{}

type descSys struct{}

func (p *Poller) start() error {
	return nil
}

func (p *Poller) add(conn net.Conn, h Handler) (*Desc, error) {
	return p.AddBlocking(conn, h)
}

// remove and resume are only reached for epoll-watched descriptors, which
// this build never creates.
func (p *Poller) remove(d *Desc, _ bool) error {
	d.state.Store(stateRemoved)
	return nil
}

func (p *Poller) resume(d *Desc) error {
	return ErrNotParked
}

func (p *Poller) removeAll() {}

func (p *Poller) wake() {}

func (p *Poller) release() error {
	return nil
}
