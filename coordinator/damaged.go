package coordinator

import (
	"fmt"
	"strings"
)

// raftDBFile is the Raft log and stable store in the data directory.
const raftDBFile = "raft.db"

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
