package state

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// `audit log --rollout web-42` is how an operator reads back what happened
// to a rollout. The records of a rollback drill's own intents (who started
// it, who aborted it, and refusals of either) were filed under the drill's
// name as if it were a rollout (the intent's answer names the drill), so
// that view left out who ran the drill inside the rollout and who aborted
// it, while `--rollout DRILL` showed them. They name the drill's rollout
// now (intent rules 4); entries committed under earlier rules replay as
// they applied.
func TestAudit_ARollbackDrillsIntentsAreFiledUnderItsRollout(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 3, 0, 0, 0, time.UTC)
	for _, rules := range []uint32{Rules, 3} {
		s := New()
		entry := func(id string, in *sv1.Intent) *sv1.IntentEntry {
			in.Id, in.Operator = id, "sre"
			return &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Rules: rules, Intent: in}
		}
		sp := &sv1.RolloutSpec{Name: "web-42", Service: "web", From: "blue", To: "green",
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
				{Kind: &sv1.Step_SetWeight{SetWeight: 10}}, {Kind: &sv1.Step_Pause{Pause: &sv1.Pause{}}}}}}}}
		if a := s.ApplyIntent(1, entry("apply", &sv1.Intent{Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}})); !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		dsp := &sv1.DrillSpec{Name: "dr-1", Service: "web", Rollout: "web-42", MaxNodes: 1, MaxBasisPoints: 10000, Duration: durationpb.New(time.Minute),
			Fault: &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 1}}}}
		run := entry("run", &sv1.Intent{Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: dsp}}})
		if a := s.ApplyIntent(2, run); !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		runRec := lastAudit(t, s)
		abort := entry("abort", &sv1.Intent{Action: &sv1.Intent_AbortDrill{AbortDrill: &sv1.AbortDrill{Drill: "dr-1", Reason: "pager went off"}}})
		if a := s.ApplyIntent(3, abort); !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		abortRec := lastAudit(t, s)
		// Refused before commit: the leader names the rollout from the state.
		rollout, _, drill := s.Named(abort.GetIntent())

		want := "web-42"
		if rules < 4 {
			want = "dr-1" // as it applied
		}
		for what, rec := range map[string]*sv1.AuditRecord{"chaos run": runRec, "chaos abort": abortRec} {
			if rec.GetRollout() != want || rec.GetDrill() != "dr-1" {
				t.Errorf("rules %d: %s is recorded with rollout %q drill %q; want rollout %q drill dr-1", rules, what, rec.GetRollout(), rec.GetDrill(), want)
			}
		}
		if rollout != "web-42" || drill != "dr-1" {
			t.Errorf("a refused chaos abort would be recorded with rollout %q drill %q; want web-42, dr-1", rollout, drill)
		}
	}
}
