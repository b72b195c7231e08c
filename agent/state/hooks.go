package state

import (
	"bytes"
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

// ForgetHookRuns drops the runs of service journaled for rollouts other
// than rollout (keys service/rollout/…; names hold no '/').
func (b *Bolt) ForgetHookRuns(service, rollout string) error {
	prefix, keep := []byte(service+"/"), []byte(service+"/"+rollout+"/")
	var drop [][]byte
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(hooksBucket)
		if bk == nil {
			return nil
		}
		c := bk.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if !bytes.HasPrefix(k, keep) {
				drop = append(drop, bytes.Clone(k))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read hook runs of %s in %s: %w", service, b.path, err)
	}
	if len(drop) == 0 {
		return nil
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		bk := tx.Bucket(hooksBucket)
		for _, k := range drop {
			if err := bk.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("drop earlier rollouts' hook runs of %s from %s: %w", service, b.path, err)
	}
	return nil
}

// HookRunKeys lists the keys of the journaled runs, sorted.
func (b *Bolt) HookRunKeys() ([]string, error) {
	var out []string
	err := b.db.View(func(tx *bolt.Tx) error {
		bk := tx.Bucket(hooksBucket)
		if bk == nil {
			return nil
		}
		return bk.ForEach(func(k, _ []byte) error {
			out = append(out, string(k))
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list hook runs in %s: %w", b.path, err)
	}
	return out, nil
}
