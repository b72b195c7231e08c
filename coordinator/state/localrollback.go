package state

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// MaxLocalRollbacks is how many nodes' local rollbacks one rollout's
// history names; a node reports its own, so a fleet whose guards all fire
// at once is named in part, and the rest is said in one line.
const MaxLocalRollbacks = 100

// LocalRollbackRecorded says whether r's history has node's local rollback
// of generation.
func LocalRollbackRecorded(r *sv1.Rollout, node string, generation uint64) bool {
	return slices.ContainsFunc(r.GetLocalRollbacks(), func(g *sv1.NodeGeneration) bool {
		return g.GetNode() == node && g.GetGeneration() == generation
	})
}

// ApplyLocalRollback records in a rollout's history, and in the audit as
// the node's own act, each node whose local guard moved it back to the old
// backend: once per node and generation, whichever leader proposed it and
// however often. A move of another rollout, or of a generation this
// rollout never had, is not recorded.
func (s *State) ApplyLocalRollback(index uint64, e *sv1.LocalRollbackEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil {
		return
	}
	for _, n := range e.GetNodes() {
		lr := n.GetRollback()
		gen := lr.GetGeneration()
		if n.GetNode() == "" || lr.GetRolloutId() != r.GetId() || gen == 0 || gen > r.GetGeneration() || LocalRollbackRecorded(r, n.GetNode(), gen) {
			continue
		}
		if len(r.GetLocalRollbacks()) >= MaxLocalRollbacks {
			if !r.GetLocalRollbacksCapped() {
				r.LocalRollbacksCapped = true
				s.record(r, index, e.GetStampedAt(), "", fmt.Sprintf(
					"more nodes' local guards moved them back than the history names (%d); fleet status shows the nodes that still serve their guard's weights",
					MaxLocalRollbacks))
			}
			continue
		}
		r.LocalRollbacks = append(r.LocalRollbacks, &sv1.NodeGeneration{Node: n.GetNode(), Generation: gen})
		s.recordLocalRollback(r, index, e.GetStampedAt(), n.GetNode(), localRollbackLine(n.GetNode(), lr))
	}
}

// localRollbackLine is the history line of one node's local rollback.
func localRollbackLine(node string, lr *sv1.LocalRollback) string {
	msg := fmt.Sprintf("local guard on %s moved it back to %s at generation %d", node, lr.GetTo(), lr.GetGeneration())
	if at := lr.GetAt(); at != nil {
		msg += " (" + at.AsTime().UTC().Format("15:04:05 UTC") + " by the node's clock)"
	}
	if reason := lr.GetReason(); reason != "" {
		msg += ": " + reason
	}
	return msg
}

// recordLocalRollback appends a history line the node's agent is the
// author of, and audits it as such (kind local_rollback, actor "agent
// NODE").
func (s *State) recordLocalRollback(r *sv1.Rollout, index uint64, at *timestamppb.Timestamp, node, message string) {
	appendHistory(r, index, at, "agent "+node, message)
	s.appendAudit(&sv1.AuditRecord{Index: index, At: at, Kind: "local_rollback", Actor: "agent " + node, Rollout: r.GetId(),
		Service: r.GetSpec().GetService(), Accepted: true, Message: message})
}
