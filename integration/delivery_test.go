package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// load sends requests through every node's HAProxy at about perSecond each
// until ctx ends, so the agents have real traffic to report and the
// coordinator's analysis real windows to judge.
func load(ctx context.Context, t *testing.T, f *harness.Fleet, perSecond int) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	for _, n := range f.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second / time.Duration(perSecond))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.FrontendAddr+"/", nil)
				resp, err := client.Do(req)
				if err == nil {
					resp.Body.Close()
				}
			}
		}()
	}
	return func() { cancel(); wg.Wait(); client.CloseIdleConnections() }
}

// setGreen changes how every node's green backend answers.
func setGreen(t *testing.T, f *harness.Fleet, errorRate float64) {
	t.Helper()
	for _, n := range f.Nodes {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/behavior?error-rate=%v", n.GreenAddr, errorRate), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("set green behavior on %s: %s", n.ID, resp.Status)
		}
	}
}

func twoTiers(i int) map[string]string {
	if i == 0 {
		return map[string]string{"tier": "canary"}
	}
	return map[string]string{"tier": "main"}
}

const healthyCanary = `
version: v1
name: web-canary-ok
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 25
      - analysis: {windows: 2}
      - setWeight: 60
      - pause: {duration: 2s}
      - setWeight: 100
waves:
  - name: canary
    selector: {tier: canary}
  - name: main
analysis:
  window: 3s
  minRequests: 20
`

func TestDelivery_HealthyCanaryRampsThroughEveryStepAndWave(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be, Labels: twoTiers})
	stop := load(ctx, t, f, 60)
	defer stop()

	if _, err := f.Apply(ctx, writeSpec(t, "canary-ok", healthyCanary)); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, "web-canary-ok", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatalf("after completion: %v", err)
	}
	// The history shows every step of both waves, the analysis passing, and
	// no rollback.
	var lines []string
	for _, e := range view.GetRollout().GetHistory() {
		lines = append(lines, e.GetMessage())
	}
	hist := strings.Join(lines, "\n")
	for _, want := range []string{
		"wave canary step 2/5 (analysis 2 windows",
		"analysis passed", // the windows, and green shown not worse:
		"not-worse evidence: errors 3.0 of 3.0 nats",
		"wave canary step 5/5 (setWeight 100",
		"wave main step 1/5 (setWeight 25",
		"wave main step 4/5 (pause 2s",
		"promoted",
		"completed",
	} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}
	if strings.Contains(hist, "rolling back") {
		t.Errorf("a healthy canary rolled back:\n%s", hist)
	}
}

const failingCanary = `
version: v1
name: web-canary-bad
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

func TestDelivery_GreenFailingAtStepTwoRollsTheFleetBack(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be})
	stop := load(ctx, t, f, 60)
	defer stop()

	if _, err := f.Apply(ctx, writeSpec(t, "canary-bad", failingCanary)); err != nil {
		t.Fatal(err)
	}
	// Step 2 is the pause: green carries 40% everywhere.
	if _, err := f.WaitRollout(ctx, "web-canary-bad", func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 {
			return fmt.Errorf("at step %d", v.GetRollout().GetStep()+1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	broke := time.Now()
	setGreen(t, f, 0.3)

	// No operator action from here on.
	view, err := f.WaitRollout(ctx, "web-canary-bad", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rolled back %s after green broke: %s", time.Since(broke).Round(100*time.Millisecond), view.GetRollout().GetReason())
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the rollback: %v", err)
	}
	ev := view.GetRollout().GetEvidence()
	seq := ev.GetSequential()
	if ev.GetGuardrail() != "error_rate" || seq.GetTest() != "errors" || seq.GetStatistic() < seq.GetThreshold() {
		t.Fatalf("evidence %v", ev)
	}
	if rate := float64(seq.GetCandidateEvents()) / float64(seq.GetCandidateRequests()); rate < 0.1 || len(seq.GetNodes()) == 0 {
		t.Errorf("evidence: green at %.1f%% errors, nodes %v", 100*rate, seq.GetNodes())
	}
}
