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
