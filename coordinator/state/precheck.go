package state

import (
	"errors"
	"fmt"

	"github.com/switchyard/switchyard/coordinator/acl"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Checks the leader makes against the current state before it commits an
// intent. They are refusals added after intents of their kind were in
// logs: inside Apply they would change what old entries did on replay, and
// a replica running the version before would accept what this one refuses.
// The leader takes intents one at a time, and what they check changes only
// through intents, so the state they read is the state the intent will
// apply to.

// CheckNewRollout refuses a rollout whose service is not free or whose
// from is not the backend the service serves now: the to of the last
// rollout if it completed, its from if it was rolled back. A service with
// no rollout yet takes any from. It returns the refusal code with the
// error; the state machine refuses the same rollout on its own where it
// always did.
func (s *State) CheckNewRollout(sp *sv1.RolloutSpec) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	last := s.rollouts[s.services[sp.GetService()].GetActiveRollout()]
	if last == nil || s.rollouts[sp.GetName()] != nil {
		return "", nil
	}
	var serves string
	switch p := last.GetPhase(); p {
	case sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
		serves = last.GetSpec().GetTo()
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
		serves = last.GetSpec().GetFrom()
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK:
		return CodeConflict, fmt.Errorf("spec.service: %q is in rollout %q (rolling-back); the service is free once the rollback is confirmed, "+
			"when every live node applied it (silent nodes are not waited for, so no action is needed): follow it with `switchyard rollout status %s`",
			sp.GetService(), last.GetId(), last.GetId())
	default:
		return CodeConflict, fmt.Errorf("spec.service: %q is in rollout %q (%s); abort it or wait for it to finish",
			sp.GetService(), last.GetId(), PhaseName(p))
	}
	if sp.GetFrom() != serves {
		return CodeConflict, fmt.Errorf("spec.from: %q, but service %q serves %q now (rollout %q %s); a rollout moves traffic away from the backend the service serves: set from: %s",
			sp.GetFrom(), sp.GetService(), serves, last.GetId(), PhaseName(last.GetPhase()), serves)
	}
	return "", nil
}

// CheckGates refuses, under a two-person policy that requires gates on the
// spec's service, a new rollout with a wave that would take all of its
// traffic without an approval: without the requirement, the gates are the
// ones the spec's author chose to declare. A wave passes with a
// manualGate, or with a pause that waits for approval (`pause: {}`) before
// the wave's new backend has all the traffic. It returns the refusal code
// with the error.
func (s *State) CheckGates(sp *sv1.RolloutSpec) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	pol := s.acl.GetPolicy()
	if s.rollouts[sp.GetName()] != nil || !acl.HasAdmin(s.acl) || !pol.GetRequireGates() || !acl.TwoPersonApplies(pol, sp.GetService()) {
		return "", nil
	}
	for i, w := range spec.Compile(sp) {
		if w.Wave.GetManualGate() || approvedBeforeFull(w.Steps) {
			continue
		}
		return CodeTwoPerson, fmt.Errorf("spec.waves[%d]: wave %q would take all of service %q's traffic without an approval (policy two-person rule: %d approval(s) from approvers other than the author on %q, a gate on every wave); "+
			"give the wave manualGate: true (without waves: waves: [{name: all, manualGate: true}]) or a pause: {} step before its traffic reaches 100",
			i, w.Wave.GetName(), sp.GetService(), pol.GetApprovals(), patternOr(pol.GetApprovalServices()))
	}
	return "", nil
}

// approvedBeforeFull reports whether steps wait for an approval (an
// untimed pause) while the new backend has less than all the traffic.
func approvedBeforeFull(steps []*sv1.Step) bool {
	for i, st := range steps {
		if p := st.GetPause(); p != nil && p.GetDuration() == nil && spec.WeightAt(steps, i) < 100 {
			return true
		}
	}
	return false
}

// CheckPolicyRevision refuses a policy change made from a policy that was
// set again since it was read: the change carries every field of the policy,
// so committing it would silently undo the other admin's change. A change
// that names no revision (from clients before the field) is not checked and
// replaces the policy as it always did.
func (s *State) CheckPolicyRevision(c *sv1.AclChange) (string, error) {
	if c.GetPolicy() == nil || c.PolicyRevision == nil {
		return "", nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if read, now := c.GetPolicyRevision(), s.acl.GetPolicyRevision(); read != now {
		return CodeConflict, fmt.Errorf("acl.policy_revision: the policy was read at revision %d and changed since (revision %d, by another admin); "+
			"read it again with `switchyard acl list` and repeat the change: `switchyard acl policy` does both", read, now)
	}
	return "", nil
}

// CheckAclRevoke refuses a revoke that would leave no principal able to
// change roles and policy: the state machine keeps some admin, but an
// admin on a narrower pattern than "*" cannot grant or revoke anything, and
// while it holds its grant no bootstrap is taken either, so nobody could
// ever change the roles again. It returns the refusal code with the error.
func (s *State) CheckAclRevoke(c *sv1.AclChange) (string, error) {
	r := c.GetRevoke()
	if r == nil {
		return "", nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if !acl.Administered(s.acl) {
		return "", nil
	}
	next, ok := revoked(s.acl, r)
	if !ok || acl.Administered(next) {
		return "", nil // refused by the state machine, or harmless
	}
	return CodeConflict, errors.New("acl.revoke: that would leave no admin on \"*\", and only an admin on every service can change roles and policy " +
		"(an admin on a narrower pattern holds every role on its services only); grant admin on \"*\" to another key first: " +
		"switchyard acl grant --key KEY --name NAME --role admin --services '*'")
}

// CheckAuthorName refuses, under a two-person policy, an approve or promote
// signed by a key enrolled under the name of the rollout's author. The
// state machine tells the author by key; an author whose key was replaced
// (the old one revoked, a new one granted under the same name, which a key
// allows only once the old key no longer holds it) would otherwise count
// as another person. It returns the refusal code with the error.
func (s *State) CheckAuthorName(signer string, in *sv1.Intent) (string, error) {
	var id, verb string
	switch {
	case in.GetApproveRollout() != nil:
		id, verb = in.GetApproveRollout().GetRollout(), "approve"
	case in.GetPromoteRollout() != nil:
		id, verb = in.GetPromoteRollout().GetRollout(), "promote"
	default:
		return "", nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	r := s.rollouts[id]
	if r == nil || signer == "" || r.GetAuthorKey() == "" || signer == r.GetAuthorKey() {
		return "", nil // the state machine answers these in its own words
	}
	pol := s.acl.GetPolicy()
	if !acl.HasAdmin(s.acl) || !acl.TwoPersonApplies(pol, r.GetSpec().GetService()) {
		return "", nil
	}
	p := acl.Find(s.acl, signer)
	if p == nil || p.GetName() != r.GetOperator() {
		return "", nil
	}
	return CodeTwoPerson, fmt.Errorf("%s_rollout.rollout: %q applied rollout %q (with key %s) and may not %s it with another key, %s (policy two-person rule: %d approval(s) from approvers other than the author on %q)",
		verb, p.GetName(), r.GetId(), r.GetAuthorKey(), verb, signer, pol.GetApprovals(), patternOr(pol.GetApprovalServices()))
}
