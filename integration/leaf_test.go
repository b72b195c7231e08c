package integration

import (
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestLeaf_RolloutAndRollbackThroughTwoPoPsWithTheHubLeaderKilled runs
// the edge topology of docs/operations.md: a hub of three nats-server
// processes holds JetStream, each PoP runs a leaf server without
// JetStream, and every agent connects to its own PoP's leaf only. A
// rollout and its rollback reach every node through the leaves while the
// hub server leading the desired-state stream, and the coordinator leader,
// are SIGKILLed in the middle of each. The agents read the bucket again
// only every ten minutes, longer than the test may run: each document
// reaches them as the leader's push through the leaf.
func TestLeaf_RolloutAndRollbackThroughTwoPoPsWithTheHubLeaderKilled(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 6*time.Minute)
	sy, be := binaries(t)
	hub := startNATSCluster(t, ctx, "pop-a", "pop-b")
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{
		Nodes: 4, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()},
		Resync: 10 * time.Minute,
		// Nodes 0 and 2 in PoP a, 1 and 3 in PoP b.
		NodeNATS: func(i int) harness.Bus { return hub.LeafBus(i % 2) },
	})

	// killHubLeaders SIGKILLs the hub server leading the desired-state
	// bucket's stream and the coordinator leader, and returns a function
	// that starts both again.
	killHubLeaders := func() func() {
		t.Helper()
		ns := hub.StreamLeader(ctx, "KV_"+bus.DesiredBucket)
		if ns < 0 {
			t.Fatal("no hub server leads the desired-state stream")
		}
		co, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := hub.Kill(ns); err != nil {
			t.Fatal(err)
		}
		if err := c.Kill(co); err != nil {
			t.Fatal(err)
		}
		t.Logf("killed hub server nats-%d (stream leader) and coordinator %s (leader)", ns+1, c.Coordinators[co].ID)
		return func() {
			t.Helper()
			if err := hub.Start(ctx, ns); err != nil {
				t.Fatal(err)
			}
			if err := c.Start(ctx, co); err != nil {
				t.Fatal(err)
			}
		}
	}

	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	restart := killHubLeaders()
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatalf("rollout through the leaves with the hub leaders killed: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	restart()

	if _, err := f.Abort(ctx, exampleRollout, "rolled back through the leaves"); err != nil {
		t.Fatal(err)
	}
	restart = killHubLeaders()
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("rollback through the leaves with the hub leaders killed: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	restart()
}
