package state

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A retry issues the rollout's weights again under the entry's index, for
// a completed rollout as for one in flight, and says so in the history;
// a rollout that no longer gives the new backend traffic, or that is not
// the service's latest, is refused with the field named.
func TestState_RetryIssuesTheSameWeightsUnderANewGeneration(t *testing.T) {
	s := New()
	retry := func(c *sv1.RolloutControl) any { return &sv1.Intent_RetryRollout{RetryRollout: c} }
	s.ApplyIntent(7, applyEntry("i1", bgSpec("r1"), t0))
	s.ApplyAdvance(8, &sv1.RolloutAdvanceEntry{Rollout: "r1", Promote: true, StampedAt: timestamppb.New(t0)})
	s.ApplyFinish(9, &sv1.RolloutFinishEntry{Rollout: "r1", StampedAt: timestamppb.New(t0), Held: []string{"edge-2"}})
	if p := s.Rollout("r1").GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
		t.Fatalf("phase %v", p)
	}
	before := s.Desired("web")

	e := control("re1", "r1", retry)
	e.Intent.GetRetryRollout().Reason = "cache node fixed"
	e.StampedAt = timestamppb.New(t0.Add(time.Minute))
	a := s.ApplyIntent(10, e)
	if !a.Result.GetAccepted() || len(a.Changed) != 1 || a.Changed[0] != "web" {
		t.Fatalf("retry: %v, changed %v", a.Result, a.Changed)
	}
	after := s.Desired("web")
	// The same document, phase included: agents run pre-traffic hooks for
	// a rollout moving traffic, which a completed one's document would not
	// say.
	if after.GetPhase() != before.GetPhase() || after.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED || after.GetRolloutId() != "r1" ||
		!after.GetIssuedAt().AsTime().Equal(t0.Add(time.Minute)) {
		t.Fatalf("the retry's document: %v", after)
	}
	if after.GetGeneration() != 10 || s.Rollout("r1").GetGeneration() != 10 || !sameWeights(before, after) {
		t.Fatalf("after the retry: generation %d (rollout %d), weights the same %v", after.GetGeneration(), s.Rollout("r1").GetGeneration(), sameWeights(before, after))
	}
	if s.Rollout("r1").GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
		t.Fatal("a retry changed the phase")
	}
	h := s.Rollout("r1").GetHistory()
	want := "retried: generation 10 issues generation 7's weights again, so nodes a failed pre-traffic hook kept on blue run it again; reason: cache node fixed"
	if last := h[len(h)-1]; last.GetMessage() != want || last.GetOperator() != "cy" {
		t.Fatalf("history %q by %q, want %q", last.GetMessage(), last.GetOperator(), want)
	}

	// Rolled back: nothing to retry.
	s.ApplyIntent(11, abortEntry("ab", "r1", t0.Add(2*time.Minute)))
	snap := proto.Clone(s.Snapshot())
	a = s.ApplyIntent(12, control("re2", "r1", retry))
	if a.Result.GetCode() != CodeConflict || !strings.Contains(a.Result.GetError(), `retry_rollout.rollout: "r1" is rolling-back`) {
		t.Fatalf("retry of a rollout rolling back: %v", a.Result)
	}
	// A refusal changes nothing but the intent's own record.
	got := s.Snapshot()
	got.Intents, snap.(*sv1.StateSnapshot).Intents = nil, nil
	got.AuditHead, snap.(*sv1.StateSnapshot).AuditHead = nil, nil
	got.Audit, snap.(*sv1.StateSnapshot).Audit = nil, nil
	if !proto.Equal(got, snap) {
		t.Fatal("a refused retry changed the state")
	}
	// Another rollout of the service owns it now.
	s.ApplyConverged(13, &sv1.RolloutConvergedEntry{Rollout: "r1", Generation: 11, StampedAt: timestamppb.New(t0)})
	s.ApplyIntent(14, applyEntry("i2", bgSpec("r2"), t0.Add(3*time.Minute)))
	if a := s.ApplyIntent(15, control("re3", "r1", retry)); a.Result.GetCode() != CodeConflict || !strings.Contains(a.Result.GetError(), "no longer the latest rollout") {
		t.Fatalf("retry of an older rollout: %v", a.Result)
	}
	if a := s.ApplyIntent(16, control("re4", "nope", retry)); a.Result.GetCode() != CodeNotFound {
		t.Fatalf("retry of no rollout: %v", a.Result)
	}
}
