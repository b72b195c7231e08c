package coordinator

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
)

// Signing configures how the coordinator signs the documents it publishes.
type Signing struct {
	// Key signs every desired state and drill document. Required.
	Key ed25519.PrivateKey
	// Trusted are other public keys whose documents in the buckets count
	// as genuine when fencing a write (during a rotation: the key being
	// retired). The coordinator always trusts its own key.
	Trusted []ed25519.PublicKey
	// Validity is how long a signed document stays current on the agents;
	// the leader signs current documents again when half of it is left.
	// bus.DefaultValidity when 0.
	Validity time.Duration
}

// newDocumentPublisher builds the sealing and fencing side of publishing.
func newDocumentPublisher(c Signing) (*bus.Publisher, error) {
	if len(c.Key) == 0 {
		return nil, errors.New("coordinator: signing.key is required (create one with `switchyard keys generate --out FILE`)")
	}
	signer, err := bus.NewSigner(c.Key, c.Validity)
	if err != nil {
		return nil, fmt.Errorf("coordinator: signing.key: %w", err)
	}
	if signer.Validity() < 4*time.Second {
		return nil, fmt.Errorf("coordinator: signing.validity %s: want at least 4s, so that documents can be signed again before they expire", signer.Validity())
	}
	ring, err := bus.NewKeyring(append([]ed25519.PublicKey{signer.Public()}, c.Trusted...)...)
	if err != nil {
		return nil, fmt.Errorf("coordinator: signing.trusted: %w", err)
	}
	return &bus.Publisher{Signer: signer, Trusted: ring}, nil
}

// republishInterval is how often the leader writes every document again:
// often enough that a document is signed again well before it expires.
func republishInterval(validity time.Duration) time.Duration {
	return min(republishEvery, validity/4)
}

// highestVerifiedEpoch reads every document in the buckets and returns the
// highest epoch among those that verify with the coordinator's trusted keys,
// expired or not. Documents no trusted key signed are not counted: they
// cannot raise the lineage.
func (s *Server) highestVerifiedEpoch(ctx context.Context) (uint64, error) {
	var highest uint64
	for _, ensure := range []func(context.Context, jetstream.JetStream, bus.Replicas) (jetstream.KeyValue, error){bus.EnsureDesiredBucket, bus.EnsureDrillsBucket} {
		kv, err := ensure(ctx, s.js, 1)
		if err != nil {
			return 0, err
		}
		// One batched read: a key listing would need a consumer, and a
		// stream that has all the consumers it may have would refuse it
		// just when disaster recovery needs the answer.
		docs, err := bus.ReadAll(ctx, s.js, kv)
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", kv.Bucket(), err)
		}
		for key, raw := range docs {
			var h bus.Header
			if kv.Bucket() == bus.DrillsBucket {
				_, h, err = s.docs.Trusted.OpenDrill(raw, key, time.Time{})
			} else {
				_, h, err = s.docs.Trusted.OpenDesired(raw, key, time.Time{})
			}
			if err == nil {
				highest = max(highest, h.Fence.Epoch)
			}
		}
	}
	return highest, nil
}
