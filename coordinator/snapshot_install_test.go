package coordinator

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestCluster_FollowerFarBehindInstallsASnapshotAndEndsIdentical stops a
// follower, commits far more than the leader keeps in its log after a
// snapshot, and starts the follower again: it can only catch up from the
// leader's snapshot, and it ends with exactly the leader's state.
func TestCluster_FollowerFarBehindInstallsASnapshotAndEndsIdentical(t *testing.T) {
	nc, url := startNATS(t)
	nodes := startCluster(t, url, 3, func(_ int, c *Config) {
		c.SnapshotThreshold, c.TrailingLogs = 16, 4
	})
	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	var follower *clusterNode
	for _, n := range nodes {
		if n != leader {
			follower = n
			break
		}
	}
	waitFor(t, "the follower to hold the leader's state", 10*time.Second, func() bool {
		return proto.Equal(follower.srv.fsm.State().Snapshot(), leader.srv.fsm.State().Snapshot())
	})
	behind, err := strconv.ParseUint(follower.srv.raft.Stats()["last_log_index"], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	follower.stop()

	for i := range 40 {
		in := applyIntent(fmt.Sprintf("far-%d", i), fmt.Sprintf("svc-%d-green", i))
		in.GetApplyRollout().GetSpec().Service = fmt.Sprintf("svc-%d", i)
		if res := send(t, nc, in); !res.GetAccepted() {
			t.Fatalf("intent %d: %v", i, res)
		}
	}
	if err := leader.srv.raft.Snapshot().Error(); err != nil {
		t.Fatalf("leader snapshot: %v", err)
	}
	stats := leader.srv.raft.Stats()
	snapIndex, _ := strconv.ParseUint(stats["last_snapshot_index"], 10, 64)
	if snapIndex <= behind+4 {
		t.Fatalf("leader snapshot at %d, follower stopped at %d: the log still reaches the follower", snapIndex, behind)
	}

	follower.start(t)
	waitFor(t, "the follower to install the snapshot and hold the leader's state", 30*time.Second, func() bool {
		return proto.Equal(follower.srv.fsm.State().Snapshot(), leader.srv.fsm.State().Snapshot())
	})
	got, _ := strconv.ParseUint(follower.srv.raft.Stats()["last_snapshot_index"], 10, 64)
	if got < snapIndex {
		t.Errorf("follower's last snapshot at %d, want the leader's %d or later (installed, not replayed)", got, snapIndex)
	}
	var rollouts int
	for _, r := range follower.srv.fsm.State().Snapshot().GetRollouts() {
		if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_UNSPECIFIED {
			rollouts++
		}
	}
	if rollouts < 40 {
		t.Errorf("follower holds %d rollouts after catching up, want the 40 committed while it was down", rollouts)
	}
}
