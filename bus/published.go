package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrNotPublished is returned when a committed desired state did not reach
// the bus in the time a client waited for it.
var ErrNotPublished = errors.New("desired state not on the bus")

// PublishedGeneration reads the generation of the desired state the bus
// carries for service now; 0 when the bucket has none for it.
func PublishedGeneration(ctx context.Context, js jetstream.JetStream, service string) (uint64, error) {
	f, err := PublishedFence(ctx, js, service)
	return f.Generation, err
}

// PublishedFence reads the fence the desired state the bus carries for
// service claims now (its signature unchecked, as PeekFence); zero when the
// bucket has none for it. A generation alone says little across lineages:
// a coordinator cluster rebuilt from empty data numbers its generations
// from small Raft indexes again, below those of the documents it finds.
func PublishedFence(ctx context.Context, js jetstream.JetStream, service string) (Fence, error) {
	kv, err := DesiredBucketHandle(ctx, js)
	if err != nil {
		return Fence{}, err
	}
	e, err := kv.Get(ctx, service)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Fence{}, nil
	}
	if err != nil {
		return Fence{}, fmt.Errorf("read %s from bucket %s: %w", service, DesiredBucket, err)
	}
	f, err := PeekFence(e.Value())
	if err != nil {
		return Fence{}, fmt.Errorf("bucket %s holds a %s document that does not decode: %w", DesiredBucket, service, err)
	}
	return f, nil
}
