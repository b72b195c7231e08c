package state

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Keys stand for verified signers; the state machine trusts the leader's
// verification and checks only roles.
const (
	keyAdmin  = "UADMIN"
	keyAlice  = "UALICE"
	keyBob    = "UBOB"
	keyCarol  = "UCAROL"
	keyViewer = "UVIEWER"
	keySRE    = "USRE"
)

func lastAudit(t *testing.T, s *State) *sv1.AuditRecord {
	t.Helper()
	es := s.AuditEntries(0, 0)
	if len(es) == 0 {
		t.Fatal("no audit records")
	}
	rec, err := audit.Open(es[len(es)-1])
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func signed(key string, e *sv1.IntentEntry) *sv1.IntentEntry {
	e = proto.Clone(e).(*sv1.IntentEntry)
	e.Signer = key
	return e
}

func aclEntry(id, key string, c *sv1.AclChange) *sv1.IntentEntry {
	return &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Signer: key,
		Intent: &sv1.Intent{Id: id, Action: &sv1.Intent_Acl{Acl: c}}}
}

func grantEntry(id, by, key, name, role, services string) *sv1.IntentEntry {
	return aclEntry(id, by, &sv1.AclChange{Change: &sv1.AclChange_Grant{Grant: &sv1.AclGrant{Key: key, Name: name, Role: role, Services: services}}})
}

// teamState is a cluster with an admin, alice (deployer and approver on
// web*), bob and carol (approvers), a viewer and an SRE with the chaos
// role.
func teamState(t *testing.T) (*State, uint64) {
	t.Helper()
	s := New()
	s.ApplyAclBootstrap(1, &sv1.AclBootstrapEntry{Key: keyAdmin, Name: "root", StampedAt: timestamppb.New(t0)})
	idx := uint64(2)
	for _, g := range []struct{ key, name, role, svc string }{
		{keyAlice, "alice", "deployer", "web*"}, {keyAlice, "alice", "approver", "web*"},
		{keyBob, "bob", "approver", "*"}, {keyCarol, "carol", "approver", "*"},
		{keyViewer, "val", "viewer", "*"}, {keySRE, "sre", "chaos", "web"}, {keySRE, "sre", "deployer", "web"},
	} {
		a := s.ApplyIntent(idx, grantEntry("g"+g.key+g.role, keyAdmin, g.key, g.name, g.role, g.svc))
		if !a.Result.GetAccepted() {
			t.Fatalf("grant %v: %v", g, a.Result)
		}
		idx++
	}
	return s, idx
}

func TestAcl_RolesAreEnforcedOnceThereIsAnAdmin(t *testing.T) {
	s, idx := teamState(t)
	cases := []struct {
		name  string
		entry *sv1.IntentEntry
		code  string
		text  []string
	}{
		{"unsigned", applyEntry("u1", bgSpec("r1"), t0), CodeUnsigned, []string{"not signed"}},
		{"unknown key", signed("UNOBODY", applyEntry("u2", bgSpec("r1"), t0)), CodeUnknownKey, []string{"no principal holds key UNOBODY"}},
		{"viewer applies", signed(keyViewer, applyEntry("u3", bgSpec("r1"), t0)), CodeForbidden, []string{`val`, `lacks role "deployer"`, `"web"`, "apply_rollout needs role deployer"}},
		{"approver grants", grantEntry("u4", keyBob, keyCarol, "carol", "admin", "*"), CodeForbidden, []string{`bob`, `lacks role "admin"`}},
	}
	for _, c := range cases {
		before := s.AuditHead().GetSeq()
		a := s.ApplyIntent(idx, c.entry)
		idx++
		if a.Result.GetAccepted() || a.Result.GetCode() != c.code {
			t.Fatalf("%s: %v, want refused %s", c.name, a.Result, c.code)
		}
		for _, want := range c.text {
			if !strings.Contains(a.Result.GetError(), want) {
				t.Fatalf("%s: %q does not say %q", c.name, a.Result.GetError(), want)
			}
		}
		rec := lastAudit(t, s)
		if s.AuditHead().GetSeq() != before+1 || rec.GetKind() != "refused" || rec.GetCode() != c.code || rec.GetMessage() != a.Result.GetError() {
			t.Fatalf("%s: audit record %v", c.name, rec)
		}
	}
	if len(s.Rollouts()) != 0 {
		t.Fatal("a refused intent created a rollout")
	}
	if p := s.Acl().GetPrincipals(); len(p) != 6 {
		t.Fatalf("principals %v", p)
	}

	// The right person succeeds, and history and audit show the verified
	// name, not the free-text operator field.
	e := signed(keyAlice, applyEntry("ok1", canarySpec("r1"), t0))
	e.Intent.Operator = "somebody-else"
	if a := s.ApplyIntent(idx, e); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	r := s.Rollout("r1")
	if r.GetOperator() != "alice" || r.GetHistory()[0].GetOperator() != "alice" || r.GetAuthorKey() != keyAlice {
		t.Fatalf("rollout author %q/%q key %q, want alice", r.GetOperator(), r.GetHistory()[0].GetOperator(), r.GetAuthorKey())
	}
	if rec := lastAudit(t, s); rec.GetActor() != "alice" || rec.GetActorKey() != keyAlice || rec.GetAction() != "apply_rollout" || !rec.GetAccepted() || rec.GetRollout() != "r1" {
		t.Fatalf("audit record %v", rec)
	}
}

func approveEntry(id, key, rollout string) *sv1.IntentEntry {
	return signed(key, control(id, rollout, func(c *sv1.RolloutControl) any { return &sv1.Intent_ApproveRollout{ApproveRollout: c} }))
}

func promoteEntry(id, key, rollout string) *sv1.IntentEntry {
	return &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Signer: key, Intent: &sv1.Intent{Id: id,
		Action: &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: rollout}}}}
}

func TestAcl_TwoPersonRule(t *testing.T) {
	s, idx := teamState(t)
	next := func() uint64 { idx++; return idx }
	pol := aclEntry("pol", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 2, ApprovalServices: "web*"}}})
	if a := s.ApplyIntent(next(), pol); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if a := s.ApplyIntent(next(), signed(keyAlice, applyEntry("apply", canarySpec("c1"), t0))); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	// At step 0 (setWeight) there is nothing to approve: refused, and
	// nothing in the rollout's history.
	hist := len(s.Rollout("c1").GetHistory())
	a := s.ApplyIntent(next(), approveEntry("early", keyBob, "c1"))
	if a.Result.GetCode() != CodeNothingToApprove || !strings.Contains(a.Result.GetError(), "nothing to approve") {
		t.Fatalf("approve with no gate: %v", a.Result)
	}
	if len(s.Rollout("c1").GetHistory()) != hist {
		t.Fatal("a refused approval is in the rollout's history")
	}
	s.ApplyAdvance(next(), &sv1.RolloutAdvanceEntry{Rollout: "c1", FromStep: 0, ToStep: 1, StampedAt: timestamppb.New(t0)})
	if rec := lastAudit(t, s); rec.GetKind() != "decision" || rec.GetActor() != "switchyard" {
		t.Fatalf("automatic advance audited as %v", rec)
	}
	// The author may not approve their own rollout.
	a = s.ApplyIntent(next(), approveEntry("self", keyAlice, "c1"))
	if a.Result.GetCode() != CodeTwoPerson || !strings.Contains(a.Result.GetError(), "two-person rule") || !strings.Contains(a.Result.GetError(), "alice") {
		t.Fatalf("self-approval: %v", a.Result)
	}
	// Nor promote it.
	if a := s.ApplyIntent(next(), promoteEntry("selfpromote", keyAlice, "c1")); a.Result.GetCode() != CodeTwoPerson {
		t.Fatalf("self-promote: %v", a.Result)
	}
	// One approval of two: accepted, gate still shut.
	if a := s.ApplyIntent(next(), approveEntry("bob1", keyBob, "c1")); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if r := s.Rollout("c1"); r.GetApprovedStep() == 1 {
		t.Fatal("one approval opened a gate needing two")
	}
	// The same approver twice still counts once.
	s.ApplyIntent(next(), approveEntry("bob2", keyBob, "c1"))
	if r := s.Rollout("c1"); r.GetApprovedStep() == 1 {
		t.Fatal("the same approver counted twice")
	}
	if a := s.ApplyIntent(next(), approveEntry("carol1", keyCarol, "c1")); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if r := s.Rollout("c1"); r.GetApprovedWave() != 0 || r.GetApprovedStep() != 1 {
		t.Fatalf("two approvals did not open the gate: %d/%d", r.GetApprovedWave(), r.GetApprovedStep())
	}
	// A promote needs the approvals at the new position too.
	s.ApplyAdvance(next(), &sv1.RolloutAdvanceEntry{Rollout: "c1", FromStep: 1, ToStep: 2, StampedAt: timestamppb.New(t0)})
	if a := s.ApplyIntent(next(), promoteEntry("p1", keyBob, "c1")); a.Result.GetCode() != CodeTwoPerson || !strings.Contains(a.Result.GetError(), "1 of the 2") {
		t.Fatalf("promote with one approval: %v", a.Result)
	}
}

func TestAcl_ApproveDuringATimedPauseIsRefusedEvenWithoutRoles(t *testing.T) {
	s := New()
	sp := canarySpec("c1")
	sp.GetStrategy().GetCanary().Steps[1] = &sv1.Step{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{Duration: durationpb.New(time.Minute)}}}
	s.ApplyIntent(1, applyEntry("i1", sp, t0))
	s.ApplyAdvance(2, &sv1.RolloutAdvanceEntry{Rollout: "c1", FromStep: 0, ToStep: 1})
	hist := len(s.Rollout("c1").GetHistory())
	a := s.ApplyIntent(3, control("a1", "c1", func(c *sv1.RolloutControl) any { return &sv1.Intent_ApproveRollout{ApproveRollout: c} }))
	if a.Result.GetCode() != CodeNothingToApprove || !strings.Contains(a.Result.GetError(), "pause 1m0s") {
		t.Fatalf("approve in a timed pause: %v", a.Result)
	}
	if r := s.Rollout("c1"); len(r.GetHistory()) != hist || r.GetApprovedWave() != -1 {
		t.Fatal("refused approval changed the rollout")
	}
}

func TestAcl_ChaosNeedsItsRoleAndTheAdminsCap(t *testing.T) {
	s, idx := teamState(t)
	next := func() uint64 { idx++; return idx }
	drill := func(id, key string, maxNodes uint32) *sv1.IntentEntry {
		sp := &sv1.DrillSpec{Name: id, Service: "web", MaxNodes: maxNodes, MaxBasisPoints: 5000, Duration: durationpb.New(time.Minute),
			Fault: &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 1}}}}
		return &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Signer: key, Intent: &sv1.Intent{Id: id,
			Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}}
	}
	if a := s.ApplyIntent(next(), drill("d-alice", keyAlice, 1)); a.Result.GetCode() != CodeForbidden || !strings.Contains(a.Result.GetError(), `lacks role "chaos"`) {
		t.Fatalf("deployer drill: %v", a.Result)
	}
	pol := aclEntry("caps", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{DrillMaxNodes: 2, DrillMaxPercent: 25}}})
	if a := s.ApplyIntent(next(), pol); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if a := s.ApplyIntent(next(), drill("d-big", keySRE, 5)); a.Result.GetCode() != CodeBlastRadius || !strings.Contains(a.Result.GetError(), "admins' cap of 2 nodes") {
		t.Fatalf("drill over the admins' node cap: %v", a.Result)
	}
	if a := s.ApplyIntent(next(), drill("d-wide", keySRE, 2)); a.Result.GetCode() != CodeBlastRadius || !strings.Contains(a.Result.GetError(), "25%") {
		t.Fatalf("drill over the admins' percent cap: %v", a.Result)
	}
	if len(s.Drills()) != 0 {
		t.Fatal("a refused drill was scheduled")
	}
}

func TestAcl_AdminChanges(t *testing.T) {
	s, idx := teamState(t)
	next := func() uint64 { idx++; return idx }
	// A second bootstrap is refused.
	boot := aclEntry("boot2", keyBob, &sv1.AclChange{Change: &sv1.AclChange_Bootstrap{Bootstrap: &sv1.AclBootstrap{Name: "bob"}}})
	if a := s.ApplyIntent(next(), boot); a.Result.GetAccepted() {
		t.Fatal("second bootstrap accepted")
	}
	s.ApplyAclBootstrap(next(), &sv1.AclBootstrapEntry{Key: keyBob, Name: "bob"})
	if rec := lastAudit(t, s); rec.GetAccepted() || rec.GetKind() != "acl_bootstrap" {
		t.Fatalf("second bootstrap setting: %v", rec)
	}
	// The last admin cannot be revoked.
	rev := aclEntry("rev", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Revoke{Revoke: &sv1.AclRevoke{Key: keyAdmin}}})
	if a := s.ApplyIntent(next(), rev); a.Result.GetCode() != CodeConflict || !strings.Contains(a.Result.GetError(), "without an admin") {
		t.Fatalf("revoking the last admin: %v", a.Result)
	}
	// Revoking a role takes it away.
	rev = aclEntry("rev2", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Revoke{Revoke: &sv1.AclRevoke{Key: keyAlice, Role: "deployer", Services: "web*"}}})
	if a := s.ApplyIntent(next(), rev); !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	if a := s.ApplyIntent(next(), signed(keyAlice, applyEntry("x", bgSpec("r1"), t0))); a.Result.GetCode() != CodeForbidden {
		t.Fatalf("revoked deployer applied: %v", a.Result)
	}
	bad := grantEntry("badrole", keyAdmin, keyBob, "bob", "superuser", "*")
	if a := s.ApplyIntent(next(), bad); a.Result.GetCode() != CodeInvalid || !strings.Contains(a.Result.GetError(), "acl.grant.role") {
		t.Fatalf("bad role: %v", a.Result)
	}
}

func TestAcl_SnapshotRestoreRoundTripsRolesPolicyAndAuditHead(t *testing.T) {
	s, idx := teamState(t)
	s.ApplyIntent(idx, aclEntry("pol", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 1, DrillMaxNodes: 3}}}))
	s.ApplyIntent(idx+1, signed(keyAlice, applyEntry("a", canarySpec("c1"), t0)))
	s.ApplyAuditRefusal(idx+2, &sv1.AuditRefusalEntry{IntentId: "bad", Code: CodeBadSignature, Reason: "signature does not verify"})
	s.ApplyAuditExported(&sv1.AuditExportedEntry{Through: 3})
	snap := s.Snapshot()
	b, err := proto.Marshal(snap)
	if err != nil {
		t.Fatal(err)
	}
	var back sv1.StateSnapshot
	if err := proto.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	r, err := FromSnapshot(&back)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(r.Snapshot(), snap) {
		t.Fatal("restored state differs")
	}
	if !proto.Equal(r.Acl(), s.Acl()) || !proto.Equal(r.AuditHead(), s.AuditHead()) || r.AuditHead().GetExported() != 3 {
		t.Fatalf("acl or audit head lost: %v", r.AuditHead())
	}
	// The restored chain goes on from the same head on both.
	s.ApplyIntent(idx+3, approveEntry("ap", keyBob, "c1"))
	r.ApplyIntent(idx+3, approveEntry("ap", keyBob, "c1"))
	if !proto.Equal(r.AuditHead(), s.AuditHead()) {
		t.Fatal("restored chain diverged")
	}
	v, err := audit.Verify(linksOf(s.AuditEntries(0, 0)), true)
	if err != nil || v.Last != s.AuditHead().GetSeq() {
		t.Fatalf("chain: %v (last %d)", err, v.Last)
	}
	// A snapshot whose records do not match its head is refused.
	back.AuditHead.Seq++
	if _, err := FromSnapshot(&back); err == nil {
		t.Fatal("snapshot with a head past its records restored")
	}
}

func TestAudit_ExportedRecordsArePrunedBeyondTheKept(t *testing.T) {
	s := New()
	for i := range AuditKeep + 50 {
		s.ApplyAuditRefusal(uint64(i+1), &sv1.AuditRefusalEntry{IntentId: "x", Code: CodeMalformed})
	}
	if n := len(s.AuditEntries(0, 0)); n != AuditKeep+50 {
		t.Fatalf("unexported records dropped: %d held", n)
	}
	s.ApplyAuditExported(&sv1.AuditExportedEntry{Through: 30})
	if n := len(s.AuditEntries(0, 0)); n != AuditKeep+20 {
		t.Fatalf("held %d after exporting 30, want %d (only exported ones go)", n, AuditKeep+20)
	}
	s.ApplyAuditExported(&sv1.AuditExportedEntry{Through: AuditKeep + 50})
	es := s.AuditEntries(0, 0)
	if len(es) != AuditKeep {
		t.Fatalf("held %d after exporting all, want %d", len(es), AuditKeep)
	}
	if got := s.AuditEntries(AuditKeep+40, 0); len(got) != 10 {
		t.Fatalf("entries after %d: %d, want 10", AuditKeep+40, len(got))
	}
	if _, err := audit.Verify(linksOf(es), false); err != nil {
		t.Fatal(err)
	}
}

func linksOf(es []*sv1.AuditEntry) []audit.Link {
	return links(es)
}

func withRules(rules uint32, e *sv1.IntentEntry) *sv1.IntentEntry {
	e = proto.Clone(e).(*sv1.IntentEntry)
	e.Rules = rules
	return e
}

// An approval counts while its approver still holds the approver role: a
// key revoked (or its approver role taken away) after approving no longer
// makes up the policy's number, at a manual gate or for a promote.
// Entries committed under the rules before count it, as they did.
func TestAcl_ApprovalOfARevokedApproverNoLongerCounts(t *testing.T) {
	setup := func(t *testing.T, rules uint32, revoke *sv1.AclRevoke) (*State, func() uint64) {
		s, idx := teamState(t)
		next := func() uint64 { idx++; return idx }
		pol := aclEntry("pol", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 2, ApprovalServices: "web*"}}})
		if a := s.ApplyIntent(next(), pol); !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		if a := s.ApplyIntent(next(), withRules(rules, signed(keyAlice, applyEntry("apply", canarySpec("c1"), t0)))); !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		s.ApplyAdvance(next(), &sv1.RolloutAdvanceEntry{Rollout: "c1", FromStep: 0, ToStep: 1, StampedAt: timestamppb.New(t0)})
		if a := s.ApplyIntent(next(), withRules(rules, approveEntry("bob1", keyBob, "c1"))); !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		rev := aclEntry("rev-bob", keyAdmin, &sv1.AclChange{Change: &sv1.AclChange_Revoke{Revoke: revoke}})
		if a := s.ApplyIntent(next(), withRules(rules, rev)); !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		return s, next
	}
	for _, rv := range []*sv1.AclRevoke{{Key: keyBob}, {Key: keyBob, Role: "approver", Services: "*"}} {
		s, next := setup(t, Rules, rv)
		a := s.ApplyIntent(next(), withRules(Rules, approveEntry("carol1", keyCarol, "c1")))
		if !a.Result.GetAccepted() {
			t.Fatal(a.Result)
		}
		if r := s.Rollout("c1"); r.GetApprovedStep() == 1 {
			t.Fatalf("revoke %v: the approval of a revoked approver opened a gate needing two", rv)
		}
		h := s.Rollout("c1").GetHistory()
		if msg := h[len(h)-1].GetMessage(); !strings.Contains(msg, "approval 1 of 2") {
			t.Fatalf("revoke %v: history %q, want approval 1 of 2", rv, msg)
		}
		s, next = setup(t, Rules, rv)
		if a := s.ApplyIntent(next(), withRules(Rules, promoteEntry("p1", keyCarol, "c1"))); a.Result.GetCode() != CodeTwoPerson || !strings.Contains(a.Result.GetError(), "1 of the 2") {
			t.Fatalf("revoke %v: promote counting a revoked approver: %v", rv, a.Result)
		}
	}
	// Replay of entries committed under rules version 2: counted.
	s, next := setup(t, 2, &sv1.AclRevoke{Key: keyBob})
	if a := s.ApplyIntent(next(), withRules(2, approveEntry("carol1", keyCarol, "c1"))); !a.Result.GetAccepted() || s.Rollout("c1").GetApprovedStep() != 1 {
		t.Fatalf("rules 2 replay: %v, approved step %d", a.Result, s.Rollout("c1").GetApprovedStep())
	}
}
