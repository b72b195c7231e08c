package state

import (
	"errors"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/coordinator/acl"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Result codes of intents refused by the roles and policies.
const (
	// CodeUnsigned refuses an intent with no verified signer once the
	// cluster has an admin.
	CodeUnsigned = "unsigned"
	// CodeUnknownKey refuses a signature by a key no principal holds.
	CodeUnknownKey = "unknown_key"
	// CodeBadSignature refuses a signature that does not verify.
	CodeBadSignature = "bad_signature"
	// CodeForbidden refuses a principal without the role the action needs.
	CodeForbidden = "forbidden"
	// CodeTwoPerson refuses an approval or promote the two-person rule
	// does not allow.
	CodeTwoPerson = "two_person"
	// CodeNothingToApprove refuses an approval where no gate waits.
	CodeNothingToApprove = "nothing_to_approve"
)

// Acl returns a copy of the roles and policy.
func (s *State) Acl() *sv1.AclState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return proto.Clone(s.acl).(*sv1.AclState)
}

// Enforcing reports whether the cluster has an admin, so that every intent
// must be signed by a principal holding the role its action needs.
func (s *State) Enforcing() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return acl.HasAdmin(s.acl)
}

// actor is who an intent is applied for.
type actor struct {
	// name is what history shows.
	name string
	key  string
}

// authorize decides, from the current roles, whether the intent's verified
// signer may take its action. Before the cluster has an admin every intent
// is taken in the operator's own words, as before roles existed.
func (s *State) authorize(e *sv1.IntentEntry) (actor, *Applied) {
	in := e.GetIntent()
	signer := e.GetSigner()
	action := acl.Action(in)
	if !acl.HasAdmin(s.acl) {
		who := actor{name: in.GetOperator(), key: signer}
		if in.GetAcl() != nil && action != "acl_bootstrap" {
			a := refuse(CodeForbidden, "%s: the cluster has no admin yet; bootstrap one first (switchyard acl bootstrap)", action)
			return who, &a
		}
		if action == "acl_bootstrap" && signer == "" {
			a := refuse(CodeUnsigned, "acl_bootstrap: must be signed by the key that becomes admin")
			return who, &a
		}
		return who, nil
	}
	if signer == "" {
		a := refuse(CodeUnsigned, "%s: intent is not signed; every intent needs an operator's signature (switchyard intent sign, or --nats-creds)", action)
		return actor{name: in.GetOperator()}, &a
	}
	p, err := acl.Authorize(s.acl, signer, action, s.serviceOf(in))
	who := actor{name: p.GetName(), key: signer}
	if p == nil {
		who.name = "unknown key " + signer
	}
	switch {
	case errors.Is(err, acl.ErrUnknownKey):
		a := refuse(CodeUnknownKey, "%s: %v", action, err)
		return who, &a
	case err != nil:
		a := refuse(CodeForbidden, "%s: %v", action, err)
		return who, &a
	}
	return who, nil
}

// serviceOf is the service an intent acts on, for role checks; "*" for
// ACL changes (admins of every service only) and "" for the kill switch.
func (s *State) serviceOf(in *sv1.Intent) string {
	ctl := func(id string) string { return s.rollouts[id].GetSpec().GetService() }
	switch act := in.GetAction().(type) {
	case *sv1.Intent_ApplyRollout:
		return act.ApplyRollout.GetSpec().GetService()
	case *sv1.Intent_AbortRollout:
		return ctl(act.AbortRollout.GetRollout())
	case *sv1.Intent_PauseRollout:
		return ctl(act.PauseRollout.GetRollout())
	case *sv1.Intent_ResumeRollout:
		return ctl(act.ResumeRollout.GetRollout())
	case *sv1.Intent_ApproveRollout:
		return ctl(act.ApproveRollout.GetRollout())
	case *sv1.Intent_UndoRollout:
		return ctl(act.UndoRollout.GetRollout())
	case *sv1.Intent_RetryRollout:
		return ctl(act.RetryRollout.GetRollout())
	case *sv1.Intent_PromoteRollout:
		return ctl(act.PromoteRollout.GetRollout())
	case *sv1.Intent_RunDrill:
		return act.RunDrill.GetSpec().GetService()
	case *sv1.Intent_AbortDrill:
		return s.drills[act.AbortDrill.GetDrill()].GetSpec().GetService()
	case *sv1.Intent_Acl:
		return "*"
	}
	return ""
}

// applyAcl applies an admin's change of roles or policy (already
// authorized) or the first admin's bootstrap.
func (s *State) applyAcl(index uint64, who actor, c *sv1.AclChange) Applied {
	if err := acl.CheckChange(c); err != nil {
		return refuse(CodeInvalid, "%v", err)
	}
	ok := Applied{Result: &sv1.IntentResult{Accepted: true}}
	switch ch := c.GetChange().(type) {
	case *sv1.AclChange_Bootstrap:
		if acl.HasAdmin(s.acl) {
			return refuse(CodeConflict, "acl_bootstrap: the cluster has an admin already; an admin grants roles with switchyard acl grant")
		}
		s.grant(who.key, ch.Bootstrap.GetName(), acl.RoleAdmin, "*")
	case *sv1.AclChange_Grant:
		g := ch.Grant
		if err := validKey("acl.grant.key", g.GetKey()); err != nil {
			return refuse(CodeInvalid, "%v", err)
		}
		if p := acl.Find(s.acl, g.GetKey()); p != nil && p.GetName() != g.GetName() {
			return refuse(CodeConflict, "acl.grant.name: key %s is enrolled as %q, not %q", g.GetKey(), p.GetName(), g.GetName())
		}
		for _, p := range s.acl.GetPrincipals() {
			if p.GetName() == g.GetName() && p.GetKey() != g.GetKey() {
				return refuse(CodeConflict, "acl.grant.name: %q names another key (%s); one name per key", g.GetName(), p.GetKey())
			}
		}
		s.grant(g.GetKey(), g.GetName(), g.GetRole(), g.GetServices())
	case *sv1.AclChange_Revoke:
		r := ch.Revoke
		p := acl.Find(s.acl, r.GetKey())
		if p == nil {
			return refuse(CodeNotFound, "acl.revoke.key: no principal holds %s", r.GetKey())
		}
		next, ok := revoked(s.acl, r)
		if !ok {
			return refuse(CodeNotFound, "acl.revoke: %s holds no grant of role %q on %q", acl.Who(p), r.GetRole(), r.GetServices())
		}
		if !acl.HasAdmin(next) {
			return refuse(CodeConflict, "acl.revoke: that would leave the cluster without an admin; grant admin to another key first")
		}
		s.acl = next
	case *sv1.AclChange_Policy:
		s.acl.Policy = proto.Clone(ch.Policy).(*sv1.AclPolicy)
		s.acl.PolicyRevision = index
	}
	return ok
}

// revoked returns a copy of st without what r revokes: the principal
// holding r's key, or its one grant r names. It reports false when that
// principal holds no such grant.
func revoked(st *sv1.AclState, r *sv1.AclRevoke) (*sv1.AclState, bool) {
	next := proto.Clone(st).(*sv1.AclState)
	np := acl.Find(next, r.GetKey())
	if np == nil {
		return next, false
	}
	if r.GetRole() == "" {
		next.Principals = slices.DeleteFunc(next.Principals, func(x *sv1.Principal) bool { return x.GetKey() == r.GetKey() })
		return next, true
	}
	before := len(np.Grants)
	np.Grants = slices.DeleteFunc(np.Grants, func(g *sv1.Grant) bool {
		return g.GetRole() == r.GetRole() && g.GetServices() == r.GetServices()
	})
	return next, len(np.Grants) < before
}

// ApplyAclBootstrap makes the first admin from a coordinator's bootstrap
// setting. It is a no-op (audited) once any admin exists.
func (s *State) ApplyAclBootstrap(index uint64, e *sv1.AclBootstrapEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := &sv1.AuditRecord{Index: index, At: e.GetStampedAt(), Kind: "acl_bootstrap", Actor: "switchyard",
		ActorKey: e.GetKey(), Action: "acl_bootstrap"}
	if acl.HasAdmin(s.acl) {
		rec.Code = CodeConflict
		rec.Message = "the cluster has an admin already; bootstrap setting ignored"
	} else if err := validKey("acl bootstrap key", e.GetKey()); err != nil {
		rec.Code = CodeInvalid
		rec.Message = err.Error()
	} else {
		s.grant(e.GetKey(), e.GetName(), acl.RoleAdmin, "*")
		rec.Accepted = true
		rec.Message = fmt.Sprintf("first admin %s (%s)", e.GetName(), e.GetKey())
	}
	s.appendAudit(rec)
}

func (s *State) grant(key, name, role, services string) {
	p := acl.Find(s.acl, key)
	if p == nil {
		p = &sv1.Principal{Key: key, Name: name}
		s.acl.Principals = append(s.acl.Principals, p)
		slices.SortFunc(s.acl.Principals, func(a, b *sv1.Principal) int {
			switch {
			case a.GetName() < b.GetName():
				return -1
			case a.GetName() > b.GetName():
				return 1
			}
			return 0
		})
	}
	for _, g := range p.GetGrants() {
		if g.GetRole() == role && g.GetServices() == services {
			return
		}
	}
	p.Grants = append(p.Grants, &sv1.Grant{Role: role, Services: services})
}

// keyCheck validates a principal key; set by the coordinator (bus knows the
// key formats) so that this package needs no crypto.
var keyCheck func(field, key string) error

// SetKeyCheck installs the principal key validator.
func SetKeyCheck(f func(field, key string) error) { keyCheck = f }

func validKey(field, key string) error {
	if key == "" {
		return fmt.Errorf("%s: required", field)
	}
	if keyCheck != nil {
		return keyCheck(field, key)
	}
	return nil
}

// approvalsAt lists the distinct approvers, other than r's author, that
// marks record at r's current position. From rules version 3 on, only
// approvers whose key still holds the approver role on r's service count:
// an approval is withdrawn with its approver's key or role.
func (s *State) approvalsAt(r *sv1.Rollout, marks []string, rules uint32) []string {
	pos := positionKey(r)
	var out []string
	for _, a := range marks {
		rest, ok := cutPrefix(a, pos)
		if !ok || rest == r.GetAuthorKey() || slices.Contains(out, rest) {
			continue
		}
		if rules >= 3 && !acl.Holds(acl.Find(s.acl, rest), acl.RoleApprover, r.GetSpec().GetService()) {
			continue
		}
		out = append(out, rest)
	}
	return out
}

func positionKey(r *sv1.Rollout) string { return fmt.Sprintf("%d/%d/", r.GetWave(), r.GetStep()) }

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

// twoPerson applies the approval policy to an approve or promote by who on
// r. It returns r's approvals at its position with who's counted, how many
// the policy needs (0 when no policy applies), and a refusal naming the
// policy when who is the author. It changes nothing.
func (s *State) twoPerson(r *sv1.Rollout, who actor, verb string) (marks []string, need uint32, refusal *Applied) {
	pol := s.acl.GetPolicy()
	if !acl.HasAdmin(s.acl) || !acl.TwoPersonApplies(pol, r.GetSpec().GetService()) {
		return nil, 0, nil
	}
	if who.key != "" && who.key == r.GetAuthorKey() {
		a := refuse(CodeTwoPerson, "%s_rollout.rollout: %s applied rollout %q and may not %s it (policy two-person rule: %d approval(s) from approvers other than the author on %q)",
			verb, who.name, r.GetId(), verb, pol.GetApprovals(), patternOr(pol.GetApprovalServices()))
		return nil, 0, &a
	}
	marks = slices.Clone(r.GetApprovers())
	if m := positionKey(r) + who.key; !slices.Contains(marks, m) {
		marks = append(marks, m)
	}
	return marks, pol.GetApprovals(), nil
}

func patternOr(p string) string {
	if p == "" {
		return "*"
	}
	return p
}

// Authorize checks, against the current roles, whether signer may take in's
// action: the leader asks before commit so that a refusal names the role
// first, and the state machine checks again when the intent applies. It
// returns the refusal code with the error.
func (s *State) Authorize(signer string, in *sv1.Intent) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	_, refused := s.authorize(&sv1.IntentEntry{Intent: in, Signer: signer})
	if refused == nil {
		return "", nil
	}
	return refused.Result.GetCode(), errors.New(refused.Result.GetError())
}
