package state

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A drill that ends before its time (a rollback drill whose fleet
// recovered) tells its agents so: its document ends when it ended, and the
// agents revert at end_at.
func TestState_DrillDocumentEndsWhenTheDrillEnded(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s := New()
	sp := &sv1.DrillSpec{Name: "d1", Service: "web", MaxNodes: 2, MaxBasisPoints: 10000, Duration: durationpb.New(time.Minute),
		Fault: &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 1}}}}
	a := s.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i", Operator: "sre",
		Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}})
	if !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	s.ApplyDrillStart(2, &sv1.DrillStartEntry{Drill: "d1", Targets: []string{"a"}, StampedAt: timestamppb.New(t0)})
	if got := s.DrillDocument("d1").GetEndAt().AsTime(); !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("running document ends at %v, want %v", got, t0.Add(time.Minute))
	}
	s.ApplyDrillEnd(3, &sv1.DrillEndEntry{Drill: "d1", Reason: "the fleet rolled back and recovered", StampedAt: timestamppb.New(t0.Add(20 * time.Second))})
	doc := s.DrillDocument("d1")
	if doc.GetAborted() || doc.GetGeneration() != 3 || !doc.GetEndAt().AsTime().Equal(t0.Add(20*time.Second)) {
		t.Fatalf("document of the early-ended drill: generation %d aborted %v ends %v; want generation 3, not aborted, ending at %v",
			doc.GetGeneration(), doc.GetAborted(), doc.GetEndAt().AsTime(), t0.Add(20*time.Second))
	}
}

// A rollout's judge leaves out a target's telemetry while a drill's fault
// is on it; a node the drill does not target, or a drill nobody ran, does
// not make anything unjudged.
func TestState_DrillUnjudgedOnlyForItsTargets(t *testing.T) {
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	s := New()
	sp := &sv1.DrillSpec{Name: "d1", Service: "web", MaxNodes: 2, MaxBasisPoints: 10000, Duration: durationpb.New(time.Minute),
		Fault: &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 1}}}}
	a := s.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i", Operator: "sre",
		Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}})
	if !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	s.ApplyDrillStart(2, &sv1.DrillStartEntry{Drill: "d1", Targets: []string{"a"}, StampedAt: timestamppb.New(t0)})
	for _, c := range []struct {
		drill, node string
		want        bool
	}{{"d1", "a", true}, {"d1", "b", false}, {"d9", "a", false}} {
		if got := s.DrillUnjudged(c.drill, c.node, "web-1"); got != c.want {
			t.Errorf("DrillUnjudged(%s, %s) = %v, want %v", c.drill, c.node, got, c.want)
		}
	}
}
