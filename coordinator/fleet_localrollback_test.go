package coordinator

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A node's local rollback is pending from the status that reports it until
// the controller says it is done, whether the node still serves the
// guard's weights (local_rollback) or took a newer generation since
// (last_local_rollback); the same move heard again stays done, a newer one
// is pending again (one kept per node and service), and a forgotten
// node's go with it.
func TestFleet_LocalRollbacksArePendingUntilDone(t *testing.T) {
	now := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	f := clockedFleet(&now)
	f.forgetAfter = time.Minute
	move := func(gen uint64, at time.Time) *sv1.LocalRollback {
		return &sv1.LocalRollback{Generation: gen, RolloutId: "r1", From: "green", To: "blue", Reason: "error rate", At: timestamppb.New(at)}
	}
	first := move(7, now)
	pending := func() []string {
		var out []string
		for _, m := range f.PendingLocalRollbacks() {
			out = append(out, m.GetNode())
		}
		return out
	}
	hear(t, f, &sv1.AgentStatus{Node: "edge-2", Services: []*sv1.ServiceStatus{{AppliedGeneration: 7, LocalRollback: first, LastLocalRollback: first}}})
	// An agent from before last_local_rollback.
	hear(t, f, &sv1.AgentStatus{Node: "edge-1", Services: []*sv1.ServiceStatus{{AppliedGeneration: 7, LocalRollback: move(7, now)}}})
	hear(t, f, &sv1.AgentStatus{Node: "edge-3", Services: []*sv1.ServiceStatus{{AppliedGeneration: 7}}})
	if got := pending(); len(got) != 2 || got[0] != "edge-1" || got[1] != "edge-2" {
		t.Fatalf("pending %v, want edge-1 and edge-2", got)
	}
	f.LocalRollbackDone("edge-2", first)
	// Generation 9 replaced the guard's weights; the status still says
	// what the guard did, and it stays done.
	hear(t, f, &sv1.AgentStatus{Node: "edge-2", Services: []*sv1.ServiceStatus{{AppliedGeneration: 9, LastLocalRollback: move(7, now)}}})
	if got := pending(); len(got) != 1 || got[0] != "edge-1" {
		t.Fatalf("pending %v, want edge-1 alone", got)
	}
	// Done for a move the node has since replaced changes nothing.
	second := move(9, now.Add(time.Minute))
	hear(t, f, &sv1.AgentStatus{Node: "edge-2", Services: []*sv1.ServiceStatus{{AppliedGeneration: 9, LocalRollback: second, LastLocalRollback: second}}})
	f.LocalRollbackDone("edge-2", first)
	if got := f.PendingLocalRollbacks(); len(got) != 2 || got[1].GetNode() != "edge-2" || got[1].GetRollback().GetGeneration() != 9 {
		t.Fatalf("pending %v, want edge-2's move at generation 9 again", got)
	}
	// A move in the service's next rollout takes the place of edge-1's
	// older one: one kept per node and service.
	next := &sv1.LocalRollback{Generation: 12, RolloutId: "r2", From: "green", To: "blue", At: timestamppb.New(now)}
	hear(t, f, &sv1.AgentStatus{Node: "edge-1", Services: []*sv1.ServiceStatus{{AppliedGeneration: 12, LocalRollback: next, LastLocalRollback: next}}})
	if got := f.PendingLocalRollbacks(); len(got) != 2 || got[1].GetNode() != "edge-1" || got[1].GetRollback().GetRolloutId() != "r2" || len(f.localRollbacks.byNode["edge-1"]) != 1 {
		t.Fatalf("pending %v, want edge-2's and edge-1's move in r2 alone", got)
	}
	// A node silent long enough to be forgotten takes its moves along.
	now = now.Add(2 * time.Minute)
	hear(t, f, &sv1.AgentStatus{Node: "edge-3", Services: []*sv1.ServiceStatus{{AppliedGeneration: 9}}})
	now = now.Add(2 * time.Minute)
	hear(t, f, &sv1.AgentStatus{Node: "edge-3", Services: []*sv1.ServiceStatus{{AppliedGeneration: 9}}})
	if got := pending(); len(got) != 0 {
		t.Fatalf("pending %v after edge-1 and edge-2 were forgotten", got)
	}
}
