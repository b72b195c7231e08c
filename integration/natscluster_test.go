package integration

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestNATSCluster_OneServerKilledDuringFanOut runs three standalone
// nats-server processes, three coordinators and two agents with HAProxy on
// them. The stream and buckets get three replicas (shown by `coordinator
// members`); one NATS server is SIGKILLed right after an abort is
// committed, during its fan-out, and every node still ends on blue with
// the rollout rolled back.
func TestNATSCluster_OneServerKilledDuringFanOut(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	nc3, c, f := startOnNATSCluster(t, ctx, 2)

	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	res, err := harness.RunCLI(ctx, switchyardBin.get(t), nil, "coordinator", "members", "--http", c.Coordinators[0].HTTPAddr, "-o", "json", "--cluster-ca", c.CA.CAPath())
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("coordinator members: %v %+v", err, res)
	}
	var m coordinator.Members
	if err := json.Unmarshal([]byte(res.Stdout), &m); err != nil {
		t.Fatal(err)
	}
	if m.Replicas != 3 || m.Streams["SWITCHYARD_INTENTS"] != 3 || m.Streams["KV_switchyard_desired"] != 3 {
		t.Fatalf("replicas on a 3-server NATS cluster: configured %d, streams %v; want 3 everywhere", m.Replicas, m.Streams)
	}

	if _, err := f.Abort(ctx, exampleRollout, "nats server lost during fan-out"); err != nil {
		t.Fatal(err)
	}
	if err := nc3.Kill(0); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("with one NATS server killed: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	// It comes back and catches up; nothing is left behind.
	if err := nc3.Start(ctx, 0); err != nil {
		t.Fatal(err)
	}
}

// TestNATSCluster_AbortSentRightAfterTheIntentStreamsLeaderDied kills the
// NATS server leading the intent stream and, at once, has an operator
// abort the rollout: the CLI keeps sending the intent while the stream
// elects another leader, within its timeout, and the fleet goes back to
// blue with the rollout rolled back.
func TestNATSCluster_AbortSentRightAfterTheIntentStreamsLeaderDied(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	hub, _, f := startOnNATSCluster(t, ctx, 2)

	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	leader := hub.StreamLeader(ctx, bus.IntentStream)
	if leader < 0 {
		t.Fatal("no NATS server leads the intent stream")
	}
	if err := hub.Kill(leader); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	res, err := f.Run(ctx, "rollout", "abort", exampleRollout, "--reason", "intent stream leader lost", "--timeout", "60s")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("abort with nats-%d (the intent stream's leader) just killed: %v %+v", leader+1, err, res)
	}
	t.Logf("abort committed %s after nats-%d died: %s", time.Since(killed).Round(10*time.Millisecond), leader+1, strings.TrimSpace(res.Stdout))
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the abort: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
}

// startOnNATSCluster runs three standalone nats-server processes (see
// startNATSCluster), three coordinators and nodes agents with HAProxy on
// them, the agents trusting the coordinators' signing key.
func startOnNATSCluster(t *testing.T, ctx context.Context, nodes int) (*harness.NATSCluster, *harness.Cluster, *harness.Fleet) {
	t.Helper()
	sy, be := binaries(t)
	hub := startNATSCluster(t, ctx)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: nodes, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()}})
	return hub, c, f
}

// startNATSCluster runs three standalone, secured nats-server processes
// and the named leaf servers, stopped when the test ends.
func startNATSCluster(t *testing.T, ctx context.Context, leaves ...string) *harness.NATSCluster {
	t.Helper()
	c, err := harness.StartNATSCluster(ctx, harness.NATSClusterOptions{Binary: natsServerBin.get(t), Dir: filepath.Join(harnesstest.Dir(t), "nats"), Leaves: leaves})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Logf("stop nats cluster: %v", err)
		}
	})
	return c
}
