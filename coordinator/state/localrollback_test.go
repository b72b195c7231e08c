package state

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func guardMove(node, rollout string, gen uint64, reason string) *sv1.NodeLocalRollback {
	return &sv1.NodeLocalRollback{Node: node, Rollback: &sv1.LocalRollback{Generation: gen, RolloutId: rollout,
		From: "green", To: "blue", Reason: reason, At: timestamppb.New(t0.Add(30 * time.Second))}}
}

// auditRecords opens every audit record after seq.
func auditRecords(t *testing.T, s *State, after uint64) []*sv1.AuditRecord {
	t.Helper()
	var out []*sv1.AuditRecord
	for _, e := range s.AuditEntries(after, 0) {
		rec, err := audit.Open(e)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	return out
}

// A node's local rollback is written into its rollout's history, and into
// the audit as the node's agent's own act, once per node and generation:
// the same entry proposed again (a new leader, a pass before the first
// applied) adds nothing, and a move of another rollout or of a generation
// the rollout never had is not recorded.
func TestState_LocalRollbackIsRecordedOncePerNodeAndGeneration(t *testing.T) {
	s := New()
	s.ApplyIntent(7, applyEntry("i1", bgSpec("r1"), t0))
	head := s.AuditHead().GetSeq()
	at := timestamppb.New(t0.Add(time.Minute))
	e := &sv1.LocalRollbackEntry{Rollout: "r1", StampedAt: at, Nodes: []*sv1.NodeLocalRollback{
		guardMove("edge-3", "r1", 7, "cut off from the coordinators 45s; green error rate 31.0% over 120 requests"),
		guardMove("edge-4", "r0", 7, "another rollout's"),
		guardMove("edge-5", "r1", 8, "a generation r1 never had"),
		guardMove("", "r1", 7, "no node"),
	}}
	s.ApplyLocalRollback(8, e)
	s.ApplyLocalRollback(9, e)
	s.ApplyLocalRollback(10, &sv1.LocalRollbackEntry{Rollout: "gone", StampedAt: at, Nodes: []*sv1.NodeLocalRollback{guardMove("edge-3", "gone", 7, "x")}})

	r := s.Rollout("r1")
	var lines []string
	for _, h := range r.GetHistory() {
		if strings.Contains(h.GetMessage(), "local guard") {
			lines = append(lines, h.GetMessage()+" ("+h.GetOperator()+")")
		}
	}
	want := "local guard on edge-3 moved it back to blue at generation 7 (12:00:30 UTC by the node's clock): cut off from the coordinators 45s; green error rate 31.0% over 120 requests (agent edge-3)"
	if len(lines) != 1 || lines[0] != want {
		t.Fatalf("history lines %q, want one: %q", lines, want)
	}
	if got := r.GetLocalRollbacks(); len(got) != 1 || got[0].GetNode() != "edge-3" || got[0].GetGeneration() != 7 {
		t.Fatalf("recorded %v", got)
	}
	recs := auditRecords(t, s, head)
	if len(recs) != 1 || recs[0].GetKind() != "local_rollback" || recs[0].GetActor() != "agent edge-3" ||
		recs[0].GetRollout() != "r1" || recs[0].GetService() != "web" || recs[0].GetIndex() != 8 || !strings.HasPrefix(recs[0].GetMessage(), "local guard on edge-3") {
		t.Fatalf("audit records %v", recs)
	}
	// A replica restored from a snapshot records no move twice.
	restored, err := FromSnapshot(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	restored.ApplyLocalRollback(11, e)
	if n := len(restored.Rollout("r1").GetHistory()); n != len(r.GetHistory()) {
		t.Fatalf("after a restore the same entry made %d history lines, before %d", n, len(r.GetHistory()))
	}
}

// A rollout's history names at most MaxLocalRollbacks nodes' local
// rollbacks, and says once that there were more.
func TestState_LocalRollbacksBeyondTheCapAreSaidOnce(t *testing.T) {
	s := New()
	s.ApplyIntent(7, applyEntry("i1", bgSpec("r1"), t0))
	before := len(s.Rollout("r1").GetHistory())
	at := timestamppb.New(t0.Add(time.Minute))
	for i := range MaxLocalRollbacks + 30 {
		s.ApplyLocalRollback(uint64(8+i), &sv1.LocalRollbackEntry{Rollout: "r1", StampedAt: at,
			Nodes: []*sv1.NodeLocalRollback{guardMove(fmt.Sprintf("edge-%03d", i), "r1", 7, "error rate")}})
	}
	r := s.Rollout("r1")
	if len(r.GetLocalRollbacks()) != MaxLocalRollbacks || !r.GetLocalRollbacksCapped() {
		t.Fatalf("%d recorded, capped %v", len(r.GetLocalRollbacks()), r.GetLocalRollbacksCapped())
	}
	h := r.GetHistory()
	if n := len(h) - before; n != MaxLocalRollbacks+1 {
		t.Fatalf("%d history lines, want %d and one for the rest", n, MaxLocalRollbacks+1)
	}
	if last := h[len(h)-1].GetMessage(); !strings.HasPrefix(last, "more nodes' local guards moved them back than the history names (100)") {
		t.Fatalf("last line %q", last)
	}
}
