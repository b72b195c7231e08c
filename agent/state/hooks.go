package state

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// hooksBucket journals agent hook runs, keyed by service, rollout, point,
// hook and generation. It is created on the first write.
var hooksBucket = []byte("hooks")

// LoadHookRun returns the journaled run under key, or nil and no error.
func (b *Bolt) LoadHookRun(key string) (*sv1.HookRun, error) {
	var run *sv1.HookRun
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(hooksBucket)
		if bk == nil {
			return nil
		}
		v := bk.Get([]byte(key))
		if v == nil {
			return nil
		}
		run = new(sv1.HookRun)
		return proto.Unmarshal(v, run)
	})
	if err != nil {
		return nil, fmt.Errorf("load hook run %s from %s: %w", key, b.path, err)
	}
	return run, nil
}

// SaveHookRun writes a run under key; it returns once the write is on disk.
func (b *Bolt) SaveHookRun(key string, run *sv1.HookRun) error {
	v, err := proto.Marshal(run)
	if err != nil {
		return fmt.Errorf("encode hook run %s: %w", key, err)
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		bk, err := tx.CreateBucketIfNotExists(hooksBucket)
		if err != nil {
			return err
		}
		return bk.Put([]byte(key), v)
	})
	if err != nil {
		return fmt.Errorf("save hook run %s to %s: %w", key, b.path, err)
	}
	return nil
}
