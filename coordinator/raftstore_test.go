package coordinator

import (
	"errors"
	"path/filepath"
	"testing"

	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// A write that reaches the store after Close (a heartbeat the transport was
// still serving when Raft shut down) is dropped, not an error Raft would
// panic on; a read says the store is closed.
func TestRaftStore_LateWritesAfterCloseAreDropped(t *testing.T) {
	db, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(t.TempDir(), "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	s := &raftStore{db: db}
	if err := s.SetUint64([]byte("CurrentTerm"), 2); err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); err != nil || v != 2 {
		t.Fatalf("GetUint64 = %d, %v; want 2", v, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatalf("a late write after Close: %v, want it dropped", err)
	}
	if _, err := s.GetUint64([]byte("CurrentTerm")); !errors.Is(err, errStoreClosed) {
		t.Fatalf("a read after Close: %v, want errStoreClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
