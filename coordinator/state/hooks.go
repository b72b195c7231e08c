package state

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Keys of hook calls: the point and, for points that repeat, the position
// the rollout is about to enter.
const (
	KeyPreRollout   = "pre-rollout"
	KeyPrePromotion = "pre-promotion"
	KeyPostRollout  = "post-rollout"
	KeyRollback     = "rollback"
)

// KeyPreWave is the key of the gate before wave (index) starts.
func KeyPreWave(wave int) string { return fmt.Sprintf("pre-wave/%d", wave) }

// KeyPreStep is the key of the gate before step of wave starts.
func KeyPreStep(wave, step int) string { return fmt.Sprintf("pre-step/%d/%d", wave, step) }

// LatestCall returns the newest call of a webhook at a key, or nil.
func LatestCall(r *sv1.Rollout, key, webhook string) *sv1.HookCall {
	var out *sv1.HookCall
	for _, c := range r.GetHookCalls() {
		if c.GetKey() == key && c.GetWebhook() == webhook && (out == nil || c.GetSeq() > out.GetSeq()) {
			out = c
		}
	}
	return out
}

// due makes each named webhook's call at key due, unless one is pending or
// succeeded there. It reports whether it added any.
func (s *State) due(r *sv1.Rollout, key string, webhooks []string, index uint64, at *timestamppb.Timestamp) bool {
	added := false
	for _, name := range webhooks {
		if !slices.ContainsFunc(r.GetSpec().GetHooks().GetWebhooks(), func(w *sv1.Webhook) bool { return w.GetName() == name }) {
			continue
		}
		last := LatestCall(r, key, name)
		switch last.GetOutcome() {
		case sv1.HookOutcome_HOOK_OUTCOME_PENDING, sv1.HookOutcome_HOOK_OUTCOME_SUCCEEDED:
			continue
		}
		r.HookCalls = append(r.HookCalls, &sv1.HookCall{
			Key: key, Webhook: name, Seq: last.GetSeq() + 1, Outcome: sv1.HookOutcome_HOOK_OUTCOME_PENDING,
			DueAt: at, Generation: r.GetGeneration(),
		})
		s.record(r, index, at, "", fmt.Sprintf("webhook %s due at %s (call %d)", name, key, last.GetSeq()+1))
		added = true
	}
	return added
}

// duePoint makes every webhook at a point due at key.
func (s *State) duePoint(r *sv1.Rollout, p sv1.HookPoint, key string, index uint64, at *timestamppb.Timestamp) {
	var names []string
	for _, w := range spec.Webhooks(r.GetSpec(), p) {
		names = append(names, w.GetName())
	}
	s.due(r, key, names, index, at)
}

// cancelGates closes the rollout's unanswered gate calls when it moves on
// without them: asking a gate after the fact would decide nothing.
// Notifying calls stay due.
func (s *State) cancelGates(r *sv1.Rollout, index uint64, at *timestamppb.Timestamp) {
	for _, c := range r.GetHookCalls() {
		if c.GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_PENDING {
			continue
		}
		for _, w := range r.GetSpec().GetHooks().GetWebhooks() {
			if w.GetName() == c.GetWebhook() && w.GetGating() {
				c.Outcome, c.Detail, c.AnsweredAt = sv1.HookOutcome_HOOK_OUTCOME_CANCELLED, "not called: the rollout moved on first", at
				s.record(r, index, at, "", fmt.Sprintf("webhook %s at %s cancelled: the rollout moved on first", c.GetWebhook(), c.GetKey()))
			}
		}
	}
}

// ApplyHookDue makes webhook calls due, as the leader's controller decided
// at a gate. It is a no-op when the rollout moved on since.
func (s *State) ApplyHookDue(index uint64, e *sv1.HookDueEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil || r.GetGeneration() != e.GetGeneration() || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		return
	}
	s.due(r, e.GetKey(), e.GetWebhooks(), index, e.GetStampedAt())
}

// ApplyHookResult records a webhook call's answer. A failed gating call
// whose webhook says rollback rolls the rollout back in this entry, so the
// outcome is in the log before anything acts on it.
func (s *State) ApplyHookResult(index uint64, e *sv1.HookResultEntry) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil {
		return nil
	}
	var call *sv1.HookCall
	for _, c := range r.GetHookCalls() {
		if c.GetKey() == e.GetKey() && c.GetWebhook() == e.GetWebhook() && c.GetSeq() == e.GetSeq() {
			call = c
		}
	}
	if call == nil || call.GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_PENDING {
		return nil // answered already: a second answer never counts
	}
	s.rollbackRules = e.GetRules()
	defer func() { s.rollbackRules = 0 }()
	call.Outcome = sv1.HookOutcome_HOOK_OUTCOME_FAILED
	verdict := "failed"
	if e.GetOk() {
		call.Outcome, verdict = sv1.HookOutcome_HOOK_OUTCOME_SUCCEEDED, "succeeded"
	}
	call.Attempts, call.Detail, call.AnsweredAt = e.GetAttempts(), e.GetDetail(), e.GetStampedAt()
	s.record(r, index, e.GetStampedAt(), "", fmt.Sprintf("webhook %s at %s %s after %d attempt(s): %s",
		e.GetWebhook(), e.GetKey(), verdict, e.GetAttempts(), e.GetDetail()))
	if e.GetOk() || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		return nil
	}
	var hook *sv1.Webhook
	for _, w := range r.GetSpec().GetHooks().GetWebhooks() {
		if w.GetName() == e.GetWebhook() {
			hook = w
		}
	}
	if !hook.GetGating() {
		return nil
	}
	switch hook.GetOnFailure() {
	case sv1.HookFailure_HOOK_FAILURE_PAUSE:
		if !r.GetPaused() {
			r.Paused = true
			r.PauseReason = fmt.Sprintf("gating webhook %s at %s failed (%s)", e.GetWebhook(), e.GetKey(), e.GetDetail())
			s.record(r, index, e.GetStampedAt(), "", "paused: "+r.PauseReason+"; resume to ask it again")
		}
		return nil
	case sv1.HookFailure_HOOK_FAILURE_ROLLBACK:
	default:
		return nil
	}
	svc := s.services[r.GetSpec().GetService()]
	if svc.GetActiveRollout() != r.GetId() {
		return nil
	}
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK
	r.HoldStart, r.StartGate = false, false
	s.cancelGates(r, index, e.GetStampedAt())
	r.Evidence = &sv1.Evidence{Guardrail: "webhook", Summary: fmt.Sprintf("gating webhook %s at %s failed: %s", e.GetWebhook(), e.GetKey(), e.GetDetail())}
	r.Reason = r.Evidence.GetSummary()
	changed := s.rederive(svc, r, index, e.GetStampedAt())
	s.recordRollback(r, index, e.GetStampedAt())
	s.duePoint(r, sv1.HookPoint_HOOK_POINT_ROLLBACK, KeyRollback, index, e.GetStampedAt())
	return changed
}

// ApplyStart lets a rollout its gating pre-rollout webhooks held move its
// first traffic. A rollout still waiting for the approval of its first
// wave's manual gate stays held.
func (s *State) ApplyStart(index uint64, e *sv1.RolloutStartEntry) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil || !r.GetHoldStart() || r.GetStartGate() || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		return nil
	}
	svc := s.services[r.GetSpec().GetService()]
	r.HoldStart = false
	r.StepStartedAt = e.GetStampedAt()
	changed := s.rederive(svc, r, index, e.GetStampedAt())
	s.record(r, index, e.GetStampedAt(), "", "pre-rollout gates passed: "+s.position(r))
	return changed
}

// PendingCall is a webhook call due and not answered, with what the leader
// needs to make it.
type PendingCall struct {
	Rollout *sv1.Rollout
	Call    *sv1.HookCall
	Webhook *sv1.Webhook
}

// PendingCalls lists every due, unanswered webhook call, oldest first.
func (s *State) PendingCalls() []PendingCall {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []PendingCall
	for _, id := range sortedKeys(s.rollouts) {
		r := s.rollouts[id]
		for _, c := range r.GetHookCalls() {
			if c.GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_PENDING {
				continue
			}
			for _, w := range r.GetSpec().GetHooks().GetWebhooks() {
				if w.GetName() == c.GetWebhook() {
					rc := proto.Clone(r).(*sv1.Rollout)
					out = append(out, PendingCall{Rollout: rc, Call: proto.Clone(c).(*sv1.HookCall), Webhook: proto.Clone(w).(*sv1.Webhook)})
				}
			}
		}
	}
	return out
}
