package state

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// finishedRollouts applies n blue-green rollouts of service one after the
// other, each promoted and finished an hour after the one before, from
// index *index on; the first is named prefix00.
func finishedRollouts(t *testing.T, s *State, service, prefix string, n int, index *uint64) {
	t.Helper()
	for i := range n {
		at := t0.Add(time.Duration(i) * time.Hour)
		sp := bgSpec(fmt.Sprintf("%s%02d", prefix, i))
		sp.Service = service
		if i%2 == 1 {
			sp.From, sp.To = sp.To, sp.From
		}
		*index++
		if a := s.ApplyIntent(*index, applyEntry(service+sp.GetName(), sp, at)); !a.Result.GetAccepted() {
			t.Fatalf("apply %s refused: %v", sp.GetName(), a.Result)
		}
		*index++
		s.ApplyAdvance(*index, &sv1.RolloutAdvanceEntry{Rollout: sp.GetName(), Promote: true, StampedAt: timestamppb.New(at)})
		*index++
		s.ApplyFinish(*index, &sv1.RolloutFinishEntry{Rollout: sp.GetName(), StampedAt: timestamppb.New(at)})
		if p := s.Rollout(sp.GetName()).GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
			t.Fatalf("%s: phase %v", sp.GetName(), p)
		}
	}
}

func TestForget_CandidatesAreOldFinishedRolloutsBeyondEachServicesNewest(t *testing.T) {
	s := New()
	var index uint64
	finishedRollouts(t, s, "web", "w", KeepFinishedPerService+5, &index)
	finishedRollouts(t, s, "api", "a", 3, &index)
	// A rollout still running is never a candidate, however old.
	index++
	running := bgSpec("w-live")
	running.From, running.To = "green", "blue"
	if a := s.ApplyIntent(index, applyEntry("live", running, t0)); !a.Result.GetAccepted() {
		t.Fatalf("refused: %v", a.Result)
	}

	all := s.ForgetCandidates(t0.Add(1000*time.Hour), 0)
	if want := []string{"w00", "w01", "w02", "w03", "w04"}; !slices.Equal(all, want) {
		t.Fatalf("candidates %v, want %v (web beyond its newest %d; api has only 3)", all, want, KeepFinishedPerService)
	}
	// Only those that ended before the cut, oldest first, at most limit.
	if got := s.ForgetCandidates(t0.Add(150*time.Minute), 0); !slices.Equal(got, []string{"w00", "w01", "w02"}) {
		t.Fatalf("ended before 02:30: %v", got)
	}
	if got := s.ForgetCandidates(t0.Add(1000*time.Hour), 2); !slices.Equal(got, []string{"w00", "w01"}) {
		t.Fatalf("limit 2: %v", got)
	}
}

func TestForget_LeavesATombstoneThatKeepsTheNameAndAnswers(t *testing.T) {
	s := New()
	var index uint64
	finishedRollouts(t, s, "web", "w", KeepFinishedPerService+5, &index)
	index++
	running := bgSpec("w-live")
	running.From, running.To = "green", "blue"
	s.ApplyIntent(index, applyEntry("live", running, t0))
	// A rollback drill still running in w03, a webhook call of w04 still
	// pending: both stay.
	s.drills["d1"] = &sv1.Drill{Id: "d1", Spec: &sv1.DrillSpec{Name: "d1", Rollout: "w03"}, Phase: sv1.DrillPhase_DRILL_PHASE_RUNNING}
	s.rollouts["w04"].HookCalls = []*sv1.HookCall{{Key: "post-rollout", Webhook: "ci", Seq: 1, Outcome: sv1.HookOutcome_HOOK_OUTCOME_PENDING}}
	if got := s.ForgetCandidates(t0.Add(2000*time.Hour), 0); !slices.Equal(got, []string{"w00", "w01", "w02"}) {
		t.Fatalf("candidates %v, want w00..w02 (w03 drilled, w04 a call pending)", got)
	}
	heldBefore, _ := s.RolloutCounts()
	auditBefore := len(s.audit)

	// The entry may name what must stay (running, drilled, a call pending,
	// unknown): every replica skips the same ones.
	at := t0.Add(2000 * time.Hour)
	index++
	forgot := s.ApplyForget(index, &sv1.ForgetEntry{Rollouts: []string{"w00", "w01", "w02", "w03", "w04", "w-live", "nope"},
		StampedAt: timestamppb.New(at), Reason: "test"})
	if !slices.Equal(forgot.Rollouts, []string{"w00", "w01", "w02"}) || len(forgot.Drills) != 0 {
		t.Fatalf("forgot %v", forgot)
	}
	held, forgotten := s.RolloutCounts()
	if held != heldBefore-3 || forgotten != 3 {
		t.Fatalf("held %d forgotten %d, want %d and 3", held, forgotten, heldBefore-3)
	}
	if s.Rollout("w00") != nil || s.Rollout("w-live") == nil {
		t.Fatal("w00 still held, or the running rollout forgotten")
	}
	f := s.Forgotten("w01")
	if f.GetService() != "web" || f.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED || f.GetIndex() != index ||
		!f.GetEndedAt().AsTime().Equal(t0.Add(time.Hour)) || !f.GetForgottenAt().AsTime().Equal(at) {
		t.Fatalf("tombstone %v", f)
	}
	if len(s.audit) != auditBefore+1 {
		t.Fatalf("audit records %d, want one more than %d", len(s.audit), auditBefore)
	}
	rec := &sv1.AuditRecord{}
	if err := proto.Unmarshal(s.audit[len(s.audit)-1].GetRecord(), rec); err != nil {
		t.Fatal(err)
	}
	if rec.GetKind() != "forgotten" || !strings.Contains(rec.GetMessage(), "3 finished rollouts: w00, w01, w02") {
		t.Fatalf("audit record %v", rec)
	}

	// The name stays taken; an intent for it says where it went.
	index++
	if a := s.ApplyIntent(index, applyEntry("again", bgSpec("w00"), at)); a.Result.GetCode() != CodeConflict ||
		!strings.Contains(a.Result.GetError(), "forgotten") {
		t.Fatalf("reusing a forgotten name: %v", a.Result)
	}
	index++
	if a := s.ApplyIntent(index, abortEntry("abort-old", "w02", at)); a.Result.GetCode() != CodeNotFound ||
		!strings.Contains(a.Result.GetError(), "audit log --rollout") {
		t.Fatalf("abort of a forgotten rollout: %v", a.Result)
	}

	// Forgetting again changes nothing and records nothing.
	index++
	if again := s.ApplyForget(index, &sv1.ForgetEntry{Rollouts: []string{"w00"}, StampedAt: timestamppb.New(at)}); len(again.Rollouts) != 0 {
		t.Fatalf("forgot again %v", again)
	}

	// Tombstones survive a snapshot, and a snapshot naming one rollout
	// both held and forgotten is refused.
	snap := s.Snapshot()
	restored, err := FromSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(snap, restored.Snapshot()) || restored.Forgotten("w02") == nil {
		t.Fatal("snapshot round trip lost the tombstones")
	}
	snap.Forgotten = append(snap.Forgotten, &sv1.ForgottenRollout{Id: "w-live"})
	if _, err := FromSnapshot(snap); err == nil || !strings.Contains(err.Error(), "w-live") {
		t.Fatalf("snapshot with a rollout held and forgotten: %v", err)
	}
}

// drillEntry runs a drill of service named name, at.
func drillEntry(name, service string, at time.Time) *sv1.IntentEntry {
	return &sv1.IntentEntry{StampedAt: timestamppb.New(at), Intent: &sv1.Intent{Id: "run-" + name, Operator: "sre",
		Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: &sv1.DrillSpec{Name: name, Service: service,
			MaxNodes: 1, MaxBasisPoints: 10000, Duration: durationpb.New(time.Minute),
			Fault: &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 1}}}}}}}}
}

// Ended drills are forgotten like finished rollouts: beyond each service's
// newest KeepFinishedPerService, once they ended before the cut; a drill
// that may still run stays; the name stays taken and says where it went.
func TestForget_EndedDrills(t *testing.T) {
	s := New()
	var index uint64
	n := KeepFinishedPerService + 3
	for i := range n {
		at := t0.Add(time.Duration(i) * time.Hour)
		name := fmt.Sprintf("d%02d", i)
		index++
		if a := s.ApplyIntent(index, drillEntry(name, "web", at)); !a.Result.GetAccepted() {
			t.Fatalf("run %s: %v", name, a.Result)
		}
		index++
		if a := s.ApplyIntent(index, &sv1.IntentEntry{StampedAt: timestamppb.New(at.Add(time.Minute)), Intent: &sv1.Intent{Id: "abort-" + name, Operator: "sre",
			Action: &sv1.Intent_AbortDrill{AbortDrill: &sv1.AbortDrill{Drill: name}}}}); !a.Result.GetAccepted() {
			t.Fatalf("abort %s: %v", name, a.Result)
		}
	}
	index++
	s.ApplyIntent(index, drillEntry("d-live", "web", t0))

	cut := t0.Add(1000 * time.Hour)
	if got := s.DrillForgetCandidates(cut, 0); !slices.Equal(got, []string{"d00", "d01", "d02"}) {
		t.Fatalf("drill candidates %v", got)
	}
	if got := s.DrillForgetCandidates(t0.Add(90*time.Minute), 0); !slices.Equal(got, []string{"d00", "d01"}) {
		t.Fatalf("drill candidates ended before 01:30: %v", got)
	}
	index++
	forgot := s.ApplyForget(index, &sv1.ForgetEntry{Drills: []string{"d00", "d01", "d02", "d-live", "nope"}, StampedAt: timestamppb.New(cut)})
	if !slices.Equal(forgot.Drills, []string{"d00", "d01", "d02"}) || len(forgot.Rollouts) != 0 {
		t.Fatalf("forgot %v", forgot)
	}
	if held, forgotten := s.DrillCounts(); held != n-3+1 || forgotten != 3 {
		t.Fatalf("drills held %d, forgotten %d", held, forgotten)
	}
	if f := s.ForgottenDrill("d01"); f.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || f.GetService() != "web" || f.GetIndex() != index {
		t.Fatalf("tombstone %v", f)
	}
	index++
	again := drillEntry("d00", "web", cut)
	again.Intent.Id = "run-d00-again"
	if a := s.ApplyIntent(index, again); a.Result.GetCode() != CodeConflict || !strings.Contains(a.Result.GetError(), "forgotten") {
		t.Fatalf("reusing a forgotten drill's name: %v", a.Result)
	}
	snap := s.Snapshot()
	restored, err := FromSnapshot(snap)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(snap, restored.Snapshot()) || restored.ForgottenDrill("d02") == nil {
		t.Fatal("snapshot round trip lost the drills' tombstones")
	}
}
