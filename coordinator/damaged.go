package coordinator

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/switchyard/switchyard/coordinator/fsm"
)

// raftDBFile is the Raft log and stable store in the data directory.
const raftDBFile = "raft.db"

// snapshotsDir is where Raft's file snapshot store keeps snapshots in the
// data directory.
const snapshotsDir = "snapshots"

// errNoSnapshot is wrapped by the error of a data directory whose log was
// compacted behind a snapshot that no longer reads.
var errNoSnapshot = errors.New("no snapshot to rebuild the state from")

// DamagedStoreError is returned when the coordinator's Raft store is
// damaged: the coordinator does not start, so it never serves or votes from
// it. The message names the file and the commands that bring the node back
// with the cluster's state.
type DamagedStoreError struct {
	Path, DataDir, NodeID string
	RetryJoin             []string
	Err                   error
}

func (e *DamagedStoreError) Error() string {
	join := "HTTP-ADDRESS-OF-A-HEALTHY-COORDINATOR"
	if len(e.RetryJoin) > 0 {
		join = strings.Join(e.RetryJoin, ",")
	}
	return fmt.Sprintf("coordinator: the Raft store %s is damaged, so this coordinator will not start: %v\n"+
		"To bring it back with the cluster's state, move the data directory away and rejoin (the leader sends it a snapshot):\n"+
		"  mv %s %s.damaged\n"+
		"  switchyard coordinator --node-id %s --data-dir %s --bootstrap-expect 0 --retry-join %s ...\n"+
		"(the other flags as before). A single-node cluster has no other copy: restore the directory from a backup instead.",
		e.Path, e.Err, e.DataDir, e.DataDir, e.NodeID, e.DataDir, join)
}

func (e *DamagedStoreError) Unwrap() error { return e.Err }

// checkSnapshots tells whether the state can be rebuilt from the data
// directory: from the newest snapshot that opens (its checksum matches) and
// decodes, then the log from the entry after it. Raft itself skips a
// snapshot whose metadata does not read and then panics on the first log
// entry it lacks, and fails with a bare "failed to load any existing
// snapshots" when none restores.
func checkSnapshots(snaps raft.SnapshotStore, logs raft.LogStore) error {
	first, err := logs.FirstIndex()
	if err != nil {
		return err
	}
	metas, err := snaps.List()
	if err != nil {
		return err
	}
	var problems []error
	base, restored := uint64(0), false
	for _, m := range metas {
		_, rc, err := snaps.Open(m.ID)
		if err == nil {
			_, err = fsm.ReadSnapshot(rc)
			rc.Close()
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("snapshot %s: %w", m.ID, err))
			continue
		}
		base, restored = m.Index, true
		break
	}
	switch {
	case len(metas) > 0 && !restored:
		return fmt.Errorf("%w: none of the %d snapshots reads: %w", errNoSnapshot, len(metas), errors.Join(problems...))
	case first > base+1:
		what := "no snapshot reads (a snapshot's meta.json is unreadable, or the snapshots are gone)"
		if restored {
			what = fmt.Sprintf("the newest snapshot that reads ends at entry %d", base)
		}
		return fmt.Errorf("%w: the log starts at entry %d and %s", errNoSnapshot, first, what)
	}
	return nil
}

// checkStoreBesideSnapshots refuses a raft.db that is missing or empty while
// the snapshots directory holds snapshots (a snapshot being written, *.tmp,
// does not count).
func checkStoreBesideSnapshots(dataDir, dbPath string) error {
	st, statErr := os.Stat(dbPath)
	switch {
	case statErr == nil && st.Size() > 0:
		return nil
	case statErr != nil && !errors.Is(statErr, fs.ErrNotExist):
		return nil // the bbolt check says what is wrong with it
	}
	dir := filepath.Join(dataDir, snapshotsDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // no snapshots: a new coordinator
	}
	var snaps []string
	for _, e := range entries {
		if e.IsDir() && !strings.HasSuffix(e.Name(), ".tmp") {
			snaps = append(snaps, e.Name())
		}
	}
	if len(snaps) == 0 {
		return nil
	}
	what := "is missing"
	if statErr == nil {
		what = "is empty (0 bytes)"
	}
	return fmt.Errorf("%s %s while %s holds %d snapshots (%s): the directory was restored or copied in part; "+
		"the log after the newest snapshot, the term and the vote are gone", dbPath, what, dir, len(snaps), strings.Join(snaps, ", "))
}
