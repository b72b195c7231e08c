package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// envoyMetric reads one of node i's agent metrics for the service web.
func envoyMetric(ctx context.Context, t *testing.T, f *harness.Fleet, i int, name string) float64 {
	t.Helper()
	exp, err := f.AgentMetrics(ctx, i)
	if err != nil {
		t.Fatal(err)
	}
	v, ok := harness.MetricValue(exp, name, map[string]string{"service": "web"})
	if !ok {
		t.Fatalf("%s: no %s{service=web} in /metrics", f.Nodes[i].ID, name)
	}
	return v
}

// TestEnvoy_MixedFleetCanaryOnTheWireRollsBackTogether runs one rollout on
// a node driving HAProxy and a node driving proxyless gRPC clients over
// xDS: the canary's split is measured on real RPCs, a failing green rolls
// both back, and a SIGKILLed agent leaves its clients on the last routing
// until it is back and they have reconnected.
func TestEnvoy_MixedFleetCanaryOnTheWireRollsBackTogether(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{
		Nodes: 2, Service: "web", Switchyard: sy, Backend: be,
		XDSClient: xdsClientBin.get(t),
		Envoy:     func(i int) bool { return i == 1 },
	})
	const hap, env = 0, 1
	if f.Nodes[env].XDSAddr == "" || f.Nodes[hap].HAProxy == nil {
		t.Fatalf("want edge-1 on HAProxy and edge-2 on Envoy")
	}
	stop := load(ctx, t, f, 60)
	defer stop()

	if _, err := f.Apply(ctx, writeSpec(t, "canary-bad", failingCanary)); err != nil {
		t.Fatal(err)
	}
	// Step 1: green carries 40% on both nodes, seen by each proxy.
	if _, err := f.WaitRollout(ctx, "web-canary-bad", func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 {
			return fmt.Errorf("at step %d", v.GetRollout().GetStep()+1)
		}
		return f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)(v)
	}); err != nil {
		t.Fatal(err)
	}
	// 1,000 RPCs: 6 points are about four standard deviations of the
	// measured share.
	const n = 1000
	got := f.Sample(ctx, env, n)
	share := float64(got[harness.Green]) / n
	t.Logf("edge-2 (xDS) at 40%%: %v, green %.1f%%", got, 100*share)
	if got[harness.SampleError] != 0 || share < 0.34 || share > 0.46 {
		t.Fatalf("edge-2 answered %v over %d RPCs, want green 40%% ± 6 points and no failure", got, n)
	}
	if v := envoyMetric(ctx, t, f, env, "switchyard_agent_xds_healthy"); v != 1 {
		t.Errorf("edge-2 switchyard_agent_xds_healthy = %v, want 1", v)
	}

	broke := time.Now()
	setGreen(t, f, 0.3)
	view, err := f.WaitRollout(ctx, "web-canary-bad", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rolled back %s after green broke: %s", time.Since(broke).Round(100*time.Millisecond), view.GetRollout().GetReason())
	if err := f.WaitAllServing(ctx, harness.Blue, 20); err != nil {
		t.Fatalf("after the rollback: %v", err)
	}
	// The Envoy node's load reports fed the same analysis.
	if v := envoyMetric(ctx, t, f, env, "switchyard_agent_xds_load_reports_total"); v == 0 {
		t.Error("edge-2 received no load report")
	}

	// The agent dies: its clients keep the last routing they accepted.
	if err := f.KillAgent(env); err != nil {
		t.Fatal(err)
	}
	if got := f.Sample(ctx, env, 50); got[harness.Blue] != 50 {
		t.Fatalf("with edge-2's agent killed its client answered %v, want all blue", got)
	}
	// Back up, it serves the routing it applied last; the client
	// reconnects and accepts it, and the node converges again.
	if err := f.StartAgent(ctx, env); err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		exp, err := f.AgentMetrics(ctx, env)
		if err != nil {
			return err
		}
		if v, _ := harness.MetricValue(exp, "switchyard_agent_xds_healthy", map[string]string{"service": "web"}); v != 1 {
			return fmt.Errorf("edge-2 switchyard_agent_xds_healthy = %v", v)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-canary-bad", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	if got := f.Sample(ctx, env, 50); got[harness.Blue] != 50 {
		t.Fatalf("after the restart edge-2 answered %v, want all blue", got)
	}
}
