package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ErrStaleGeneration is returned by PutDesired and PutDrill when the bucket
// already holds a verified document with a higher fence, or the same fence
// and enough validity left: a deposed leader can only try to write something
// older, and must not win.
var ErrStaleGeneration = errors.New("bucket holds a newer or equal generation")

// ErrFenceConflict is returned by PutDesired and PutDrill when the bucket
// holds a verified document of the same fence with other content: a
// document of another lineage of this cluster's log (entries a disaster
// recovery lost, written by a leader whose log is gone). Agents that hold
// it refuse the writer's document of that fence as a conflict, so it is
// not written; only a higher fence (the next generation, or a raised
// epoch) reaches them.
var ErrFenceConflict = errors.New("bucket holds another document of the same fence")

// Publisher seals documents and writes them to their buckets, fenced against
// the verified documents already there.
type Publisher struct {
	// Signer seals every document written.
	Signer *Signer
	// Trusted are the keys whose documents in the bucket count; anything
	// else there (garbage, forgeries, documents of retired keys) is
	// overwritten. It includes the signer's own key.
	Trusted *Keyring
	// RenewBefore: a document of the same fence is signed again when less
	// than this much validity is left. Zero means half the validity.
	RenewBefore time.Duration
}

// PutResult says what a put did.
type PutResult struct {
	Revision uint64
	// ReplacedUnverified is true when the bucket held a value that did not
	// verify (written by someone without a trusted key) and it was
	// overwritten.
	ReplacedUnverified bool
	// Renewed is true when the same fence was signed again before expiry.
	Renewed bool
	// Value is the signed document written, nil when nothing was: what the
	// leader publishes again on the document's push subject
	// (DesiredPushSubject, DrillPushSubject). With ErrStaleGeneration for
	// a document of the same fence still valid, it is the bucket's copy.
	Value []byte
}

func (p *Publisher) renewBefore() time.Duration {
	if p.RenewBefore > 0 {
		return p.RenewBefore
	}
	return p.Signer.Validity() / 2
}

// PutDesired seals ds and writes it under its service's key (see PutFenced).
func (p *Publisher) PutDesired(ctx context.Context, kv jetstream.KeyValue, ds *sv1.DesiredState, now time.Time) (PutResult, error) {
	value, err := p.Signer.SealDesired(ds, now)
	if err != nil {
		return PutResult{}, err
	}
	return PutFenced(ctx, kv, ds.GetService(), value, Fence{ds.GetEpoch(), ds.GetGeneration()}, p.Signer.KeyID(), now, p.renewBefore(), func(b []byte) (Header, bool, bool) {
		cur, h, err := p.Trusted.OpenDesired(b, ds.GetService(), time.Time{})
		return h, err == nil && proto.Equal(cur, ds), err == nil
	})
}

// PutDrill seals d and writes it under its drill's key (see PutFenced).
func (p *Publisher) PutDrill(ctx context.Context, kv jetstream.KeyValue, d *sv1.DrillDocument, now time.Time) (PutResult, error) {
	value, err := p.Signer.SealDrill(d, now)
	if err != nil {
		return PutResult{}, err
	}
	return PutFenced(ctx, kv, d.GetDrill(), value, Fence{d.GetEpoch(), d.GetGeneration()}, p.Signer.KeyID(), now, p.renewBefore(), func(b []byte) (Header, bool, bool) {
		cur, h, err := p.Trusted.OpenDrill(b, d.GetDrill(), time.Time{})
		return h, err == nil && proto.Equal(cur, d), err == nil
	})
}

// PutFenced writes value (fence f) under key with compare-and-set on the
// key's revision, unless the bucket holds a document that verifies (read by
// verified) with a higher fence, or with the same fence and more than
// renewBefore of validity left after now: it returns ErrStaleGeneration then.
// A value in the bucket that does not verify is overwritten, whatever fence
// it claims: only documents of trusted keys can hold the fence, so a forged
// document with a huge generation cannot block the coordinators.
//
// A document of the same fence signed by another key than signerID is
// written again at once: after a switch of signing key, the bucket then
// holds only documents of the new key and agents can drop the old one.
// A verified document of the same fence whose content differs (verified
// reports whether it is the same as value's) is never overwritten:
// ErrFenceConflict.
func PutFenced(ctx context.Context, kv jetstream.KeyValue, key string, value []byte, f Fence, signerID string, now time.Time, renewBefore time.Duration, verified func([]byte) (h Header, same, ok bool)) (PutResult, error) {
	for attempt := 0; attempt < 8; attempt++ {
		cur, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			rev, err := kv.Create(ctx, key, value)
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // raced with another writer; read again
			}
			if err != nil {
				return PutResult{}, fmt.Errorf("create %s: %w", key, err)
			}
			return PutResult{Revision: rev, Value: value}, nil
		case err != nil:
			return PutResult{}, fmt.Errorf("read %s: %w", key, err)
		}
		var res PutResult
		h, same, ok := verified(cur.Value())
		switch {
		case !ok:
			res.ReplacedUnverified = true
		case h.Fence == f && !same:
			return PutResult{Revision: cur.Revision()}, fmt.Errorf("%w: %s has fence %s with other content than this cluster's document of that fence", ErrFenceConflict, key, f)
		case h.Fence.Compare(f) > 0:
			return PutResult{Revision: cur.Revision()}, fmt.Errorf("%w: %s has fence %s, not writing %s", ErrStaleGeneration, key, h.Fence, f)
		case h.Fence == f && h.KeyID == signerID && h.ExpiresAt.Sub(now) > renewBefore:
			return PutResult{Revision: cur.Revision(), Value: cur.Value()}, fmt.Errorf("%w: %s has fence %s until %s", ErrStaleGeneration, key, f, h.ExpiresAt.UTC().Format(time.RFC3339))
		case h.Fence == f:
			res.Renewed = true
		}
		rev, err := kv.Update(ctx, key, value, cur.Revision())
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return PutResult{}, fmt.Errorf("update %s: %w", key, err)
		}
		res.Revision, res.Value = rev, value
		return res, nil
	}
	return PutResult{}, fmt.Errorf("update %s: too many concurrent writers", key)
}
