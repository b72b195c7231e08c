package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The fault lab's named scenarios that no other test covers (the others:
// TestNATSCluster_OneServerKilledDuringFanOut,
// TestDamaged_FollowerRaftStoreFailsLoudlyThenRejoins).

// TestScenario_AllNATSServersDown20sDuringAChange SIGKILLs all three NATS
// servers right after a rollout was committed and published, keeps them
// down for 20 s while every node goes on serving from what it holds (no
// failed request), then starts them again: the fleet ends on green with
// the rollout completed and every node converged.
func TestScenario_AllNATSServersDown20sDuringAChange(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	hub, _, f := startOnNATSCluster(t, ctx, 2)

	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	for i := range hub.Servers {
		if err := hub.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	down := time.Now()
	// The outage lasts 20 s by the clock; the nodes are sampled all along.
	sampled := 0
	outage, cancel := context.WithDeadline(ctx, down.Add(20*time.Second))
	err := harness.Poll(outage, 500*time.Millisecond, func(ctx context.Context) error {
		for i, n := range f.Nodes {
			got := f.Sample(ctx, i, 5)
			if ctx.Err() != nil {
				return nil
			}
			sampled += 5
			if got[harness.SampleError] > 0 {
				return harness.Permanent(fmt.Errorf("%s failed requests with every NATS server down: %v", n.ID, got))
			}
		}
		return fmt.Errorf("outage goes on")
	})
	cancel()
	if err != nil && !errors.Is(err, harness.ErrNotReady) {
		t.Fatal(err)
	}
	for i := range hub.Servers {
		if err := hub.Servers[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	if err := hub.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("all NATS servers down (kill to ready again) %s; %d requests served in the first 20 s, none failed", time.Since(down).Round(100*time.Millisecond), sampled)
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatalf("after the outage: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
}

// TestScenario_BreachWithOneCoordinatorAndOneNATSServerDown runs a canary
// at 40% green under load, SIGKILLs the coordinator leader and one NATS
// server, and then breaks green: the remaining two coordinators and two
// servers still see the breach and roll every node back to blue, with no
// operator action, within the test's bound.
func TestScenario_BreachWithOneCoordinatorAndOneNATSServerDown(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	hub, c, f := startOnNATSCluster(t, ctx, 3)
	stop := load(ctx, t, f, 60)
	defer stop()

	if _, err := f.Apply(ctx, writeSpec(t, "canary-bad", failingCanary)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-canary-bad", func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 {
			return fmt.Errorf("at step %d", v.GetRollout().GetStep()+1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	if err := hub.Kill(leader % len(hub.Servers)); err != nil {
		t.Fatal(err)
	}
	broke := time.Now()
	setGreen(t, f, 0.3)

	view, err := f.WaitRollout(ctx, "web-canary-bad", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rolled back %s after green broke, with %s and nats-%d down: %s", time.Since(broke).Round(100*time.Millisecond), c.Coordinators[leader].ID, leader%len(hub.Servers)+1, view.GetRollout().GetReason())
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the rollback: %v", err)
	}
}
