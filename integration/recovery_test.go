package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestRecovery_RebuiltClusterMovesTheFleetAfterRaisingTheEpoch is the
// disaster-recovery drill of docs/security.md: cluster A brings the fleet to
// green; every coordinator's data is destroyed (NATS and the signing key
// survive); cluster B is bootstrapped from nothing. B's documents fence
// below what the agents hold, so until the operator raises the epoch its
// rollout must not move any node and its status must show the nodes as
// diverged, never converged. After `switchyard coordinator raise-epoch`
// the fleet follows B, and B's next rollout moves every node.
func TestRecovery_RebuiltClusterMovesTheFleetAfterRaisingTheEpoch(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 6*time.Minute)
	sy, be := binaries(t)
	url := harnesstest.StartNATS(t)
	a := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be, NATS: url, TrustKeys: []string{a.TrustKey()}})

	// Cluster A: a few decisions, so that its generations are well above
	// anything a new cluster starts with; the fleet ends on green.
	for i, to := range []string{harness.Green, harness.Blue, harness.Green} {
		from := map[string]string{harness.Green: harness.Blue, harness.Blue: harness.Green}[to]
		name := fmt.Sprintf("web-a-%d", i+1)
		if _, err := f.Apply(ctx, writeSpec(t, name, blueGreenSpec(name, from, to))); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WaitRollout(ctx, name, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
			t.Fatalf("cluster A, %s: %v", name, err)
		}
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	last, err := f.Status(ctx, "web-a-3")
	if err != nil {
		t.Fatal(err)
	}
	genA := last.GetRollouts()[0].GetRollout().GetGeneration()

	// Disaster: every coordinator and all of its data gone.
	if err := a.StopAll(); err != nil {
		t.Fatal(err)
	}
	for _, co := range a.Coordinators {
		if err := os.RemoveAll(co.DataDir); err != nil {
			t.Fatal(err)
		}
	}
	b := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url, SigningKey: a.TrustKeyPrivate()})

	// B's first rollout fences below what the agents hold: the command
	// says that the bus did not take it (exit 3), no node moves, and
	// status says why instead of claiming convergence.
	res, err := f.Run(ctx, "rollout", "apply", "-f", writeSpec(t, "web-b-1", blueGreenSpec("web-b-1", harness.Green, harness.Blue)), "--publish-timeout", "5s")
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || !strings.Contains(res.Stderr, "raise-epoch") {
		t.Fatalf("apply on the rebuilt cluster: exit %d\nstdout: %s\nstderr: %s\nwant exit 3 naming raise-epoch", res.ExitCode, res.Stdout, res.Stderr)
	}
	view, err := f.WaitRollout(ctx, "web-b-1", func(v *sv1.RolloutView) error {
		if len(v.GetNodes()) != len(f.Nodes) {
			return fmt.Errorf("cluster B sees %d nodes", len(v.GetNodes()))
		}
		for _, n := range v.GetNodes() {
			if !n.GetDiverged() {
				return fmt.Errorf("%s not shown as diverged (%s)", n.GetNode(), harness.NodeSummary(v))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if g := view.GetRollout().GetGeneration(); g >= genA {
		t.Fatalf("cluster B's rollout is at generation %d, not below cluster A's %d; the test needs it below", g, genA)
	}
	// Watch for a while: never converged, never completed, traffic stays.
	watchUntil := time.Now().Add(5 * time.Second)
	for time.Now().Before(watchUntil) {
		ans, err := f.Status(ctx, "web-b-1")
		if err != nil {
			t.Fatal(err)
		}
		v := ans.GetRollouts()[0]
		if v.GetConverged() != 0 || v.GetRollout().GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
			t.Fatalf("before the epoch step, status claims %d converged, phase %s (%s)", v.GetConverged(), v.GetRollout().GetPhase(), harness.NodeSummary(v))
		}
		if got := f.Sample(ctx, 0, samples); got[harness.Green] != samples {
			t.Fatalf("a document of the rebuilt cluster moved a node before the epoch step: %v", got)
		}
	}
	m, err := b.Metrics(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := harness.MetricValue(m, "switchyard_coordinator_node_divergences_total", map[string]string{"service": "web"}); got < 1 {
		t.Errorf("coordinator divergences = %v, want at least 1", got)
	}

	// The documented step, as docs/security.md gives it: a cluster change,
	// so it presents a certificate from the cluster CA. The doc's first
	// address is a follower's here: an operator does not know which
	// coordinator leads.
	res = runRaiseEpochDoc(t, ctx, b, sy)
	if !strings.Contains(res.Stdout, "cluster epoch raised from 1 to 2 (highest verified epoch in the buckets: 1") {
		t.Fatalf("raise-epoch said %q", res.Stdout)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after raising the epoch: %v", err)
	}
	if _, err := f.WaitRollout(ctx, "web-b-1", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatalf("after raising the epoch: %v", err)
	}
	// And the next rollout moves every node.
	if _, err := f.Apply(ctx, writeSpec(t, "web-b-2", blueGreenSpec("web-b-2", harness.Blue, harness.Green))); err != nil {
		t.Fatal(err)
	}
	view, err = f.WaitRollout(ctx, "web-b-2", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	for _, n := range view.GetNodes() {
		if n.GetAppliedEpoch() != 2 || n.GetDiverged() {
			t.Errorf("%s: epoch %d diverged %v, want epoch 2 and not diverged", n.GetNode(), n.GetAppliedEpoch(), n.GetDiverged())
		}
	}
}

// runRaiseEpochDoc runs docs/security.md's raise-epoch command against
// cluster b: the doc's coordinators 10.0.0.1-3 are b's, followers first,
// and its /etc/switchyard certificate files those of b's cluster CA.
func runRaiseEpochDoc(t *testing.T, ctx context.Context, b *harness.Cluster, sy string) *harness.CLIResult {
	t.Helper()
	leader, err := b.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for i, a := range b.HTTPAddrs() {
		if i != leader {
			order = append(order, a)
		}
	}
	order = append(order, b.HTTPAddrs()[leader])
	change, err := b.ChangeFlags()
	if err != nil || len(change) != 6 {
		t.Fatalf("cluster change flags %v: %v", change, err)
	}
	localize := strings.NewReplacer(
		"10.0.0.1:7070", order[0], "10.0.0.2:7070", order[1], "10.0.0.3:7070", order[2],
		"/etc/switchyard/cluster-ca.pem", change[1],
		"/etc/switchyard/c1.pem", change[3],
		"/etc/switchyard/c1-key.pem", change[5],
	)
	cmds := docCommands(t, "docs/security.md", "TestRecovery_RebuiltClusterMovesTheFleetAfterRaisingTheEpoch")
	if len(cmds) != 1 {
		t.Fatalf("docs/security.md: %d raise-epoch commands, want 1", len(cmds))
	}
	cmd := localize.Replace(cmds[0].text)
	env := []string{"PATH=" + filepath.Dir(sy) + ":" + os.Getenv("PATH")}
	res, err := harness.RunCLI(ctx, "bash", env, "-c", cmd)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("$ %s\n%v %+v", cmd, err, res)
	}
	t.Logf("$ %s\n%s", cmd, res.Stdout)
	return res
}

func blueGreenSpec(name, from, to string) string {
	return fmt.Sprintf("version: v1\nname: %s\nservice: web\nfrom: %s\nto: %s\nstrategy:\n  blueGreen: {}\n", name, from, to)
}

func httpFlags(addrs []string) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, "--http", a)
	}
	return out
}

// TestRecovery_ApplyOnARebuiltClusterSaysTheBusIsFenced follows the
// disaster-recovery steps of docs/security.md as an operator types them.
// A cluster rebuilt from empty data numbers its generations from small Raft
// indexes again, so the first document it commits fences below the one the
// lost cluster left in the bucket, and the leader never writes it.
// `rollout apply` used to compare generation numbers only, found the old
// cluster's larger one and printed "published: the bus carries generation
// N" for a document the bus did not carry. It now exits 3 saying which
// document holds the bus and that the epoch must be raised; after
// `coordinator raise-epoch` the next change is published in the new epoch.
func TestRecovery_ApplyOnARebuiltClusterSaysTheBusIsFenced(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 2*time.Minute)
	sy, _ := binaries(t)
	url := harnesstest.StartNATS(t)
	env, err := url.CLIEnv()
	if err != nil {
		t.Fatal(err)
	}
	nc := connectNATS(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cli := func(args ...string) *harness.CLIResult {
		t.Helper()
		res, err := harness.RunCLI(ctx, sy, env, args...)
		if err != nil && res == nil {
			t.Fatalf("switchyard %s: %v", strings.Join(args, " "), err)
		}
		return res
	}
	spec := func(name, from, to string) string {
		return writeSpec(t, name, blueGreenSpec(name, from, to))
	}

	// Cluster A: a few decisions on other services first, so that its
	// document of web has a generation above the ones a new cluster
	// starts with. No node runs web: only the bucket matters here.
	a := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Size: 1, Switchyard: sy, NATS: url})
	for i := range 4 {
		name := fmt.Sprintf("pad-%d", i)
		text := strings.Replace(blueGreenSpec(name, harness.Blue, harness.Green), "service: web", "service: "+name, 1)
		if res := cli("rollout", "apply", "-f", writeSpec(t, name, text)); res.ExitCode != 0 {
			t.Fatalf("cluster A, apply %s: %+v", name, res)
		}
	}
	if res := cli("rollout", "apply", "-f", spec("web-a-1", harness.Blue, harness.Green)); res.ExitCode != 0 {
		t.Fatalf("cluster A, apply web-a-1: %+v", res)
	}
	fenceA, err := bus.PublishedFence(ctx, js, "web")
	if err != nil || fenceA.Generation == 0 {
		t.Fatalf("cluster A's document of web: %v %v", fenceA, err)
	}

	// Disaster: A is gone with its data; B is bootstrapped from nothing,
	// with the same signing key.
	if err := a.StopAll(); err != nil {
		t.Fatal(err)
	}
	b := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url, SigningKey: a.TrustKeyPrivate()})
	res := cli("rollout", "apply", "-f", spec("web-b-1", harness.Green, harness.Blue), "--publish-timeout", "5s")
	var genB uint64
	if _, err := fmt.Sscanf(res.Stdout, "rollout web-b-1: apply committed at index %d", &genB); err != nil {
		t.Fatalf("cluster B, apply web-b-1: no commit in %+v", res)
	}
	if genB >= fenceA.Generation {
		t.Fatalf("cluster B committed web at generation %d, not below cluster A's %s; the test needs it below", genB, fenceA)
	}
	if res.ExitCode != 3 || strings.Contains(res.Stdout, "published:") ||
		!strings.Contains(res.Stderr, fmt.Sprintf("the bus carries epoch 1 generation %d", fenceA.Generation)) ||
		!strings.Contains(res.Stderr, "switchyard coordinator raise-epoch") {
		t.Fatalf("apply on the rebuilt cluster: exit %d\nstdout: %s\nstderr: %s\nwant exit 3, no \"published\", and the old cluster's document and raise-epoch named",
			res.ExitCode, res.Stdout, res.Stderr)
	}
	if f, err := bus.PublishedFence(ctx, js, "web"); err != nil || f != fenceA {
		t.Fatalf("the bucket holds %s (%v), want cluster A's %s still", f, err, fenceA)
	}

	// The documented step, then the next change reaches the bus.
	change, err := b.ChangeFlags()
	if err != nil {
		t.Fatal(err)
	}
	res = cli(append(append([]string{"coordinator", "raise-epoch", "--reason", "rebuilt after losing every coordinator's data"}, httpFlags(b.HTTPAddrs())...), change...)...)
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "cluster epoch raised from 1 to 2") {
		t.Fatalf("raise-epoch: %+v", res)
	}
	res = cli("rollout", "abort", "web-b-1", "--publish-timeout", "20s")
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "published: the bus carries generation") {
		t.Fatalf("abort after raising the epoch: exit %d\nstdout: %s\nstderr: %s", res.ExitCode, res.Stdout, res.Stderr)
	}
	if f, err := bus.PublishedFence(ctx, js, "web"); err != nil || f.Epoch != 2 {
		t.Fatalf("after raising the epoch the bucket holds %s (%v), want epoch 2", f, err)
	}
}
