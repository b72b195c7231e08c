package bus

import (
	"context"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
)

// replies is an inbox subscription whose queue holds at most the answers
// its request can bring. A sync subscription's queue has nats.go's default
// 65,536 slots, half a megabyte allocated and cleared for every read of a
// bucket, every query and every intent: at every agent's start and at each
// drills listing, for a handful of answers.
type replies struct {
	sub    *nats.Subscription
	ch     chan *nats.Msg
	closed chan struct{} // closed with the subscription or its connection
}

// subscribeReplies subscribes to inbox with room for n answers waiting to
// be read. More than n waiting are dropped by the client, and next says so.
func subscribeReplies(nc *nats.Conn, inbox string, n int) (*replies, error) {
	r := &replies{ch: make(chan *nats.Msg, n), closed: make(chan struct{})}
	sub, err := nc.ChanSubscribe(inbox, r.ch)
	if err != nil {
		return nil, err
	}
	r.sub = sub
	// The client closes no channel of its own here, as it does a sync
	// subscription's when the connection closes: this says so instead.
	var once sync.Once
	sub.SetClosedHandler(func(string) { once.Do(func() { close(r.closed) }) })
	if !sub.IsValid() { // closed before the handler was set
		once.Do(func() { close(r.closed) })
	}
	return r, nil
}

// next returns the next answer, waiting until ctx ends, as a sync
// subscription's NextMsg does: the servers' "no responders" is
// nats.ErrNoResponders, a closed connection nats.ErrConnectionClosed. An
// answer dropped for want of room is an error, never a silent gap.
func (r *replies) next(ctx context.Context) (*nats.Msg, error) {
	var m *nats.Msg
	select {
	case m = <-r.ch:
	default:
		if err := r.dropped(); err != nil {
			return nil, err
		}
		select {
		case m = <-r.ch:
		case <-r.closed:
			return nil, nats.ErrConnectionClosed
		case <-ctx.Done():
			if err := r.dropped(); err != nil {
				return nil, err
			}
			return nil, ctx.Err()
		}
	}
	if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
		return nil, nats.ErrNoResponders
	}
	return m, nil
}

// dropped says whether the client dropped answers for want of room.
func (r *replies) dropped() error {
	if n, err := r.sub.Dropped(); err == nil && n > 0 {
		return fmt.Errorf("%w: %d answers dropped, more than the %d expected", nats.ErrSlowConsumer, n, cap(r.ch))
	}
	return nil
}

func (r *replies) unsubscribe() { _ = r.sub.Unsubscribe() }
