// Package acl decides who may do what: operators' roles per service
// pattern and the admins' policies, as pure functions over the replicated
// roles and policy.
package acl

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Roles an operator can hold. Admin holds every other role on every
// service.
const (
	// RoleViewer reads; it authorizes no intent and exists so that a
	// principal can be known (named in audit) without any power.
	RoleViewer = "viewer"
	// RoleDeployer applies, pauses, resumes, aborts, undoes and retries
	// rollouts.
	RoleDeployer = "deployer"
	// RoleApprover approves gates and promotes rollouts.
	RoleApprover = "approver"
	// RoleChaos runs and aborts chaos drills.
	RoleChaos = "chaos"
	// RoleAdmin changes roles and policy, and holds every role.
	RoleAdmin = "admin"
)

// Limits of the admins' policy.
const (
	// MaxApprovals is the most approvals a gate may be made to need.
	MaxApprovals = 10
	// MaxDrillPercent is the largest drill cap in percent: every node.
	MaxDrillPercent = 100
)

// Roles lists the roles in the order the CLI shows them.
var Roles = []string{RoleViewer, RoleDeployer, RoleApprover, RoleChaos, RoleAdmin}

// Errors of Authorize.
var (
	// ErrUnknownKey is a signature by a key no principal holds.
	ErrUnknownKey = errors.New("unknown key")
	// ErrForbidden is a principal without the role an action needs.
	ErrForbidden = errors.New("forbidden")
	// ErrTwoPerson is an approval or promote by the rollout's own author,
	// or one that does not yet gather the approvals the policy asks for.
	ErrTwoPerson = errors.New("two-person rule")
	// ErrOverCap is a drill asking for a larger blast radius than the
	// admins allow.
	ErrOverCap = errors.New("over the admins' blast-radius cap")
)

// CheckRole checks a role name.
func CheckRole(field, role string) error {
	if slices.Contains(Roles, role) {
		return nil
	}
	return fmt.Errorf("%s: role %q: want one of %s", field, role, strings.Join(Roles, ", "))
}

// CheckPattern checks a service pattern ("*", "web-*", "checkout").
func CheckPattern(field, pattern string) error {
	if pattern == "" {
		return fmt.Errorf("%s: a service pattern is required (\"*\" for every service)", field)
	}
	if _, err := path.Match(pattern, "x"); err != nil {
		return fmt.Errorf("%s: pattern %q: %v", field, pattern, err)
	}
	return nil
}

// Find returns the principal holding key, or nil.
func Find(st *sv1.AclState, key string) *sv1.Principal {
	for _, p := range st.GetPrincipals() {
		if p.GetKey() == key {
			return p
		}
	}
	return nil
}

// HasAdmin reports whether any principal is an admin: the roles are then
// enforced.
func HasAdmin(st *sv1.AclState) bool {
	for _, p := range st.GetPrincipals() {
		for _, g := range p.GetGrants() {
			if g.GetRole() == RoleAdmin {
				return true
			}
		}
	}
	return false
}

// Administered reports whether some principal may change roles and
// policy: one holding admin on every service ("*"), which is what
// Authorize asks of an ACL change. An admin on a narrower pattern holds
// every role on its services but cannot grant or revoke anything.
func Administered(st *sv1.AclState) bool {
	for _, p := range st.GetPrincipals() {
		if Holds(p, RoleAdmin, "*") {
			return true
		}
	}
	return false
}

// Holds reports whether p holds role on service; an empty service asks
// whether p holds role on any service.
func Holds(p *sv1.Principal, role, service string) bool {
	for _, g := range p.GetGrants() {
		if g.GetRole() != role && g.GetRole() != RoleAdmin {
			continue
		}
		if service == "" {
			return true
		}
		if ok, _ := path.Match(g.GetServices(), service); ok {
			return true
		}
	}
	return false
}

// Action names what an intent does, as audit records and refusals name it.
func Action(in *sv1.Intent) string {
	switch in.GetAction().(type) {
	case *sv1.Intent_ApplyRollout:
		return "apply_rollout"
	case *sv1.Intent_AbortRollout:
		return "abort_rollout"
	case *sv1.Intent_PauseRollout:
		return "pause_rollout"
	case *sv1.Intent_ResumeRollout:
		return "resume_rollout"
	case *sv1.Intent_ApproveRollout:
		return "approve_rollout"
	case *sv1.Intent_PromoteRollout:
		return "promote_rollout"
	case *sv1.Intent_UndoRollout:
		return "undo_rollout"
	case *sv1.Intent_RetryRollout:
		return "retry_rollout"
	case *sv1.Intent_RunDrill:
		return "run_drill"
	case *sv1.Intent_AbortDrill:
		return "abort_drill"
	case *sv1.Intent_StopAllDrills:
		return "stop_all_drills"
	case *sv1.Intent_Acl:
		switch in.GetAcl().GetChange().(type) {
		case *sv1.AclChange_Grant:
			return "acl_grant"
		case *sv1.AclChange_Revoke:
			return "acl_revoke"
		case *sv1.AclChange_Policy:
			return "acl_policy"
		case *sv1.AclChange_Bootstrap:
			return "acl_bootstrap"
		}
		return "acl"
	}
	return "none"
}

// RoleFor is the role an action needs. stop_all_drills, the kill switch,
// needs chaos or deployer on any service (see Authorize).
func RoleFor(action string) string {
	switch action {
	case "apply_rollout", "abort_rollout", "pause_rollout", "resume_rollout", "undo_rollout", "retry_rollout":
		return RoleDeployer
	case "approve_rollout", "promote_rollout":
		return RoleApprover
	case "run_drill", "abort_drill", "stop_all_drills":
		return RoleChaos
	}
	return RoleAdmin
}

// Who names a principal in messages: its name and the start of its key.
func Who(p *sv1.Principal) string {
	k := p.GetKey()
	if len(k) > 12 {
		k = k[:12] + "…"
	}
	return fmt.Sprintf("%s (%s)", p.GetName(), k)
}

// Authorize checks that the principal holding key may take action on
// service (empty for actions on no one service). It names the role and the
// policy in its refusal.
func Authorize(st *sv1.AclState, key, action, service string) (*sv1.Principal, error) {
	p := Find(st, key)
	if p == nil {
		return nil, fmt.Errorf("%w: no principal holds key %s; an admin enrolls it with `switchyard acl grant --key %s --name NAME --role ROLE`", ErrUnknownKey, short(key), key)
	}
	role := RoleFor(action)
	if Holds(p, role, service) {
		return p, nil
	}
	if action == "stop_all_drills" && Holds(p, RoleDeployer, "") {
		return p, nil
	}
	on := "on service " + quote(service)
	if service == "" {
		on = "on any service"
	}
	return p, fmt.Errorf("%w: %s lacks role %q %s (policy: %s needs role %s)", ErrForbidden, Who(p), role, on, action, role)
}

// TwoPersonApplies reports whether the policy asks approvals of others on
// service.
func TwoPersonApplies(pol *sv1.AclPolicy, service string) bool {
	if pol.GetApprovals() == 0 {
		return false
	}
	pattern := pol.GetApprovalServices()
	if pattern == "" {
		pattern = "*"
	}
	ok, _ := path.Match(pattern, service)
	return ok
}

// CheckDrillCaps refuses a drill whose own caps exceed the admins'.
func CheckDrillCaps(pol *sv1.AclPolicy, sp *sv1.DrillSpec) error {
	if m := pol.GetDrillMaxNodes(); m > 0 && sp.GetMaxNodes() > m {
		return fmt.Errorf("%w: run_drill.spec.maxNodes %d is over the admins' cap of %d nodes (acl policy drill-max-nodes)", ErrOverCap, sp.GetMaxNodes(), m)
	}
	if m := pol.GetDrillMaxPercent(); m > 0 && sp.GetMaxBasisPoints() > m*100 {
		return fmt.Errorf("%w: run_drill.spec.maxPercent %g is over the admins' cap of %d%% (acl policy drill-max-percent)", ErrOverCap, float64(sp.GetMaxBasisPoints())/100, m)
	}
	return nil
}

// CheckChange validates an ACL change before it is committed.
func CheckChange(c *sv1.AclChange) error {
	switch ch := c.GetChange().(type) {
	case *sv1.AclChange_Grant:
		g := ch.Grant
		if g.GetName() == "" {
			return errors.New("acl.grant.name: required")
		}
		if err := CheckRole("acl.grant.role", g.GetRole()); err != nil {
			return err
		}
		return CheckPattern("acl.grant.services", g.GetServices())
	case *sv1.AclChange_Revoke:
		if ch.Revoke.GetKey() == "" {
			return errors.New("acl.revoke.key: required")
		}
		if r := ch.Revoke.GetRole(); r != "" {
			if err := CheckRole("acl.revoke.role", r); err != nil {
				return err
			}
			return CheckPattern("acl.revoke.services", ch.Revoke.GetServices())
		}
		return nil
	case *sv1.AclChange_Policy:
		p := ch.Policy
		if p.GetDrillMaxPercent() > MaxDrillPercent {
			return fmt.Errorf("acl.policy.drill_max_percent: %d: want 0..%d", p.GetDrillMaxPercent(), MaxDrillPercent)
		}
		if p.GetApprovals() > MaxApprovals {
			return fmt.Errorf("acl.policy.approvals: %d: want 0..%d", p.GetApprovals(), MaxApprovals)
		}
		if p.GetRequireGates() && p.GetApprovals() == 0 {
			return errors.New("acl.policy.require_gates (acl policy --require-gates): needs approvals of at least 1; give --require-gates=false with --approvals 0")
		}
		if s := p.GetApprovalServices(); s != "" {
			return CheckPattern("acl.policy.approval_services", s)
		}
		return nil
	case *sv1.AclChange_Bootstrap:
		if ch.Bootstrap.GetName() == "" {
			return errors.New("acl.bootstrap.name: required")
		}
		return nil
	}
	return errors.New("acl: names no change; want grant, revoke, policy or bootstrap")
}

func short(key string) string {
	if len(key) > 12 {
		return key[:12] + "…"
	}
	return key
}

func quote(s string) string { return fmt.Sprintf("%q", s) }
