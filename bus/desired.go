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

// PutDesired writes ds under its service's key, fenced by generation (see
// PutFenced).
func PutDesired(ctx context.Context, kv jetstream.KeyValue, ds *sv1.DesiredState) (revision uint64, err error) {
	value, err := MarshalDesired(ds)
	if err != nil {
		return 0, fmt.Errorf("encode desired state for %s: %w", ds.GetService(), err)
	}
	return PutFenced(ctx, kv, ds.GetService(), value, ds.GetGeneration(), func(b []byte) (uint64, bool) {
		var old sv1.DesiredState
		if proto.Unmarshal(b, &old) != nil {
			return 0, false
		}
		return old.GetGeneration(), true
	})
}

// PutDrill writes a drill document under the drill's key, fenced by
// generation.
func PutDrill(ctx context.Context, kv jetstream.KeyValue, d *sv1.DrillDocument) (revision uint64, err error) {
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(d)
	if err != nil {
		return 0, fmt.Errorf("encode drill %s: %w", d.GetDrill(), err)
	}
	return PutFenced(ctx, kv, d.GetDrill(), value, d.GetGeneration(), func(b []byte) (uint64, bool) {
		var old sv1.DrillDocument
		if proto.Unmarshal(b, &old) != nil {
			return 0, false
		}
		return old.GetGeneration(), true
	})
}

// PutFenced writes value under key with compare-and-set on the key's
// revision, unless the bucket already holds a document whose generation
// (read by generationOf) is >= generation: it returns ErrStaleGeneration
// then. A value in the bucket that does not decode is overwritten. A deposed
// leader can therefore never replace a newer decision.
func PutFenced(ctx context.Context, kv jetstream.KeyValue, key string, value []byte, generation uint64, generationOf func([]byte) (uint64, bool)) (uint64, error) {
	for attempt := 0; attempt < 8; attempt++ {
		cur, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev, err := kv.Create(ctx, key, value)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // raced with another writer; read again
			}
			if err != nil {
				return 0, fmt.Errorf("create %s: %w", key, err)
			}
			return rev, nil
		case err != nil:
			return 0, fmt.Errorf("read %s: %w", key, err)
		}
		if old, ok := generationOf(cur.Value()); ok && old >= generation {
			return cur.Revision(), fmt.Errorf("%w: %s has generation %d, not writing %d", ErrStaleGeneration, key, old, generation)
		}
		rev, err := kv.Update(ctx, key, value, cur.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("update %s: %w", key, err)
		}
		return rev, nil
	}
	return 0, fmt.Errorf("update %s: too many concurrent writers", key)
}
