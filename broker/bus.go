package broker

import (
	"context"
	"errors"
)

// ErrBusUnavailable is wrapped by a Bus's errors when the bus cannot reach
// its transport now (NATS unreachable, its history stream not set up yet):
// the client is told so and publishes again later.
var ErrBusUnavailable = errors.New("bus unavailable")

// Bus carries channel messages between broker nodes (package
// broker/cluster implements it over NATS). A nil Bus keeps every channel
// local to the node.
type Bus interface {
	// Start is called once by New with the function that hands a message
	// from the bus to this node's subscribers. With History, every
	// message, this node's own included, arrives through deliver with its
	// stream offset; without, only other nodes' messages do, offset 0.
	Start(deliver func(channel string, offset uint64, data []byte))
	// Watch and Unwatch are called when a channel gets its first local
	// subscriber and loses its last one (under the hub's lock: they must
	// not block on the network).
	Watch(channel string)
	Unwatch(channel string)
	// Sync returns once the node's interest in a watched channel is
	// established, so that a message published after a subscribe's ack
	// reaches the subscriber. It is called outside the hub's lock.
	Sync(ctx context.Context, channel string) error
	// Publish carries a message published on this node to the others.
	// With History it returns once the history stream stored the message,
	// with its stream sequence as offset; without, it does not wait and
	// returns 0.
	Publish(ctx context.Context, channel string, data []byte) (offset uint64, err error)
	// History reports whether channels keep history (and offsets are the
	// history stream's sequences, the same on every node).
	History() bool
	// Recover returns the kept messages of channel after since, oldest
	// first, and whether they are all the messages published after since
	// (false: some were dropped by retention and the client must reload).
	Recover(ctx context.Context, channel string, since uint64) (msgs []BusMessage, recovered bool, err error)
}

// BusMessage is a message read back from the history.
type BusMessage struct {
	Offset uint64
	Data   []byte
}
