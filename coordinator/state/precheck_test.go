package state

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func canaryFrom(name, from, to string) *sv1.RolloutSpec {
	return &sv1.RolloutSpec{Name: name, Service: "web", From: from, To: to,
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{{Kind: &sv1.Step_SetWeight{SetWeight: 10}}}}}}}
}

func TestState_CheckNewRolloutWantsFromToBeWhatTheServiceServes(t *testing.T) {
	completed := func() *State {
		s := New()
		s.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0))
		s.ApplyIntent(6, &sv1.IntentEntry{StampedAt: timestamppb.New(t0.Add(time.Second)), Intent: &sv1.Intent{Id: "i2",
			Action: &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: "r1", Full: true}}}})
		s.ApplyFinish(7, &sv1.RolloutFinishEntry{Rollout: "r1", StampedAt: timestamppb.New(t0.Add(2 * time.Second))})
		return s
	}
	rolledBack := func() *State {
		s := New()
		s.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0))
		s.ApplyIntent(6, abortEntry("i2", "r1", t0))
		s.ApplyConverged(7, &sv1.RolloutConvergedEntry{Rollout: "r1", Generation: 6, StampedAt: timestamppb.New(t0)})
		return s
	}
	rollingBack := func() *State {
		s := New()
		s.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0))
		s.ApplyIntent(6, abortEntry("i2", "r1", t0))
		return s
	}
	for _, c := range []struct {
		name     string
		st       func() *State
		sp       *sv1.RolloutSpec
		refusal  string
		wantCode string
	}{
		{"no rollout yet: any from", New, canaryFrom("r2", "green", "blue"), "", ""},
		{"completed: from its to", completed, canaryFrom("r2", "green", "blue"), "", ""},
		{"completed: from its from", completed, canaryFrom("r2", "blue", "green"),
			`spec.from: "blue", but service "web" serves "green" now (rollout "r1" completed)`, CodeConflict},
		{"rolled back: from its from", rolledBack, canaryFrom("r2", "blue", "green"), "", ""},
		{"rolled back: from its to", rolledBack, canaryFrom("r2", "green", "blue"),
			`spec.from: "green", but service "web" serves "blue" now (rollout "r1" rolled-back)`, CodeConflict},
		{"rolling back: no impossible advice", rollingBack, canaryFrom("r2", "blue", "green"),
			`"r1" (rolling-back); the service is free once the rollback is confirmed`, CodeConflict},
		{"another service", completed, &sv1.RolloutSpec{Name: "r2", Service: "api", From: "blue", To: "green"}, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, err := c.st().CheckNewRollout(c.sp)
			if c.refusal == "" {
				if err != nil {
					t.Fatalf("refused: %s %v", code, err)
				}
				return
			}
			if err == nil || code != c.wantCode || !strings.Contains(err.Error(), c.refusal) {
				t.Fatalf("got %q %v; want %s saying %q", code, err, c.wantCode, c.refusal)
			}
			if strings.Contains(err.Error(), "abort it") {
				t.Errorf("advice the operator cannot follow: %v", err)
			}
		})
	}
}

// Two admins change the policy from the same read: the second, built from
// the older read, is refused instead of turning the two-person rule off.
func TestAcl_PolicyChangeFromAStaleReadIsRefused(t *testing.T) {
	s, idx := teamState(t)
	read := s.Acl() // admin B's read, as `acl policy` does
	a := s.ApplyIntent(idx+1, aclEntry("pA", keyAdmin, &sv1.AclChange{PolicyRevision: proto.Uint64(read.GetPolicyRevision()),
		Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 2, ApprovalServices: "*"}}}))
	if !a.Result.GetAccepted() {
		t.Fatalf("A: %v", a.Result)
	}
	if got := s.Acl().GetPolicyRevision(); got != idx+1 {
		t.Fatalf("policy revision %d, want the index of A's change %d", got, idx+1)
	}
	pol := proto.Clone(read.GetPolicy()).(*sv1.AclPolicy)
	if pol == nil {
		pol = &sv1.AclPolicy{}
	}
	pol.DrillMaxNodes = 5
	stale := &sv1.AclChange{PolicyRevision: proto.Uint64(read.GetPolicyRevision()), Change: &sv1.AclChange_Policy{Policy: pol}}
	code, err := s.CheckPolicyRevision(stale)
	if code != CodeConflict || err == nil || !strings.Contains(err.Error(), "acl.policy_revision") || !strings.Contains(err.Error(), "read it again") {
		t.Fatalf("stale policy change: %q %v", code, err)
	}
	fresh := proto.Clone(stale).(*sv1.AclChange)
	fresh.PolicyRevision = proto.Uint64(s.Acl().GetPolicyRevision())
	if code, err := s.CheckPolicyRevision(fresh); err != nil {
		t.Fatalf("fresh policy change refused: %s %v", code, err)
	}
	// A change without a revision (an older client) is taken as before.
	old := proto.Clone(stale).(*sv1.AclChange)
	old.PolicyRevision = nil
	if code, err := s.CheckPolicyRevision(old); err != nil {
		t.Fatalf("change without a revision refused: %s %v", code, err)
	}
	// Grants and revokes carry no revision and are never checked.
	if _, err := s.CheckPolicyRevision(&sv1.AclChange{Change: &sv1.AclChange_Grant{Grant: &sv1.AclGrant{}}}); err != nil {
		t.Fatal(err)
	}
}
