package state

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// applyingBucket holds, per service, the state the agent is about to set
// on its proxy, written before it does: an agent killed after the proxy
// took it and before Save finds it at its next start, and keeps it if the
// proxy does it, rather than moving the node back to the older state Save
// last wrote. Save removes it. It is created on the first write.
var applyingBucket = []byte("applying")

// SaveApplying records, durably, the state about to be set for st's
// service.
func (b *Bolt) SaveApplying(st *sv1.AppliedState) error {
	if st.GetService() == "" {
		return fmt.Errorf("save state being applied: service is required")
	}
	v, err := st.MarshalVT()
	if err != nil {
		return fmt.Errorf("encode state being applied of %s: %w", st.GetService(), err)
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(applyingBucket)
		if err != nil {
			return err
		}
		return bk.Put([]byte(st.GetService()), v)
	})
	if err != nil {
		return fmt.Errorf("save state being applied of %s to %s: %w", st.GetService(), b.path, err)
	}
	return nil
}

// LoadApplying returns the state SaveApplying recorded for service and
// no Save followed, or nil and no error.
func (b *Bolt) LoadApplying(service string) (*sv1.AppliedState, error) {
	var st *sv1.AppliedState
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(applyingBucket)
		if bk == nil {
			return nil
		}
		v := bk.Get([]byte(service))
		if v == nil {
			return nil
		}
		st = new(sv1.AppliedState)
		return proto.Unmarshal(v, st)
	})
	if err != nil {
		return nil, fmt.Errorf("load state being applied of %s from %s: %w", service, b.path, err)
	}
	return st, nil
}

// DropApplying forgets what SaveApplying recorded for service.
func (b *Bolt) DropApplying(service string) error {
	err := b.db.Update(func(tx *bolt.Tx) error { return dropApplying(tx, service) })
	if err != nil {
		return fmt.Errorf("drop state being applied of %s from %s: %w", service, b.path, err)
	}
	return nil
}

func dropApplying(tx *bolt.Tx, service string) error {
	bk := tx.Bucket(applyingBucket)
	if bk == nil || bk.Get([]byte(service)) == nil {
		return nil
	}
	return bk.Delete([]byte(service))
}
