package state

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// current stamps an entry as a leader of this version commits it.
func current(e *sv1.IntentEntry) *sv1.IntentEntry {
	e = proto.Clone(e).(*sv1.IntentEntry)
	e.Rules = Rules
	return e
}

func firstGated(name string) *sv1.RolloutSpec {
	sp := bgSpec(name)
	sp.Waves = []*sv1.WaveSpec{{Name: "first", BasisPoints: 10000, ManualGate: true}}
	return sp
}

func approveAt(id, rollout, reason string, at time.Time) *sv1.IntentEntry {
	return &sv1.IntentEntry{StampedAt: timestamppb.New(at), Intent: &sv1.Intent{Id: id, Operator: "ana",
		Action: &sv1.Intent_ApproveRollout{ApproveRollout: &sv1.RolloutControl{Rollout: rollout, Reason: reason}}}}
}

func promoteAt(id, rollout, reason string, full bool, at time.Time) *sv1.IntentEntry {
	return &sv1.IntentEntry{StampedAt: timestamppb.New(at), Intent: &sv1.Intent{Id: id, Operator: "ana",
		Action: &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: rollout, Full: full, Reason: reason}}}}
}

func lastLine(s *State, rollout string) string {
	h := s.Rollout(rollout).GetHistory()
	return h[len(h)-1].GetMessage()
}

func TestState_FirstWaveManualGateHoldsUntilApproved(t *testing.T) {
	s := New()
	a := s.ApplyIntent(5, current(applyEntry("i1", firstGated("r1"), t0)))
	if !a.Result.GetAccepted() {
		t.Fatalf("refused: %v", a.Result)
	}
	r := s.Rollout("r1")
	if !r.GetStartGate() || !r.GetHoldStart() {
		t.Fatalf("start gate %v, hold %v; want both", r.GetStartGate(), r.GetHoldStart())
	}
	if w, _, _ := desired.Evaluate(s.Desired("web"), "any-node", nil); w["green"] != 0 {
		t.Fatalf("before approval the first document gives green %d%%", w["green"])
	}
	if msg := lastLine(s, "r1"); !strings.Contains(msg, "waiting for approval to start wave first") {
		t.Errorf("history: %q", msg)
	}
	// The controller's start entry (gates open) does not pass the approval.
	if ch := s.ApplyStart(6, &sv1.RolloutStartEntry{Rollout: "r1", StampedAt: timestamppb.New(t0)}); ch != nil || !s.Rollout("r1").GetHoldStart() {
		t.Fatal("a start entry opened the manual gate of the first wave")
	}
	ap := s.ApplyIntent(7, current(approveAt("i2", "r1", "change CHG-42 signed off", t0.Add(time.Second))))
	if !ap.Result.GetAccepted() || len(ap.Changed) != 1 {
		t.Fatalf("approve of the gated first wave: %v, changed %v", ap.Result, ap.Changed)
	}
	r = s.Rollout("r1")
	if r.GetStartGate() || r.GetHoldStart() {
		t.Fatal("still held after the approval")
	}
	if w, _, _ := desired.Evaluate(s.Desired("web"), "any-node", nil); w["green"] != 100 {
		t.Errorf("after approval green %d%%, want 100", w["green"])
	}
	if msg := lastLine(s, "r1"); !strings.Contains(msg, "approved the start of wave first") || !strings.HasSuffix(msg, "; reason: change CHG-42 signed off") {
		t.Errorf("history: %q", msg)
	}
	if again := s.ApplyIntent(8, current(approveAt("i3", "r1", "", t0.Add(2*time.Second)))); again.Result.GetCode() != CodeNothingToApprove {
		t.Errorf("second approve: %v", again.Result)
	}
}

// Entries from before rules version 1 replay as they applied: the first
// wave's gate was ignored, so traffic moved at once.
func TestState_FirstWaveManualGateOfOldEntriesReplaysAsApplied(t *testing.T) {
	s := New()
	s.ApplyIntent(5, applyEntry("i1", firstGated("r1"), t0))
	if r := s.Rollout("r1"); r.GetStartGate() || r.GetHoldStart() {
		t.Fatal("an old entry now holds its rollout")
	}
	if w, _, _ := desired.Evaluate(s.Desired("web"), "any-node", nil); w["green"] != 100 {
		t.Errorf("old entry: green %d%%, want 100 as it applied", w["green"])
	}
}

func TestState_FirstWaveManualGateWithGatingWebhooksWaitsForBoth(t *testing.T) {
	s := New()
	sp := firstGated("r1")
	sp.Hooks = &sv1.HooksSpec{Webhooks: []*sv1.Webhook{{Name: "cab", Url: "https://cab.example/ok", Point: sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT, Gating: true}}}
	if a := s.ApplyIntent(5, current(applyEntry("i1", sp, t0))); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if a := s.ApplyIntent(6, current(approveAt("i2", "r1", "", t0))); !a.Result.GetAccepted() || a.Changed != nil {
		t.Fatalf("approve: %v changed %v", a.Result, a.Changed)
	}
	if r := s.Rollout("r1"); r.GetStartGate() || !r.GetHoldStart() {
		t.Fatal("after the approval the webhooks must still hold the start")
	}
	if ch := s.ApplyStart(7, &sv1.RolloutStartEntry{Rollout: "r1", StampedAt: timestamppb.New(t0)}); len(ch) != 1 {
		t.Fatal("the start entry after approval did not start the rollout")
	}
}

func TestState_FirstWaveManualGateTwoPersonRule(t *testing.T) {
	s, idx := teamState(t)
	next := func() uint64 { idx++; return idx }
	s.ApplyIntent(next(), aclEntry("pol", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 2, ApprovalServices: "web*"}}}))
	if a := s.ApplyIntent(next(), current(signed(keyAlice, applyEntry("apply", firstGated("r1"), t0)))); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if a := s.ApplyIntent(next(), current(approveEntry("self", keyAlice, "r1"))); a.Result.GetCode() != CodeTwoPerson {
		t.Fatalf("self-approval: %v", a.Result)
	}
	if a := s.ApplyIntent(next(), current(approveEntry("bob", keyBob, "r1"))); !a.Result.GetAccepted() || !s.Rollout("r1").GetStartGate() {
		t.Fatalf("one approval of two: %v, start gate %v", a.Result, s.Rollout("r1").GetStartGate())
	}
	if a := s.ApplyIntent(next(), current(approveEntry("carol", keyCarol, "r1"))); !a.Result.GetAccepted() || s.Rollout("r1").GetHoldStart() {
		t.Fatalf("two approvals: %v, held %v", a.Result, s.Rollout("r1").GetHoldStart())
	}
}

func TestState_ApproveAndPromoteReasonsAreRecorded(t *testing.T) {
	s := New()
	s.ApplyIntent(5, current(applyEntry("i1", canarySpec("c1"), t0)))
	s.ApplyAdvance(6, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromStep: 0, ToStep: 1, StampedAt: timestamppb.New(t0)})
	if a := s.ApplyIntent(7, current(approveAt("ap", "c1", "dashboards green", t0))); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if msg := lastLine(s, "c1"); !strings.HasPrefix(msg, "approved at ") || !strings.HasSuffix(msg, "; reason: dashboards green") {
		t.Errorf("approve history: %q", msg)
	}
	if rec := lastAudit(t, s); !strings.HasSuffix(rec.GetMessage(), "; reason: dashboards green") {
		t.Errorf("approve audit record: %q", rec.GetMessage())
	}
	if a := s.ApplyIntent(8, current(promoteAt("pr", "c1", "hotfix, CAB waived", true, t0))); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if msg := lastLine(s, "c1"); !strings.HasPrefix(msg, "promoted fully by an operator") || !strings.HasSuffix(msg, "; reason: hotfix, CAB waived") {
		t.Errorf("promote history: %q", msg)
	}
	if rec := lastAudit(t, s); !strings.HasSuffix(rec.GetMessage(), "; reason: hotfix, CAB waived") {
		t.Errorf("promote audit record: %q", rec.GetMessage())
	}
}

// An approve reason in an entry from before rules version 1 was not
// recorded; replaying it must give the same history and audit chain.
func TestState_ReasonsOfOldEntriesReplayAsApplied(t *testing.T) {
	s := New()
	s.ApplyIntent(5, applyEntry("i1", canarySpec("c1"), t0))
	s.ApplyAdvance(6, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromStep: 0, ToStep: 1, StampedAt: timestamppb.New(t0)})
	s.ApplyIntent(7, approveAt("ap", "c1", "dashboards green", t0))
	if msg := lastLine(s, "c1"); strings.Contains(msg, "reason") {
		t.Errorf("an old entry's history changed: %q", msg)
	}
}
