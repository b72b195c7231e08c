package integration

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/faultproxy"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// guardedCanary is failingCanary under a name of its own: 40% to green,
// then a long pause in which green goes bad.
var guardedCanary = strings.Replace(failingCanary, "name: web-canary-bad", "name: web-guarded", 1)

// TestLocalGuard_MoveIsInTheRolloutHistoryAfterTheNodeIsBack: three NATS
// servers, three coordinators, three nodes with HAProxy. edge-3 reaches
// the bus through a link of its own, which drops mid-canary just as green
// starts failing everywhere. The coordinators roll the fleet back without
// edge-3; cut off, edge-3's local guard moves it back on its own. Once the
// link is back the node takes the coordinators' rollback at once, and the
// rollout's history (and the audit) still says, as edge-3's act, what its
// guard did and why.
func TestLocalGuard_MoveIsInTheRolloutHistoryAfterTheNodeIsBack(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	sy, be := binaries(t)
	// Proxies: the servers tell clients no other address, so edge-3 has
	// its own link and no other way in.
	hub := startNATSClusterWith(t, ctx, harness.NATSClusterOptions{Proxies: true})
	link, err := faultproxy.New(strings.TrimPrefix(hub.ClientURLs[2], "tls://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = link.Close() })
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{
		Nodes: 3, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()},
		NodeNATS: func(i int) harness.Bus {
			if i == 2 {
				return hub.Security.Bus("tls://" + link.Addr())
			}
			return hub.Bus()
		},
		LocalGuard: map[string]string{"afterDisconnect": "1s", "window": "2s"},
	})
	stop := load(ctx, t, f, 60)
	defer stop()

	if _, err := f.Apply(ctx, writeSpec(t, "guarded", guardedCanary)); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, "web-guarded", func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 {
			return fmt.Errorf("at step %d", v.GetRollout().GetStep()+1)
		}
		return f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)(v)
	})
	if err != nil {
		t.Fatal(err)
	}
	canaryGen := view.GetRollout().GetGeneration()

	link.SetMode(faultproxy.Mode{Drop: true})
	setGreen(t, f, 0.5)
	if _, err := f.WaitRollout(ctx, "web-guarded", func(v *sv1.RolloutView) error {
		if p := v.GetRollout().GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK && p != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
			return fmt.Errorf("phase %s", p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	moved := regexp.MustCompile(`(?m)^switchyard_agent_local_rollbacks_total\{service="web"\} 1$`)
	if err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		m, err := f.AgentMetrics(ctx, 2)
		if err != nil {
			return err
		}
		if !moved.MatchString(m) {
			return fmt.Errorf("edge-3's local guard has not moved it")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	link.SetMode(faultproxy.Pass)
	want := fmt.Sprintf("local guard on edge-3 moved it back to blue at generation %d (", canaryGen)
	var lines []string
	if _, err := f.WaitRollout(ctx, "web-guarded", func(v *sv1.RolloutView) error {
		lines = nil
		for _, h := range v.GetRollout().GetHistory() {
			if strings.HasPrefix(h.GetMessage(), "local guard on ") {
				lines = append(lines, h.GetMessage()+" ("+h.GetOperator()+")")
			}
		}
		if len(lines) == 0 {
			return fmt.Errorf("no local rollback in the history; nodes: %s", harness.NodeSummary(v))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], want) || !strings.Contains(lines[0], `backend "green" error rate`) || !strings.HasSuffix(lines[0], "(agent edge-3)") {
		t.Fatalf("history lines %q, want one starting %q, with the guard's evidence, by agent edge-3", lines, want)
	}
	// Back on the bus, edge-3 serves what the coordinators decided.
	if _, err := f.WaitRollout(ctx, "web-guarded", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}

	// What an operator reads afterwards: the history and the audit.
	res, err := f.Run(ctx, "rollout", "history", "web-guarded")
	if err != nil || res.ExitCode != 0 || !strings.Contains(res.Stdout, want) || !strings.Contains(res.Stdout, "(agent edge-3)") {
		t.Fatalf("rollout history: %v %+v", err, res)
	}
	res, err = f.Run(ctx, "audit", "log", "--rollout", "web-guarded", "-o", "json")
	if err != nil || res.ExitCode != 0 || !regexp.MustCompile(`"kind":\s*"local_rollback"`).MatchString(res.Stdout) || !regexp.MustCompile(`"actor":\s*"agent edge-3"`).MatchString(res.Stdout) {
		t.Fatalf("audit log: %v %+v", err, res)
	}
}
