package coordinator

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// errStoreClosed is returned by reads of a closed raft store.
var errStoreClosed = errors.New("raft store closed: the coordinator is stopping")

// raftStore is the on-disk log and stable store, safe to close while a Raft
// RPC is still in flight. Raft's transport serves heartbeats on its own
// goroutines: one that had passed Raft's shutdown check when Shutdown
// returned can still write the current term, and Raft panics on any store
// error ("failed to save current term: database not open"). After Close the
// store takes such a late write as done and drops it: the node has stopped,
// it records no vote, and on its next start the leader's next heartbeat
// gives it the term again.
type raftStore struct {
	mu     sync.RWMutex
	closed bool
	db     *raftboltdb.BoltStore
	// failLogWrites, when set, fails every write of log entries with its
	// error, as a full disk would (tests).
	failLogWrites atomic.Pointer[error]
}

var (
	_ raft.LogStore    = (*raftStore)(nil)
	_ raft.StableStore = (*raftStore)(nil)
)

// Close waits for the calls in flight, then closes the database.
func (s *raftStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.db.Close()
}

// read runs f unless the store is closed.
func (s *raftStore) read(f func() error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errStoreClosed
	}
	return f()
}

// write runs f unless the store is closed, when the write is dropped.
func (s *raftStore) write(f func() error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil
	}
	return f()
}

func (s *raftStore) FirstIndex() (i uint64, err error) {
	err = s.read(func() (e error) { i, e = s.db.FirstIndex(); return })
	return
}

func (s *raftStore) LastIndex() (i uint64, err error) {
	err = s.read(func() (e error) { i, e = s.db.LastIndex(); return })
	return
}

func (s *raftStore) GetLog(index uint64, log *raft.Log) error {
	return s.read(func() error { return s.db.GetLog(index, log) })
}

func (s *raftStore) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

func (s *raftStore) StoreLogs(logs []*raft.Log) error {
	return s.write(func() error {
		if err := s.failLogWrites.Load(); err != nil {
			return *err
		}
		return s.db.StoreLogs(logs)
	})
}

func (s *raftStore) DeleteRange(min, max uint64) error {
	return s.write(func() error { return s.db.DeleteRange(min, max) })
}

func (s *raftStore) Set(k, v []byte) error {
	return s.write(func() error { return s.db.Set(k, v) })
}

func (s *raftStore) Get(k []byte) (v []byte, err error) {
	err = s.read(func() (e error) { v, e = s.db.Get(k); return })
	return
}

func (s *raftStore) SetUint64(k []byte, v uint64) error {
	return s.write(func() error { return s.db.SetUint64(k, v) })
}

func (s *raftStore) GetUint64(k []byte) (v uint64, err error) {
	err = s.read(func() (e error) { v, e = s.db.GetUint64(k); return })
	return
}
