package fsm

import (
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func entryLog(t *testing.T, index uint64, typ MessageType, body proto.Message) *raft.Log {
	t.Helper()
	b, err := Encode(typ, body)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

// TestFSM_AclAndAuditEntriesRoundTripThroughASnapshot applies the first
// admin, a signed grant and a policy, a refusal and an export mark through
// Raft entries, persists a snapshot and restores it into a fresh state
// machine: roles, policy, the chain head and the held records come back.
func TestFSM_AclAndAuditEntriesRoundTripThroughASnapshot(t *testing.T) {
	f := New(Hooks{})
	f.Apply(entryLog(t, 1, AclBootstrapType, &sv1.AclBootstrapEntry{Key: "UADMIN", Name: "root"}))
	grant := &sv1.IntentEntry{Signer: "UADMIN", Intent: &sv1.Intent{Id: "g", Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{
		Change: &sv1.AclChange_Grant{Grant: &sv1.AclGrant{Key: "UALICE", Name: "alice", Role: "deployer", Services: "web"}}}}}}
	if r := f.Apply(entryLog(t, 2, IntentType, grant)).(Response); !r.Applied.Result.GetAccepted() {
		t.Fatal(r.Applied.Result)
	}
	pol := &sv1.IntentEntry{Signer: "UADMIN", Intent: &sv1.Intent{Id: "p", Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{
		Change: &sv1.AclChange_Policy{Policy: &sv1.AclPolicy{Approvals: 2, DrillMaxNodes: 3}}}}}}
	f.Apply(entryLog(t, 3, IntentType, pol))
	f.Apply(entryLog(t, 4, AuditRefusalType, &sv1.AuditRefusalEntry{IntentId: "x", Code: "unsigned", Reason: "not signed"}))
	f.Apply(entryLog(t, 5, AuditExportedType, &sv1.AuditExportedEntry{Through: 2}))

	head := f.State().AuditHead()
	if head.GetSeq() != 4 || head.GetExported() != 2 {
		t.Fatalf("head %v, want 4 records, 2 exported", head)
	}
	g := roundTrip(t, f)
	if !proto.Equal(f.State().Snapshot(), g.State().Snapshot()) {
		t.Fatal("restored state differs")
	}
	if !g.State().Enforcing() || g.State().Acl().GetPolicy().GetApprovals() != 2 || len(g.State().AuditEntries(0, 0)) != 4 {
		t.Fatalf("restored acl %v, %d records", g.State().Acl(), len(g.State().AuditEntries(0, 0)))
	}
}
