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
			after.Intents, before.Intents = nil, nil
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
	s.ApplyConverged(2, &sv1.RolloutConvergedEntry{Rollout: "r1", Generation: 1, Nodes: 1})
	sp := bgSpec("r2")
	sp.From, sp.To = "green", "blue"
	if a := s.ApplyIntent(3, applyEntry("i2", sp, t0)); !a.Result.GetAccepted() {
		t.Fatalf("refused: %v", a.Result)
	}
	// The older rollout can no longer be aborted: it does not own the service.
	if a := s.ApplyIntent(4, abortEntry("i3", "r1", t0)); a.Result.GetCode() != CodeConflict {
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
