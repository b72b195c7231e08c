// Package state persists, per service, the desired state an agent last
// applied to its proxy, so that the agent resumes from it after a restart
// instead of waiting for the bus, and the journal of the chaos faults it
// injected, so that it reverts them after a crash.
package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/boltcheck"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// FileName is the name of the database file inside an agent's state
// directory.
const FileName = "agent.db"

// DefaultOpenTimeout is how long Open waits for the database's file lock.
const DefaultOpenTimeout = 2 * time.Second

// ErrLocked is returned by Open when another process (or another agent in
// this process) holds the state directory's database.
var ErrLocked = errors.New("state database is locked by another agent")

// appliedBucket holds one AppliedState per service, keyed by service name.
var appliedBucket = []byte("applied")

// Bolt is a bbolt file holding one AppliedState per service.
type Bolt struct {
	db   *bolt.DB
	path string
}

// Open opens, creating if needed, the database in dir. It waits at most
// timeout (DefaultOpenTimeout when zero) for the file lock, so that a second
// agent pointed at the same directory fails with ErrLocked instead of
// hanging.
func Open(dir string, timeout time.Duration) (*Bolt, error) {
	if dir == "" {
		return nil, fmt.Errorf("open agent state: directory is required")
	}
	if timeout <= 0 {
		timeout = DefaultOpenTimeout
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("open agent state: %w", err)
	}
	path := filepath.Join(dir, FileName)
	// bbolt faults or panics on a truncated or bit-flipped file; look first
	// and say which file and what to do.
	// A file that cannot be read (its owner, its mode) is not damaged:
	// moving it aside would lose the fault journal for nothing.
	if err := boltcheck.Check(path); err != nil && !errors.Is(err, boltcheck.ErrDamaged) {
		return nil, fmt.Errorf("open agent state: %w (the agent needs to read and write it; check its owner and mode)", err)
	} else if err != nil {
		return nil, fmt.Errorf("open agent state: %w\nThe agent will not start from it. Move it away and start again; the agent reads its "+
			"desired state from the bus and its proxy back from HAProxy (faults of drills it had injected are not reverted from a lost journal):\n  mv %s %s.damaged", err, path, path)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("open agent state %s: %w (waited %s)", path, ErrLocked, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open agent state %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(appliedBucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open agent state %s: %w", path, err)
	}
	return &Bolt{db: db, path: path}, nil
}

// Path is the database file.
func (b *Bolt) Path() string { return b.path }

// Load returns the state last saved for service, or nil and no error when
// there is none.
func (b *Bolt) Load(service string) (*sv1.AppliedState, error) {
	var st *sv1.AppliedState
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(appliedBucket).Get([]byte(service))
		if v == nil {
			return nil
		}
		st = new(sv1.AppliedState)
		// v is only valid inside the transaction; Unmarshal copies what it keeps.
		return proto.Unmarshal(v, st)
	})
	if err != nil {
		return nil, fmt.Errorf("load applied state of %s from %s: %w", service, b.path, err)
	}
	return st, nil
}

// Save replaces the state of st's service, and forgets what SaveApplying
// recorded for it, in one write. It returns once the write is on disk.
func (b *Bolt) Save(st *sv1.AppliedState) error {
	if st.GetService() == "" {
		return fmt.Errorf("save applied state: service is required")
	}
	// The generated encoder: no reflection over the weight maps on every
	// apply.
	v, err := st.MarshalVT()
	if err != nil {
		return fmt.Errorf("encode applied state of %s: %w", st.GetService(), err)
	}
	err = b.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(appliedBucket).Put([]byte(st.GetService()), v); err != nil {
			return err
		}
		return dropApplying(tx, st.GetService())
	})
	if err != nil {
		return fmt.Errorf("save applied state of %s to %s: %w", st.GetService(), b.path, err)
	}
	return nil
}

// Close releases the file and its lock.
func (b *Bolt) Close() error { return b.db.Close() }
