package bus

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ErrStaleGeneration is returned by PutDesired when the bucket already holds a
// document of the same or a higher generation: a deposed leader can only try
// to write something older, and must not win.
var ErrStaleGeneration = errors.New("bucket holds a newer or equal generation")

// MarshalDesired encodes a desired state the same way on every coordinator, so
// that republishing a committed state yields the same bytes.
func MarshalDesired(ds *sv1.DesiredState) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(ds)
}

// PutDesired writes ds under its service's key with compare-and-set on the
// key's revision, unless the bucket already holds a generation >= ds's. It
// returns ErrStaleGeneration in that case. A value in the bucket that does
// not decode is overwritten.
func PutDesired(ctx context.Context, kv jetstream.KeyValue, ds *sv1.DesiredState) (revision uint64, err error) {
	value, err := MarshalDesired(ds)
	if err != nil {
		return 0, fmt.Errorf("encode desired state for %s: %w", ds.GetService(), err)
	}
	key := ds.GetService()
	for attempt := 0; attempt < 8; attempt++ {
		cur, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev, err := kv.Create(ctx, key, value)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // raced with another writer; read again
			}
			if err != nil {
				return 0, fmt.Errorf("create desired state %s: %w", key, err)
			}
			return rev, nil
		case err != nil:
			return 0, fmt.Errorf("read desired state %s: %w", key, err)
		}
		var old sv1.DesiredState
		if proto.Unmarshal(cur.Value(), &old) == nil && old.GetGeneration() >= ds.GetGeneration() {
			return cur.Revision(), fmt.Errorf("%w: %s has generation %d, not writing %d", ErrStaleGeneration, key, old.GetGeneration(), ds.GetGeneration())
		}
		rev, err := kv.Update(ctx, key, value, cur.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("update desired state %s: %w", key, err)
		}
		return rev, nil
	}
	return 0, fmt.Errorf("update desired state %s: too many concurrent writers", key)
}
