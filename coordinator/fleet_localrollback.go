package coordinator

import (
	"cmp"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/coordinator/rollout"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var _ rollout.Guarded = (*fleet)(nil)

// localRollbacks keeps, per node and service, the newest local rollback
// the node's status reported, and which of them the leader has not yet
// seen in their rollout's history: bounded by the fleet's nodes and
// services, and a pass looks at the pending ones only, so it costs what
// changed, not the fleet.
type localRollbacks struct {
	byNode  map[string]map[string]*sv1.LocalRollback
	pending map[[2]string]bool
}

func newLocalRollbacks() localRollbacks {
	return localRollbacks{byNode: map[string]map[string]*sv1.LocalRollback{}, pending: map[[2]string]bool{}}
}

// sameLocalRollback says whether a and b are one move of the guard.
func sameLocalRollback(a, b *sv1.LocalRollback) bool {
	return a.GetGeneration() == b.GetGeneration() && a.GetRolloutId() == b.GetRolloutId() && a.GetAt().AsTime().Equal(b.GetAt().AsTime())
}

// heard takes the local rollbacks a status reports: the newest of each
// service (agents from before last_local_rollback report only the one the
// node serves now). The caller holds the fleet's lock.
func (l localRollbacks) heard(st *sv1.AgentStatus) {
	node := st.GetNode()
	for _, svc := range st.GetServices() {
		lr := cmp.Or(svc.GetLastLocalRollback(), svc.GetLocalRollback())
		if lr.GetRolloutId() == "" {
			continue
		}
		byService := l.byNode[node]
		if byService == nil {
			byService = map[string]*sv1.LocalRollback{}
			l.byNode[node] = byService
		}
		if prev := byService[svc.GetService()]; prev != nil && sameLocalRollback(prev, lr) {
			continue
		}
		byService[svc.GetService()] = lr
		l.pending[[2]string{node, svc.GetService()}] = true
	}
}

// forget drops a forgotten node's. The caller holds the fleet's lock.
func (l localRollbacks) forget(node string) {
	for svc := range l.byNode[node] {
		delete(l.pending, [2]string{node, svc})
	}
	delete(l.byNode, node)
}

// PendingLocalRollbacks lists the local rollbacks reported and not yet
// seen in their rollouts' history, by rollout and node.
func (f *fleet) PendingLocalRollbacks() []*sv1.NodeLocalRollback {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]*sv1.NodeLocalRollback, 0, len(f.localRollbacks.pending))
	for k := range f.localRollbacks.pending {
		out = append(out, &sv1.NodeLocalRollback{Node: k[0], Rollback: f.localRollbacks.byNode[k[0]][k[1]]})
	}
	slices.SortFunc(out, func(a, b *sv1.NodeLocalRollback) int {
		return cmp.Or(strings.Compare(a.GetRollback().GetRolloutId(), b.GetRollback().GetRolloutId()), strings.Compare(a.GetNode(), b.GetNode()))
	})
	return out
}

// LocalRollbackDone takes node's local rollback lr off the pending ones,
// unless the node has reported a newer one since.
func (f *fleet) LocalRollbackDone(node string, lr *sv1.LocalRollback) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for svc, cur := range f.localRollbacks.byNode[node] {
		if sameLocalRollback(cur, lr) {
			delete(f.localRollbacks.pending, [2]string{node, svc})
		}
	}
}
