package rollout

import (
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/clock"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestRollout_AnalysisStepNeedsNotWorseEvidence(t *testing.T) {
	sp := canary(setW(10), analyse(2), setW(50))
	r := at(sp, 0, 1)
	a := passes(2, t0)
	a.Method = "sequential"
	a.NotWorse = analysis.NotWorse{Needed: 3, Errors: 1.2, Latency: math.NaN(), CandRequests: 900}
	d := Decide(r, Observation{Now: t0.Add(11 * time.Second), Applied: 3, Live: 3, Analysis: a})
	if d.Action != Wait || !strings.Contains(d.Waiting, "not yet shown not worse") || !strings.Contains(d.Waiting, "errors 1.2 of 3.0 nats") {
		t.Fatalf("decision %+v", d)
	}
	a.NotWorse.Errors, a.NotWorse.Latency = 3.1, 0.5
	if d := Decide(r, Observation{Now: t0.Add(11 * time.Second), Applied: 3, Live: 3, Analysis: a}); d.Action != Wait || !strings.Contains(d.Waiting, "latency 0.5 of 3.0") {
		t.Fatalf("latency not yet shown, decision %+v", d)
	}
	a.NotWorse.Latency = 3.2
	d = Decide(r, Observation{Now: t0.Add(11 * time.Second), Applied: 3, Live: 3, Analysis: a})
	if d.Action != Advance || d.ToStep != 2 || !strings.Contains(d.Message, "not-worse evidence") {
		t.Fatalf("decision %+v", d)
	}
}

// TestRollout_ControllerSequentialWithAFakeClock drives the controller and a
// real analysis store second by second: a healthy green passes its analysis
// step on not-worse evidence; the same rollout with green at 5% errors is
// rolled back with sequential evidence.
func TestRollout_ControllerSequentialWithAFakeClock(t *testing.T) {
	for _, bad := range []bool{false, true} {
		st := state.New()
		raft := &memRaft{st: st, index: 1}
		sp := canary(setW(10), analyse(2), setW(50), pause(time.Hour))
		st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i",
			Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}})
		clk := clock.NewFake(t0)
		store := analysis.NewStore()
		var rollback *sv1.Evidence
		var waited []string
		c := &Controller{State: st, Raft: raft, Fleet: instantFleet{live: 10}, Analyzer: store,
			OnDecision: func(_ *sv1.Rollout, d Decision, _ time.Time) {
				if d.Action == Rollback {
					rollback = d.Evidence
				}
			}}
		green := Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond}
		if bad {
			green.ErrorRate = 0.05
		}
		src := synthetic(10, 600, func(time.Time) Behavior { return green })
		var prev time.Time = t0
		nodes := fleetOf(10)
		for i := range nodes {
			nodes[i].Weights = map[string]uint32{"blue": 90, "green": 10}
		}
		for range 600 * 4 {
			clk.Advance(250 * time.Millisecond)
			now := clk.Now()
			for _, rep := range src.Reports(prev, now, nodes) {
				rep.RolloutId, rep.Generation = "r", 7
				if err := store.Add(rep); err != nil {
					t.Fatal(err)
				}
			}
			prev = now
			if err := c.Step(now); err != nil {
				t.Fatal(err)
			}
			r := st.Rollout("r")
			if r.GetStep() == 1 {
				obs := c.Observe(r, now)
				waited = append(waited, Decide(r, obs).Waiting)
			}
			if r.GetStep() >= 3 || state.Terminal(r.GetPhase()) || r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK {
				break
			}
		}
		r := st.Rollout("r")
		if bad {
			if rollback.GetSequential() == nil || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK {
				t.Fatalf("bad green: phase %v evidence %v", r.GetPhase(), rollback)
			}
			continue
		}
		if r.GetStep() < 3 || rollback != nil {
			t.Fatalf("healthy green stuck at step %d (%v), rollback %v; last wait %q", r.GetStep(), r.GetPhase(), rollback, waited[len(waited)-1])
		}
		sawNI := false
		for _, w := range waited {
			if strings.Contains(w, "not yet shown not worse") {
				sawNI = true
			}
		}
		if !sawNI {
			t.Errorf("the analysis step never waited on not-worse evidence: %q", waited)
		}
	}
}
