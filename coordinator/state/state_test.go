package state

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func bgSpec(name string) *sv1.RolloutSpec {
	return &sv1.RolloutSpec{Name: name, Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}}}
}

func applyEntry(id string, sp *sv1.RolloutSpec, at time.Time) *sv1.IntentEntry {
	return &sv1.IntentEntry{StampedAt: timestamppb.New(at), Intent: &sv1.Intent{Id: id, Operator: "ana",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}}
}

func abortEntry(id, rollout string, at time.Time) *sv1.IntentEntry {
	return &sv1.IntentEntry{StampedAt: timestamppb.New(at), Intent: &sv1.Intent{Id: id, Operator: "bo",
		Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: rollout}}}}
}

func TestState_ApplyRolloutDerivesDesiredState(t *testing.T) {
	s := New()
	a := s.ApplyIntent(7, applyEntry("i1", bgSpec("r1"), t0))
	if !a.Result.GetAccepted() || a.Result.GetIndex() != 7 || a.Result.GetRolloutId() != "r1" {
		t.Fatalf("result %v", a.Result)
	}
	if len(a.Changed) != 1 || a.Changed[0] != "web" {
		t.Fatalf("changed %v", a.Changed)
	}
	ds := s.Desired("web")
	if ds.GetGeneration() != 7 || ds.GetRolloutId() != "r1" || !ds.GetIssuedAt().AsTime().Equal(t0) {
		t.Fatalf("desired %v", ds)
	}
	w, wave, ok := desired.Evaluate(ds, "any-node", nil)
	if !ok || wave != 0 || w["green"] != 100 || w["blue"] != 0 {
		t.Fatalf("node weights %v wave %d ok %v", w, wave, ok)
	}
	if r := s.Rollout("r1"); r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || r.GetOperator() != "ana" {
		t.Fatalf("rollout %v", r)
	}
}

func TestState_AbortSendsFleetBack(t *testing.T) {
	s := New()
	s.ApplyIntent(7, applyEntry("i1", bgSpec("r1"), t0))
	a := s.ApplyIntent(9, abortEntry("i2", "r1", t0.Add(time.Second)))
	if !a.Result.GetAccepted() {
		t.Fatalf("abort refused: %v", a.Result)
	}
	ds := s.Desired("web")
	w, _, _ := desired.Evaluate(ds, "n", nil)
	if ds.GetGeneration() != 9 || w["blue"] != 100 || w["green"] != 0 {
		t.Fatalf("desired after abort %v", ds)
	}
	r := s.Rollout("r1")
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK || !strings.Contains(r.GetReason(), "bo") {
		t.Fatalf("rollout after abort %v", r)
	}
	// A convergence report for the old generation changes nothing.
	s.ApplyConverged(10, &sv1.RolloutConvergedEntry{Rollout: "r1", Generation: 7, Nodes: 3})
	if s.Rollout("r1").GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK {
		t.Fatal("stale convergence changed the phase")
	}
	s.ApplyConverged(11, &sv1.RolloutConvergedEntry{Rollout: "r1", Generation: 9, Nodes: 3, StampedAt: timestamppb.New(t0)})
	if got := s.Rollout("r1").GetPhase(); got != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		t.Fatalf("phase %v, want rolled back", got)
	}
	if s.Desired("web").GetGeneration() != 9 {
		t.Fatal("convergence changed the desired generation")
	}
}

func TestState_Refusals(t *testing.T) {
	s := New()
	s.ApplyIntent(1, applyEntry("i1", bgSpec("r1"), t0))
	bad := bgSpec("r2")
	bad.To = "blue"
	cases := []struct {
		name  string
		entry *sv1.IntentEntry
		code  string
		text  string
	}{
		{"invalid spec", applyEntry("i2", bad, t0), CodeInvalid, "spec.to"},
		{"no spec", applyEntry("i3", nil, t0), CodeInvalid, "apply_rollout.spec"},
		{"name taken", applyEntry("i4", bgSpec("r1"), t0), CodeConflict, "spec.name"},
		{"service busy", applyEntry("i5", bgSpec("r9"), t0), CodeConflict, `"web" is in rollout "r1"`},
		{"abort unknown", abortEntry("i6", "nope", t0), CodeNotFound, `"nope"`},
		{"no action", &sv1.IntentEntry{Intent: &sv1.Intent{Id: "i7"}}, CodeInvalid, "no action"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := s.Snapshot()
			a := s.ApplyIntent(2, c.entry)
			if a.Result.GetAccepted() || a.Result.GetCode() != c.code || !strings.Contains(a.Result.GetError(), c.text) {
				t.Fatalf("result %v, want code %s mentioning %q", a.Result, c.code, c.text)
			}
			if len(a.Changed) != 0 {
				t.Fatalf("refusal changed %v", a.Changed)
			}
			after := s.Snapshot()
			if got := after.GetAuditHead().GetSeq() - before.GetAuditHead().GetSeq(); got != 1 {
				t.Fatalf("refusal made %d audit records, want 1", got)
			}
			if rec := lastAudit(t, s); rec.GetKind() != "refused" || rec.GetCode() != c.code || rec.GetIntentId() != c.entry.GetIntent().GetId() {
				t.Fatalf("audit record %v, want the refusal", rec)
			}
			after.Intents, before.Intents = nil, nil
			after.AuditHead, before.AuditHead, after.Audit, before.Audit = nil, nil, nil, nil
			if !proto.Equal(before, after) {
				t.Fatal("refusal changed state")
			}
		})
	}
}

func TestState_DuplicateIntentAppliedOnce(t *testing.T) {
	s := New()
	first := s.ApplyIntent(3, applyEntry("i1", bgSpec("r1"), t0))
	again := s.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0))
	if !again.Result.GetDuplicate() || again.Result.GetIndex() != first.Result.GetIndex() || !again.Result.GetAccepted() {
		t.Fatalf("duplicate result %v", again.Result)
	}
	if len(again.Changed) != 0 || s.Desired("web").GetGeneration() != 3 {
		t.Fatal("duplicate intent applied twice")
	}
}

// The id an intent took stays its own: a resend of it (created_at aside)
// by its signer is not taken, another intent or another signer is, and the
// record survives a snapshot.
func TestState_IntentTakenByAnotherIntentOrSigner(t *testing.T) {
	s := New()
	e := applyEntry("i1", bgSpec("r1"), t0)
	e.Signer = "KEY-A"
	s.ApplyIntent(3, e)
	resend := proto.CloneOf(e.GetIntent())
	resend.CreatedAt = timestamppb.New(t0.Add(time.Minute))
	other := applyEntry("i1", bgSpec("r2"), t0).GetIntent()
	restored, err := FromSnapshot(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []*State{s, restored} {
		if p := st.IntentTaken("i1", "KEY-A", bus.IntentFingerprint(resend)); p != nil {
			t.Fatalf("a resend by its signer is taken: %v", p)
		}
		if p := st.IntentTaken("i1", "KEY-B", bus.IntentFingerprint(resend)); p.GetResult().GetIndex() != 3 {
			t.Fatalf("the same intent from another signer: %v, want taken at index 3", p)
		}
		if p := st.IntentTaken("i1", "KEY-A", bus.IntentFingerprint(other)); p == nil {
			t.Fatal("another intent under the id is not taken")
		}
		if p := st.IntentTaken("i2", "KEY-A", bus.IntentFingerprint(other)); p != nil {
			t.Fatalf("an id never used is taken: %v", p)
		}
	}
}

func TestState_ForgetsOldIntents(t *testing.T) {
	s := New()
	s.ApplyIntent(1, applyEntry("old", bgSpec("r1"), t0))
	s.ApplyIntent(2, abortEntry("new", "r1", t0.Add(IntentMemory+time.Hour)))
	snap := s.Snapshot()
	if len(snap.GetIntents()) != 1 || snap.GetIntents()[0].GetId() != "new" {
		t.Fatalf("intents %v", snap.GetIntents())
	}
}

func TestState_NewRolloutAfterCompletion(t *testing.T) {
	s := New()
	s.ApplyIntent(1, applyEntry("i1", bgSpec("r1"), t0))
	s.ApplyAdvance(2, &sv1.RolloutAdvanceEntry{Rollout: "r1", Promote: true, StampedAt: timestamppb.New(t0)})
	s.ApplyFinish(3, &sv1.RolloutFinishEntry{Rollout: "r1", StampedAt: timestamppb.New(t0)})
	if p := s.Rollout("r1").GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
		t.Fatalf("phase %v", p)
	}
	sp := bgSpec("r2")
	sp.From, sp.To = "green", "blue"
	if a := s.ApplyIntent(4, applyEntry("i2", sp, t0)); !a.Result.GetAccepted() {
		t.Fatalf("refused: %v", a.Result)
	}
	// The older rollout can no longer be aborted: it does not own the service.
	if a := s.ApplyIntent(5, abortEntry("i3", "r1", t0)); a.Result.GetCode() != CodeConflict {
		t.Fatalf("abort of superseded rollout: %v", a.Result)
	}
}

func TestState_SnapshotRoundTrip(t *testing.T) {
	s := New()
	s.ApplyIntent(1, applyEntry("i1", bgSpec("r1"), t0))
	s.ApplyConverged(2, &sv1.RolloutConvergedEntry{Rollout: "r1", Generation: 1, Nodes: 2, StampedAt: timestamppb.New(t0)})
	sp := bgSpec("r2")
	sp.Service = "api"
	s.ApplyIntent(3, applyEntry("i2", sp, t0))
	s.ApplyIntent(4, abortEntry("i3", "r2", t0))

	snap := s.Snapshot()
	b, err := proto.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var decoded sv1.StateSnapshot
	if err := proto.Unmarshal(b, &decoded); err != nil {
		t.Fatal(err)
	}
	restored, err := FromSnapshot(&decoded)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(snap, restored.Snapshot()) {
		t.Fatal("snapshot round trip changed state")
	}
	if len(snap.GetServices()) != 2 || len(snap.GetRollouts()) != 2 || len(snap.GetIntents()) != 3 {
		t.Fatalf("snapshot not populated: %v", snap)
	}
	// The restored state behaves the same: a duplicate is still known.
	if a := restored.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0)); !a.Result.GetDuplicate() {
		t.Fatal("restored state forgot processed intents")
	}
}

func TestState_FromSnapshotRefusesDuplicates(t *testing.T) {
	snap := &sv1.StateSnapshot{Rollouts: []*sv1.Rollout{{Id: "a"}, {Id: "a"}}}
	if _, err := FromSnapshot(snap); err == nil {
		t.Fatal("accepted duplicate rollouts")
	}
}

func canarySpec(name string) *sv1.RolloutSpec {
	sp := bgSpec(name)
	sp.Strategy = &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
		{Kind: &sv1.Step_SetWeight{SetWeight: 10}},
		{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{}}},
		{Kind: &sv1.Step_SetWeight{SetWeight: 50}},
	}}}}
	sp.Waves = []*sv1.WaveSpec{
		{Name: "canary", Selector: map[string]string{"tier": "canary"}, BasisPoints: 10000},
		{Name: "rest", BasisPoints: 10000, ManualGate: true},
	}
	return sp
}

func control(id, rollout string, action func(*sv1.RolloutControl) any) *sv1.IntentEntry {
	c := &sv1.RolloutControl{Rollout: rollout}
	in := &sv1.Intent{Id: id, Operator: "cy"}
	switch a := action(c).(type) {
	case *sv1.Intent_PauseRollout:
		in.Action = a
	case *sv1.Intent_ResumeRollout:
		in.Action = a
	case *sv1.Intent_ApproveRollout:
		in.Action = a
	case *sv1.Intent_UndoRollout:
		in.Action = a
	case *sv1.Intent_RetryRollout:
		in.Action = a
	}
	return &sv1.IntentEntry{Intent: in, StampedAt: timestamppb.New(t0)}
}

func weightsOf(t *testing.T, ds *sv1.DesiredState, labels map[string]string) map[string]uint32 {
	t.Helper()
	w, _, ok := desired.Evaluate(ds, "node-x", labels)
	if !ok {
		return nil
	}
	return w
}

func TestState_CanaryWavesDeriveWeights(t *testing.T) {
	s := New()
	canaryNode := map[string]string{"tier": "canary"}
	if a := s.ApplyIntent(1, applyEntry("i1", canarySpec("c1"), t0)); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	ds := s.Desired("web")
	if w := weightsOf(t, ds, canaryNode); w["green"] != 10 || w["blue"] != 90 {
		t.Fatalf("canary node at step 0: %v", w)
	}
	if w := weightsOf(t, ds, nil); w != nil {
		t.Fatalf("a node of a later wave is touched: %v", w)
	}
	// Advancing to the pause changes no weight: no new generation.
	if ch := s.ApplyAdvance(2, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromWave: 0, FromStep: 0, ToWave: 0, ToStep: 1, StampedAt: timestamppb.New(t0)}); ch != nil {
		t.Fatalf("pause step changed %v", ch)
	}
	if g := s.Desired("web").GetGeneration(); g != 1 {
		t.Fatalf("generation %d after a step that changes no weight", g)
	}
	// A stale advance (from a position the rollout left) is a no-op.
	if ch := s.ApplyAdvance(3, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromWave: 0, FromStep: 0, ToWave: 0, ToStep: 2}); ch != nil || s.Rollout("c1").GetStep() != 1 {
		t.Fatal("stale advance applied")
	}
	s.ApplyAdvance(4, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromWave: 0, FromStep: 1, ToWave: 0, ToStep: 2, StampedAt: timestamppb.New(t0)})
	if w := weightsOf(t, s.Desired("web"), canaryNode); w["green"] != 50 || s.Desired("web").GetGeneration() != 4 {
		t.Fatalf("step 2: %v gen %d", w, s.Desired("web").GetGeneration())
	}
	// Wave done: the canary wave goes to 100, the next wave is still untouched.
	s.ApplyAdvance(5, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromWave: 0, FromStep: 2, ToWave: 0, ToStep: 3, StampedAt: timestamppb.New(t0)})
	if w := weightsOf(t, s.Desired("web"), canaryNode); w["green"] != 100 {
		t.Fatalf("finished wave: %v", w)
	}
	s.ApplyAdvance(6, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromWave: 0, FromStep: 3, ToWave: 1, ToStep: 0, StampedAt: timestamppb.New(t0)})
	if w := weightsOf(t, s.Desired("web"), nil); w["green"] != 10 {
		t.Fatalf("second wave at its first step: %v", w)
	}
	// A guardrail breach sends every node back, in any wave or none.
	a := s.ApplyRollback(7, &sv1.RollbackEntry{Rollout: "c1", Generation: 6, Evidence: &sv1.Evidence{Guardrail: "error_rate", Summary: "bad"}, StampedAt: timestamppb.New(t0)})
	if len(a) != 1 {
		t.Fatal("rollback changed nothing")
	}
	for _, labels := range []map[string]string{canaryNode, nil, {"tier": "other"}} {
		if w := weightsOf(t, s.Desired("web"), labels); w["blue"] != 100 || w["green"] != 0 {
			t.Fatalf("after rollback, node %v: %v", labels, w)
		}
	}
	r := s.Rollout("c1")
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK || r.GetEvidence().GetGuardrail() != "error_rate" || !strings.Contains(r.GetReason(), "error_rate") {
		t.Fatalf("rollout after breach: %v", r)
	}
}

func TestState_RollbackForStaleGenerationIsNoop(t *testing.T) {
	s := New()
	s.ApplyIntent(1, applyEntry("i1", canarySpec("c1"), t0))
	s.ApplyAdvance(2, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromWave: 0, FromStep: 0, ToWave: 0, ToStep: 1})
	s.ApplyAdvance(3, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromWave: 0, FromStep: 1, ToWave: 0, ToStep: 2})
	if ch := s.ApplyRollback(4, &sv1.RollbackEntry{Rollout: "c1", Generation: 1}); ch != nil {
		t.Fatal("rollback judged on an old generation applied")
	}
}

func TestState_PauseResumeApprovePromoteUndo(t *testing.T) {
	s := New()
	s.ApplyIntent(1, applyEntry("i1", canarySpec("c1"), t0))
	pause := func(c *sv1.RolloutControl) any { return &sv1.Intent_PauseRollout{PauseRollout: c} }
	resume := func(c *sv1.RolloutControl) any { return &sv1.Intent_ResumeRollout{ResumeRollout: c} }
	approve := func(c *sv1.RolloutControl) any { return &sv1.Intent_ApproveRollout{ApproveRollout: c} }
	undo := func(c *sv1.RolloutControl) any { return &sv1.Intent_UndoRollout{UndoRollout: c} }

	if a := s.ApplyIntent(2, control("p1", "c1", pause)); !a.Result.GetAccepted() || !s.Rollout("c1").GetPaused() {
		t.Fatalf("pause: %v", a.Result)
	}
	if a := s.ApplyIntent(3, control("p2", "c1", pause)); a.Result.GetCode() != CodeConflict {
		t.Fatalf("second pause: %v", a.Result)
	}
	// A paused rollout does not advance.
	if ch := s.ApplyAdvance(4, &sv1.RolloutAdvanceEntry{Rollout: "c1", ToStep: 1}); ch != nil || s.Rollout("c1").GetStep() != 0 {
		t.Fatal("paused rollout advanced")
	}
	s.ApplyIntent(5, control("p3", "c1", resume))
	s.ApplyAdvance(6, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromStep: 0, ToStep: 1})
	if a := s.ApplyIntent(7, control("a1", "c1", approve)); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if r := s.Rollout("c1"); r.GetApprovedWave() != 0 || r.GetApprovedStep() != 1 {
		t.Fatalf("approval recorded at %d/%d", r.GetApprovedWave(), r.GetApprovedStep())
	}
	// Undo is only for completed rollouts.
	if a := s.ApplyIntent(8, control("u1", "c1", undo)); a.Result.GetCode() != CodeConflict {
		t.Fatalf("undo in flight: %v", a.Result)
	}
	promote := &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "pr1",
		Action: &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: "c1", Full: true}}}}
	if a := s.ApplyIntent(9, promote); !a.Result.GetAccepted() || len(a.Changed) != 1 {
		t.Fatalf("promote: %v", a)
	}
	if p := s.Rollout("c1").GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED {
		t.Fatalf("phase %v", p)
	}
	for _, labels := range []map[string]string{{"tier": "canary"}, nil} {
		if w := weightsOf(t, s.Desired("web"), labels); w["green"] != 100 {
			t.Fatalf("promoted, node %v: %v", labels, w)
		}
	}
	s.ApplyFinish(10, &sv1.RolloutFinishEntry{Rollout: "c1"})
	if a := s.ApplyIntent(11, control("u2", "c1", undo)); !a.Result.GetAccepted() {
		t.Fatalf("undo: %v", a.Result)
	}
	if w := weightsOf(t, s.Desired("web"), nil); w["blue"] != 100 {
		t.Fatalf("after undo: %v", w)
	}
}
