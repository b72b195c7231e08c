package coordinator

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard/switchyard/coordinator/fsm"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
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

// A leader that cannot write its log (a full disk) commits nothing: the
// intent's entry fails with the store's error, counted as an error rather
// than a lost leadership, and once the disk takes writes again the
// coordinator leads and commits again.
func TestRaftStore_AFailingLogWriteIsCountedAndOutlived(t *testing.T) {
	_, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	waitFor(t, "leadership", 10*time.Second, func() bool { return c.srv.raft.State() == raft.Leader })
	full := fmt.Errorf("write raft.db: %w", syscall.ENOSPC)
	c.srv.store.failLogWrites.Store(&full)
	if _, _, err := c.srv.raftApply(fsm.EpochType, &sv1.EpochEntry{Epoch: 1, Reason: "no-op"}); err == nil || errors.Is(err, ErrNotLeader) ||
		!errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("apply on a full disk: %v, want the store's error", err)
	}
	if n := testutil.ToFloat64(c.srv.metrics.raftApplyFailures.WithLabelValues("error")); n != 1 {
		t.Fatalf("raft_apply_failures_total{reason=error} = %v, want 1", n)
	}
	c.srv.store.failLogWrites.Store(nil)
	waitFor(t, "an entry committed once the disk takes writes", 20*time.Second, func() bool {
		_, _, err := c.srv.raftApply(fsm.EpochType, &sv1.EpochEntry{Epoch: 1, Reason: "no-op"})
		return err == nil
	})
}
