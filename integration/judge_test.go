package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// seqCanary holds green at 40% for long enough that only the sequential
// judge can end it early.
const seqCanary = `
version: v1
name: %s
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 40
      - pause: {duration: 10m}
analysis:
  window: 3s
  minRequests: 20
`

// setErrors sets the error rate of one backend on every node.
func setErrors(t *testing.T, f *harness.Fleet, backend string, errorRate float64) {
	t.Helper()
	for _, n := range f.Nodes {
		addr := n.GreenAddr
		if backend == harness.Blue {
			addr = n.BlueAddr
		}
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/behavior?error-rate=%v", addr, errorRate), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("set %s behavior on %s: %s", backend, n.ID, resp.Status)
		}
	}
}

// atCanaryWeight waits until the rollout sits in its pause, green at 40% on
// every node.
func atCanaryWeight(ctx context.Context, t *testing.T, f *harness.Fleet, name string) {
	t.Helper()
	if _, err := f.WaitRollout(ctx, name, func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 || v.GetConverged() != uint32(len(f.Nodes)) {
			return fmt.Errorf("at step %d, %d nodes converged", v.GetRollout().GetStep()+1, v.GetConverged())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestJudge_ModerateRegressionRollsBackAndAHealthyCanaryStays runs the same
// canary twice on real HAProxy with real load, blue failing 0.5% of
// requests: once green starts failing 5% after the canary weight is reached
// and must be rolled back with sequential evidence; once green stays as good
// as blue for as long, and must not be.
func TestJudge_ModerateRegressionRollsBackAndAHealthyCanaryStays(t *testing.T) {
	// Serial (no t.Parallel): the sequential judge on real load at 120
	// requests/s per node, which a test running beside it would slow.
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be})
	setErrors(t, f, harness.Blue, 0.005)
	setErrors(t, f, harness.Green, 0.005)
	stop := load(ctx, t, f, 120)
	defer stop()

	// The bad green.
	if _, err := f.Apply(ctx, writeSpec(t, "seq-bad", fmt.Sprintf(seqCanary, "web-seq-bad"))); err != nil {
		t.Fatal(err)
	}
	atCanaryWeight(ctx, t, f, "web-seq-bad")
	setErrors(t, f, harness.Green, 0.05)
	broke := time.Now()
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatal(err)
	}
	onBlue := time.Since(broke)
	view, err := f.WaitRollout(ctx, "web-seq-bad", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatal(err)
	}
	ev := view.GetRollout().GetEvidence()
	seq := ev.GetSequential()
	if ev.GetGuardrail() != "error_rate" || seq.GetTest() != "errors" || seq.GetStatistic() < seq.GetThreshold() || len(seq.GetNodes()) == 0 {
		t.Fatalf("evidence %v", ev)
	}
	if seq.GetCandidateEvents()*seq.GetBaselineRequests() <= seq.GetBaselineEvents()*seq.GetCandidateRequests() {
		t.Errorf("evidence shows green no worse than blue: %v", seq)
	}
	// Where the time went: the alarm's report second ends at At; what
	// follows is commit, publish, apply and this test's sampling.
	t.Logf("green at 5%% errors: every HAProxy on blue %s after the change (first bad request); the alarm came with the report of the second ending %s after it; %s",
		onBlue.Round(10*time.Millisecond), seq.GetAt().AsTime().Sub(broke).Round(10*time.Millisecond), ev.GetSummary())
	hist, err := f.Run(ctx, "rollout", "history", "web-seq-bad")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Rollback evidence: errors: new backend", "statistic:", "guarantee:", "NODE"} {
		if !strings.Contains(hist.Stdout, want) {
			t.Errorf("history does not show %q:\n%s", want, hist.Stdout)
		}
	}

	// The healthy green, for at least as long at the same weight.
	setErrors(t, f, harness.Green, 0.005)
	if _, err := f.Apply(ctx, writeSpec(t, "seq-ok", fmt.Sprintf(seqCanary, "web-seq-ok"))); err != nil {
		t.Fatal(err)
	}
	atCanaryWeight(ctx, t, f, "web-seq-ok")
	healthyFor := max(onBlue, 20*time.Second) * 2
	deadline := time.Now().Add(healthyFor)
	var last *sv1.RolloutView
	for time.Now().Before(deadline) {
		ans, err := f.Status(ctx, "web-seq-ok")
		if err != nil {
			t.Fatal(err)
		}
		last = ans.GetRollouts()[0]
		if p := last.GetRollout().GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
			t.Fatalf("a healthy canary left progressing: %v, %s", p, last.GetRollout().GetReason())
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(time.Second):
		}
	}
	if !strings.Contains(last.GetAnalysis(), "sequential tests (log of the mixture") {
		t.Errorf("status analysis %q", last.GetAnalysis())
	}
	t.Logf("healthy green kept for %s: %s", healthyFor, last.GetAnalysis())
	if _, err := f.Abort(ctx, "web-seq-ok", "end of test"); err != nil {
		t.Fatal(err)
	}
}
