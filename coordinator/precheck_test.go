package coordinator

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// With no node running the service, an aborted rollout is rolled back at
// once (no live node to wait for), and the service then serves its from:
// a new rollout from the other backend is refused before commit, one from
// the backend it serves is taken. A first wave with a manual gate holds
// the new rollout: the leader commits it under the current rules.
func TestIntents_NewRolloutMustStartFromTheBackendTheServiceServes(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinatorStaleAfter(t, url, t.TempDir(), time.Second)
	st := func() interface {
		Rollout(string) *sv1.Rollout
	} {
		return c.srv.fsm.State()
	}

	if res := send(t, nc, applyIntent("i1", "r1")); !res.GetAccepted() {
		t.Fatal(res)
	}
	if res := send(t, nc, &sv1.Intent{Id: "i2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "r1"}}}); !res.GetAccepted() {
		t.Fatal(res)
	}
	waitFor(t, "the rollback with no live node to be confirmed", 10*time.Second, func() bool {
		return st().Rollout("r1").GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK
	})

	back := applyIntent("i3", "r2")
	back.GetApplyRollout().GetSpec().From, back.GetApplyRollout().GetSpec().To = "green", "blue"
	res := send(t, nc, back)
	if res.GetAccepted() || res.GetCode() != "conflict" || !strings.Contains(res.GetError(), `spec.from: "green", but service "web" serves "blue" now`) {
		t.Fatalf("rollout from the backend not served: %v", res)
	}
	if st().Rollout("r2") != nil {
		t.Fatal("the refused rollout was committed")
	}

	gated := applyIntent("i4", "r3")
	gated.GetApplyRollout().GetSpec().Waves = []*sv1.WaveSpec{{Name: "first", BasisPoints: 10000, ManualGate: true}}
	if res := send(t, nc, gated); !res.GetAccepted() {
		t.Fatal(res)
	}
	if r := st().Rollout("r3"); !r.GetStartGate() || !r.GetHoldStart() {
		t.Fatalf("first wave's manual gate: start gate %v, held %v", r.GetStartGate(), r.GetHoldStart())
	}
	ans, err := c.srv.Rollouts(&sv1.RolloutsQuery{Rollout: "r3"})
	if err != nil {
		t.Fatal(err)
	}
	if v := ans.GetRollouts()[0]; v.GetWaiting() != "approval to start wave first" || v.GetPosition() != "before wave 1/1 first, no traffic moved" {
		t.Errorf("status waiting %q, position %q", v.GetWaiting(), v.GetPosition())
	}
	approve := &sv1.Intent{Id: "i5", Action: &sv1.Intent_ApproveRollout{ApproveRollout: &sv1.RolloutControl{Rollout: "r3", Reason: "CHG-7"}}}
	if res := send(t, nc, approve); !res.GetAccepted() {
		t.Fatal(res)
	}
	h := st().Rollout("r3").GetHistory()
	if msg := h[len(h)-1].GetMessage(); !strings.Contains(msg, "approved the start of wave first") || !strings.HasSuffix(msg, "; reason: CHG-7") {
		t.Errorf("history %q", msg)
	}
}

// startCoordinatorStaleAfter is startCoordinator with a short stale
// period, after which a coordinator that heard from no node of a service
// takes it that none runs it.
func startCoordinatorStaleAfter(t *testing.T, natsURL, dataDir string, staleAfter time.Duration) *testCoordinator {
	t.Helper()
	return startCoordinatorWith(t, natsURL, dataDir, func(c *Config) { c.StaleAfter = staleAfter })
}

// Two admins' `acl policy` made from the same read: the later one is
// refused before commit instead of undoing the first.
func TestAcl_PolicyChangeFromAStaleReadIsRefusedBeforeCommit(t *testing.T) {
	nc, url := startNATS(t)
	admin := newUser(t)
	c := startCoordinatorWithAdmin(t, url, t.TempDir(), admin)
	read := c.srv.fsm.State().Acl()
	change := func(id string, pol *sv1.AclPolicy) *sv1.Intent {
		return &sv1.Intent{Id: id, Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{
			PolicyRevision: proto.Uint64(read.GetPolicyRevision()), Change: &sv1.AclChange_Policy{Policy: pol}}}}
	}
	if res := sendSigned(t, nc, admin, bus.IntentKindAcl, change("a", &sv1.AclPolicy{Approvals: 2, ApprovalServices: "*"})); !res.GetAccepted() {
		t.Fatal(res)
	}
	res := sendSigned(t, nc, admin, bus.IntentKindAcl, change("b", &sv1.AclPolicy{DrillMaxNodes: 5}))
	if res.GetAccepted() || res.GetCode() != "conflict" || !strings.Contains(res.GetError(), "read it again") {
		t.Fatalf("policy change from a stale read: %v", res)
	}
	if pol := c.srv.fsm.State().Acl().GetPolicy(); pol.GetApprovals() != 2 || pol.GetDrillMaxNodes() != 0 {
		t.Fatalf("policy %v; want A's change kept", pol)
	}
}

// Only an admin on every service ("*") can change roles and policy, so the
// last such admin cannot be revoked even when an admin on a narrower
// pattern remains: that one could not grant anything, and no bootstrap
// is taken while it holds its grant.
func TestAcl_RevokingTheLastAdminOfEveryServiceIsRefused(t *testing.T) {
	nc, url := startNATS(t)
	root, bob := newUser(t), newUser(t)
	c := startCoordinatorWithAdmin(t, url, t.TempDir(), root)
	if res := sendSigned(t, nc, root, bus.IntentKindAcl, grantIntent("g1", bob, "bob", "admin", "web-*")); !res.GetAccepted() {
		t.Fatal(res)
	}
	revoke := func(id string, rv *sv1.AclRevoke) *sv1.Intent {
		return &sv1.Intent{Id: id, Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{Change: &sv1.AclChange_Revoke{Revoke: rv}}}}
	}
	for _, rv := range []*sv1.AclRevoke{
		{Key: root.Key()},
		{Key: root.Key(), Role: "admin", Services: "*"},
	} {
		res := sendSigned(t, nc, root, bus.IntentKindAcl, revoke("r-"+rv.GetRole(), rv))
		if res.GetAccepted() || res.GetCode() != "conflict" || !strings.Contains(res.GetError(), `admin on "*"`) {
			t.Fatalf("revoking the last admin on every service (%v): %v", rv, res)
		}
	}
	if p := c.srv.fsm.State().Acl().GetPrincipals(); len(p) != 2 {
		t.Fatalf("principals %v", p)
	}
	// The admin is still in charge.
	if res := sendSigned(t, nc, root, bus.IntentKindAcl, grantIntent("g2", bob, "bob", "admin", "*")); !res.GetAccepted() {
		t.Fatal(res)
	}
	if res := sendSigned(t, nc, root, bus.IntentKindAcl, revoke("r3", &sv1.AclRevoke{Key: root.Key()})); !res.GetAccepted() {
		t.Fatalf("revoking an admin while another admin on every service remains: %v", res)
	}
}

// An author whose key was replaced (the old key revoked, a new one granted
// under the same name) is still the author: under a two-person policy the
// new key may not approve or promote the rollout the old one applied.
func TestAcl_AuthorWithANewKeyMayNotApproveOwnRollout(t *testing.T) {
	nc, url := startNATS(t)
	root, alice, alice2, bob := newUser(t), newUser(t), newUser(t), newUser(t)
	c := startCoordinatorWithAdmin(t, url, t.TempDir(), root)
	policy := &sv1.Intent{Id: "pol", Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 1}}}}}
	for _, in := range []*sv1.Intent{
		grantIntent("g1", alice, "alice", "deployer", "web"),
		grantIntent("g2", alice, "alice", "approver", "web"),
		grantIntent("g3", bob, "bob", "approver", "web"),
		policy,
	} {
		if res := sendSigned(t, nc, root, bus.IntentKindAcl, in); !res.GetAccepted() {
			t.Fatal(res)
		}
	}
	gated := applyIntent("a1", "r1")
	gated.GetApplyRollout().GetSpec().Waves = []*sv1.WaveSpec{{Name: "first", BasisPoints: 10000, ManualGate: true}}
	if res := sendSigned(t, nc, alice, bus.IntentKindRollout, gated); !res.GetAccepted() {
		t.Fatal(res)
	}
	// Alice's key is replaced.
	rotate := []*sv1.Intent{
		{Id: "rev", Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{Change: &sv1.AclChange_Revoke{Revoke: &sv1.AclRevoke{Key: alice.Key()}}}}},
		grantIntent("g4", alice2, "alice", "deployer", "web"),
		grantIntent("g5", alice2, "alice", "approver", "web"),
	}
	for _, in := range rotate {
		if res := sendSigned(t, nc, root, bus.IntentKindAcl, in); !res.GetAccepted() {
			t.Fatal(res)
		}
	}
	for _, in := range []*sv1.Intent{
		{Id: "ap1", Action: &sv1.Intent_ApproveRollout{ApproveRollout: &sv1.RolloutControl{Rollout: "r1"}}},
		{Id: "pr1", Action: &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: "r1"}}},
	} {
		res := sendSigned(t, nc, alice2, bus.IntentKindRollout, in)
		if res.GetAccepted() || res.GetCode() != "two_person" || !strings.Contains(res.GetError(), `"alice"`) {
			t.Fatalf("%s by the author's new key: %v", in.GetId(), res)
		}
	}
	if r := c.srv.fsm.State().Rollout("r1"); !r.GetStartGate() {
		t.Fatal("the author's new key opened the gate")
	}
	// Another person may.
	if res := sendSigned(t, nc, bob, bus.IntentKindRollout, &sv1.Intent{Id: "ap2", Action: &sv1.Intent_ApproveRollout{ApproveRollout: &sv1.RolloutControl{Rollout: "r1"}}}); !res.GetAccepted() {
		t.Fatal(res)
	}
	if r := c.srv.fsm.State().Rollout("r1"); r.GetStartGate() {
		t.Fatal("bob's approval did not open the gate")
	}
}

// Under a two-person policy that requires gates, a rollout must wait for an
// approval before a wave takes all its traffic: a spec whose author
// declared no gate would otherwise move the whole fleet on the author's
// word alone. A manualGate or a pause: {} before the wave reaches 100
// passes; services outside the policy's pattern are not held; without the
// requirement the author's spec decides, as before.
func TestAcl_PolicyRequiringGatesRefusesARolloutWithoutAGate(t *testing.T) {
	nc, url := startNATS(t)
	root, alice := newUser(t), newUser(t)
	c := startCoordinatorWithAdmin(t, url, t.TempDir(), root)
	policy := &sv1.Intent{Id: "pol", Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 1, ApprovalServices: "web*", RequireGates: true}}}}}
	for _, in := range []*sv1.Intent{
		grantIntent("g1", alice, "alice", "deployer", "*"),
		policy,
	} {
		if res := sendSigned(t, nc, root, bus.IntentKindAcl, in); !res.GetAccepted() {
			t.Fatal(res)
		}
	}
	canary := func(steps ...*sv1.Step) *sv1.Strategy {
		return &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: steps}}}
	}
	weight := func(w uint32) *sv1.Step { return &sv1.Step{Kind: &sv1.Step_SetWeight{SetWeight: w}} }
	untimed := &sv1.Step{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{}}}
	timed := &sv1.Step{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{Duration: durationpb.New(time.Minute)}}}
	for _, tc := range []struct {
		name    string
		edit    func(*sv1.RolloutSpec)
		refused string // the field the refusal names; "" when accepted
	}{
		{"blue-green without waves", func(*sv1.RolloutSpec) {}, `wave "all"`},
		{"canary with timed pauses only", func(sp *sv1.RolloutSpec) { sp.Strategy = canary(weight(10), timed, weight(50)) }, `wave "all"`},
		{"approval only once all traffic moved", func(sp *sv1.RolloutSpec) { sp.Strategy = canary(weight(10), weight(100), untimed) }, `wave "all"`},
		{"second wave ungated", func(sp *sv1.RolloutSpec) {
			sp.Waves = []*sv1.WaveSpec{{Name: "one", BasisPoints: 1000, ManualGate: true}, {Name: "two", BasisPoints: 10000}}
		}, "spec.waves[1]"},
		{"every wave gated", func(sp *sv1.RolloutSpec) {
			sp.Waves = []*sv1.WaveSpec{{Name: "one", BasisPoints: 1000, ManualGate: true}, {Name: "two", BasisPoints: 10000, ManualGate: true}}
		}, ""},
		{"canary waiting for approval at 10%", func(sp *sv1.RolloutSpec) { sp.Strategy = canary(weight(10), untimed, weight(50)) }, ""},
		{"a service outside the policy", func(sp *sv1.RolloutSpec) { sp.Service = "api" }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(strings.ReplaceAll(tc.name, " ", "-"), "%", "pc")
			in := applyIntent("apply-"+name, name)
			sp := in.GetApplyRollout().GetSpec()
			sp.Service = "web-" + name // a service of its own: an accepted rollout holds it
			tc.edit(sp)
			res := sendSigned(t, nc, alice, bus.IntentKindRollout, in)
			if tc.refused == "" {
				if !res.GetAccepted() {
					t.Fatalf("refused: %v", res)
				}
				return
			}
			if res.GetAccepted() || res.GetCode() != "two_person" || !strings.Contains(res.GetError(), tc.refused) || !strings.Contains(res.GetError(), "manualGate: true") {
				t.Fatalf("want a two_person refusal naming %s, got %v", tc.refused, res)
			}
			if c.srv.fsm.State().Rollout(name) != nil {
				t.Fatal("the refused rollout is in the state")
			}
		})
	}

	setPolicy := func(id string, pol *sv1.AclPolicy) *sv1.IntentResult {
		return sendSigned(t, nc, root, bus.IntentKindAcl, &sv1.Intent{Id: id, Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{Change: &sv1.AclChange_Policy{Policy: pol}}}})
	}
	if res := setPolicy("pol-0", &sv1.AclPolicy{RequireGates: true}); res.GetAccepted() || !strings.Contains(res.GetError(), "--require-gates") {
		t.Fatalf("gates required with no approvals: %v", res)
	}
	if res := setPolicy("pol-2", &sv1.AclPolicy{Approvals: 1, ApprovalServices: "web*"}); !res.GetAccepted() {
		t.Fatal(res)
	}
	in := applyIntent("apply-ungated", "ungated")
	in.GetApplyRollout().GetSpec().Service = "web-ungated"
	if res := sendSigned(t, nc, alice, bus.IntentKindRollout, in); !res.GetAccepted() {
		t.Fatalf("without --require-gates an ungated rollout is the author's choice: %v", res)
	}
}
