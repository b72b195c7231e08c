package coordinator

import (
	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Agreement is how the document a node applied relates to the document the
// cluster wants it to have.
type Agreement int

const (
	// Behind: the node holds an older fence; it is still converging (or
	// stuck, which staleness and status messages show).
	Behind Agreement = iota
	// Current: the node applied exactly the wanted document. Only this
	// counts as converged.
	Current
	// Diverged: the node holds a higher fence than the cluster published: a
	// document of another lineage (a cluster rebuilt without raising its
	// epoch) or of a key this cluster no longer uses. It will ignore
	// everything this cluster sends until an operator raises the epoch, so
	// it is never counted as converged.
	Diverged
)

// agreement compares a node's applied fence with the wanted one. It is the
// one place that decides convergence; the rollout controller, the status
// views and the divergence metric all go through it.
func agreement(applied, want bus.Fence) Agreement {
	switch c := applied.Compare(want); {
	case c == 0:
		return Current
	case c > 0:
		return Diverged
	}
	return Behind
}

// nodeFence is the fence a node reported for one service.
func nodeFence(n *sv1.NodeView) bus.Fence {
	return bus.Fence{Epoch: max(n.GetAppliedEpoch(), 1), Generation: n.GetAppliedGeneration()}
}

// The agent's names for a pre-traffic hook's point and for a failed run
// (agent/hooks), as its status carries them.
const (
	hookPointPreTraffic = "preTraffic"
	hookStateFailed     = "failed"
)

// hookHeld reports whether a node applied generation with the rollout's new
// backend at 0 because a pre-traffic hook failed for it there: its status
// lists a failed pre-traffic run at that very generation. Such a node did
// take the document (the rollout goes on without it) but does not serve
// what the document asks of it, so it is never counted converged; a later
// generation that gives it weight runs the hook again.
func hookHeld(generation uint64, runs []*sv1.HookRun) bool {
	for _, r := range runs {
		if r.GetPoint() == hookPointPreTraffic && r.GetState() == hookStateFailed && r.GetGeneration() == generation {
			return true
		}
	}
	return false
}

// NodeHeld reports whether a failed pre-traffic hook keeps a node on the
// old backend at the generation it applied. Clients that wait for the
// fleet use it to name such nodes as the coordinators do.
func NodeHeld(n *sv1.NodeView) bool { return hookHeld(n.GetAppliedGeneration(), n.GetHookRuns()) }
