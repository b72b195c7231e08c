package state

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func hooked(name string) *sv1.RolloutSpec {
	sp := bgSpec(name)
	sp.Hooks = &sv1.HooksSpec{
		Webhooks: []*sv1.Webhook{
			{Name: "pager", Point: sv1.HookPoint_HOOK_POINT_ROLLBACK, Url: "http://x/p", Timeout: durationpb.New(time.Second)},
			{Name: "chat", Point: sv1.HookPoint_HOOK_POINT_POST_ROLLOUT, Url: "http://x/c", Timeout: durationpb.New(time.Second)},
		},
		Agent: &sv1.AgentHooks{PreTraffic: []string{"warm"}},
	}
	return sp
}

func calls(r *sv1.Rollout, key string) []*sv1.HookCall {
	var out []*sv1.HookCall
	for _, c := range r.GetHookCalls() {
		if c.GetKey() == key {
			out = append(out, c)
		}
	}
	return out
}

func TestState_AbortMakesRollbackWebhooksDueOnce(t *testing.T) {
	s := New()
	s.ApplyIntent(7, applyEntry("i1", hooked("r1"), t0))
	if d := s.Desired("web"); d.GetAgentHooks().GetPreTraffic()[0] != "warm" {
		t.Fatalf("desired state lacks the agent hooks: %v", d)
	}
	s.ApplyIntent(9, abortEntry("i2", "r1", t0.Add(time.Second)))
	r := s.Rollout("r1")
	got := calls(r, KeyRollback)
	if len(got) != 1 || got[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_PENDING || got[0].GetWebhook() != "pager" || got[0].GetGeneration() != 9 {
		t.Fatalf("rollback calls %v", got)
	}
	if len(calls(r, KeyPostRollout)) != 0 {
		t.Fatal("post-rollout webhook due on an abort")
	}
	// A guardrail rollback judged on the old generation is a no-op and
	// makes nothing due again.
	s.ApplyRollback(10, &sv1.RollbackEntry{Rollout: "r1", Generation: 7, StampedAt: timestamppb.New(t0)})
	if n := len(calls(s.Rollout("r1"), KeyRollback)); n != 1 {
		t.Fatalf("%d rollback calls", n)
	}
	if p := s.PendingCalls(); len(p) != 1 || p[0].Webhook.GetName() != "pager" {
		t.Fatalf("pending %v", p)
	}
}

func TestState_FinishMakesPostRolloutWebhooksDue(t *testing.T) {
	s := New()
	s.ApplyIntent(7, applyEntry("i1", hooked("r1"), t0))
	s.ApplyAdvance(8, &sv1.RolloutAdvanceEntry{Rollout: "r1", FromWave: 0, FromStep: 0, Promote: true, StampedAt: timestamppb.New(t0)})
	s.ApplyFinish(9, &sv1.RolloutFinishEntry{Rollout: "r1", StampedAt: timestamppb.New(t0)})
	r := s.Rollout("r1")
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
		t.Fatalf("phase %v", r.GetPhase())
	}
	if got := calls(r, KeyPostRollout); len(got) != 1 || got[0].GetWebhook() != "chat" {
		t.Fatalf("post-rollout calls %v", got)
	}
	s.ApplyHookResult(10, &sv1.HookResultEntry{Rollout: "r1", Key: KeyPostRollout, Webhook: "chat", Seq: 1, Ok: false, Detail: "500", StampedAt: timestamppb.New(t0)})
	if p := s.Rollout("r1").GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
		t.Fatalf("a failed notifying webhook changed the phase to %v", p)
	}
	if len(s.PendingCalls()) != 0 {
		t.Fatal("answered call still pending")
	}
}

func TestState_OperatorPromoteCancelsAPendingGate(t *testing.T) {
	s := New()
	sp := hooked("r1")
	sp.Hooks.Webhooks = append(sp.Hooks.Webhooks, &sv1.Webhook{Name: "load", Point: sv1.HookPoint_HOOK_POINT_PRE_PROMOTION,
		Url: "http://x/l", Gating: true, Timeout: durationpb.New(time.Second), Recheck: durationpb.New(time.Second)})
	s.ApplyIntent(7, applyEntry("i1", sp, t0))
	s.ApplyHookDue(8, &sv1.HookDueEntry{Rollout: "r1", Key: KeyPrePromotion, Webhooks: []string{"load"}, Generation: 7, StampedAt: timestamppb.New(t0)})
	if len(s.PendingCalls()) != 1 {
		t.Fatal("gate call not due")
	}
	s.ApplyIntent(9, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i2", Operator: "ana",
		Action: &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: "r1", Full: true}}}})
	got := calls(s.Rollout("r1"), KeyPrePromotion)
	if len(got) != 1 || got[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_CANCELLED {
		t.Fatalf("gate calls after an operator's promote %v", got)
	}
	if len(s.PendingCalls()) != 0 {
		t.Fatal("a cancelled gate is still to be called")
	}
	// The answer of a call that was in flight counts for nothing.
	s.ApplyHookResult(10, &sv1.HookResultEntry{Rollout: "r1", Key: KeyPrePromotion, Webhook: "load", Seq: 1, Ok: false, StampedAt: timestamppb.New(t0)})
	if r := s.Rollout("r1"); r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED || calls(r, KeyPrePromotion)[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_CANCELLED {
		t.Fatalf("late answer changed the rollout: %v", r)
	}
}

// An operator's abort of a rollout with a rollback webhook writes two
// history lines: the rollback with its reason, then the webhook made due.
// The intent's audit record keeps the reason, not only the last line, from
// rules 2 on; an entry from before replays as it applied.
func TestAudit_AbortOfAHookedRolloutKeepsTheReason(t *testing.T) {
	abort := func(rules uint32) *sv1.AuditRecord {
		s := New()
		s.ApplyIntent(7, applyEntry("i1", hooked("r1"), t0))
		ab := abortEntry("i2", "r1", t0.Add(time.Second))
		ab.GetIntent().GetAbortRollout().Reason = "green corrupts carts"
		ab.Rules = rules
		s.ApplyIntent(9, ab)
		return lastAudit(t, s)
	}
	if rec := abort(Rules); rec.GetIntentId() != "i2" || !strings.Contains(rec.GetMessage(), "rolling back: green corrupts carts") {
		t.Fatalf("the abort's audit record says %q; want the reason", rec.GetMessage())
	}
	if rec := abort(1); strings.Contains(rec.GetMessage(), "green corrupts carts") || rec.GetMessage() == "" {
		t.Fatalf("an abort committed under rules 1 replays with record %q; want its last history line, as it applied", rec.GetMessage())
	}
	s := New()

	// The kill switch's record names the drills it ended and why.
	sp := &sv1.DrillSpec{Name: "d1", Service: "web", MaxNodes: 2, MaxBasisPoints: 10000, Duration: durationpb.New(time.Minute),
		Fault: &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 1}}}}
	s.ApplyIntent(10, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i3", Operator: "sre",
		Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}})
	s.ApplyDrillStart(11, &sv1.DrillStartEntry{Drill: "d1", Targets: []string{"a"}, StampedAt: timestamppb.New(t0)})
	s.ApplyIntent(12, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Rules: Rules, Intent: &sv1.Intent{Id: "i4", Operator: "sre",
		Action: &sv1.Intent_StopAllDrills{StopAllDrills: &sv1.StopAllDrills{Reason: "pager storm"}}}})
	if rec := lastAudit(t, s); rec.GetIntentId() != "i4" || !strings.Contains(rec.GetMessage(), "drill d1 aborted: pager storm") {
		t.Fatalf("the kill switch's audit record says %q; want the drill it ended and why", rec.GetMessage())
	}
}

// A guardrail rollback with a rollback webhook writes three history lines
// (the rollback, the webhook due, its answer): under rules 5 only the
// first is audited as the rollback, with its evidence; an entry from
// before replays as it applied, each line a rollback record.
func TestAudit_OneRollbackIsOneRollbackRecord(t *testing.T) {
	kinds := func(rules uint32) []string {
		s := New()
		s.ApplyIntent(7, applyEntry("i1", hooked("r1"), t0))
		before := len(s.AuditEntries(0, 0))
		s.ApplyRollback(8, &sv1.RollbackEntry{Rollout: "r1", Generation: 7, StampedAt: timestamppb.New(t0.Add(time.Second)), Rules: rules,
			Evidence: &sv1.Evidence{Guardrail: "error_rate", Summary: "green 5% vs blue 0.1%"}})
		call := calls(s.Rollout("r1"), KeyRollback)
		if len(call) != 1 {
			t.Fatalf("rollback calls %v", call)
		}
		s.ApplyHookResult(9, &sv1.HookResultEntry{Rollout: "r1", Key: KeyRollback, Webhook: "pager", Seq: call[0].GetSeq(), Ok: true,
			Attempts: 1, Detail: "200 OK", StampedAt: timestamppb.New(t0.Add(2 * time.Second)), Rules: rules})
		var out []string
		for _, e := range s.AuditEntries(0, 0)[before:] {
			rec, err := audit.Open(e)
			if err != nil {
				t.Fatal(err)
			}
			k := rec.GetKind()
			if rec.GetEvidence() != nil {
				k += "+evidence"
			}
			out = append(out, k+": "+rec.GetMessage())
		}
		return out
	}
	got := kinds(Rules)
	want := []string{
		"rollback+evidence: rolling back: guardrail error_rate breached: green 5% vs blue 0.1%",
		"decision: webhook pager due at rollback (call 1)",
		"decision: webhook pager at rollback succeeded after 1 attempt(s): 200 OK",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("audit records of one rollback:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, k := range kinds(4) {
		if !strings.HasPrefix(k, "rollback+evidence: ") {
			t.Fatalf("an entry from before rules 5 replays with record %q; want every line a rollback record, as it applied", k)
		}
	}
}
