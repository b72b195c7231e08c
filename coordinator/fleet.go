package coordinator

import (
	"cmp"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/chaos"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
	"google.golang.org/protobuf/proto"
)

// fleet is every coordinator's soft view of the agents: their last status
// and when it arrived. It is not replicated; a new leader rebuilds it from
// heartbeats within one heartbeat period.
type fleet struct {
	staleAfter time.Duration
	metrics    *metrics
	now        func() time.Time

	mu    sync.RWMutex
	nodes map[string]*nodeSeen
	// faultSeen is when each (node, drill) fault was first reported active.
	faultSeen map[[2]string]time.Time
}

type nodeSeen struct {
	status *sv1.AgentStatus
	seen   time.Time
}

func newFleet(staleAfter time.Duration, m *metrics) *fleet {
	return &fleet{staleAfter: staleAfter, metrics: m, now: time.Now, nodes: map[string]*nodeSeen{}, faultSeen: map[[2]string]time.Time{}}
}

func (f *fleet) handleStatus(msg *nats.Msg) {
	var st sv1.AgentStatus
	if err := proto.Unmarshal(msg.Data, &st); err != nil || st.GetNode() == "" {
		f.metrics.statusRejected.Inc()
		return
	}
	f.metrics.statuses.Inc()
	now := f.now()
	f.mu.Lock()
	f.nodes[st.GetNode()] = &nodeSeen{status: &st, seen: now}
	for _, flt := range st.GetFaults() {
		k := [2]string{st.GetNode(), flt.GetDrill()}
		if _, ok := f.faultSeen[k]; !ok {
			at := now
			if s := flt.GetSince(); s != nil && s.AsTime().Before(now) {
				at = s.AsTime() // the agent's own time of injection
			}
			f.faultSeen[k] = at
		}
	}
	f.mu.Unlock()
}

// nodesFor returns the view of every node that runs service, live or stale,
// sorted by node id.
func (f *fleet) nodesFor(service string) []*sv1.NodeView {
	f.mu.RLock()
	defer f.mu.RUnlock()
	now := f.now()
	var out []*sv1.NodeView
	for _, n := range f.nodes {
		for _, svc := range n.status.GetServices() {
			if svc.GetService() != service {
				continue
			}
			age := now.Sub(n.seen)
			out = append(out, &sv1.NodeView{
				Node:              n.status.GetNode(),
				AppliedGeneration: svc.GetAppliedGeneration(),
				Weights:           maps.Clone(svc.GetWeights()),
				Driver:            svc.GetDriver(),
				Message:           svc.GetMessage(),
				Stale:             age > f.staleAfter,
				SecondsSinceSeen:  age.Seconds(),
				Labels:            maps.Clone(n.status.GetLabels()),
				HookRuns:          svc.GetHookRuns(),
				Hooks:             n.status.GetHooks(),
			})
		}
	}
	slices.SortFunc(out, func(a, b *sv1.NodeView) int { return cmp.Compare(a.GetNode(), b.GetNode()) })
	return out
}

// converged counts the live nodes that applied generation, and the live
// nodes in all.
func converged(nodes []*sv1.NodeView, generation uint64) (applied, live int) {
	for _, n := range nodes {
		if n.GetStale() {
			continue
		}
		live++
		if n.GetAppliedGeneration() >= generation {
			applied++
		}
	}
	return applied, live
}

// Convergence counts the live nodes of a service that applied generation,
// and all live nodes of the service.
func (f *fleet) Convergence(service string, generation uint64) (applied, live int) {
	return converged(f.nodesFor(service), generation)
}

// Stale names the nodes of a service not heard from within the stale period.
func (f *fleet) Stale(service string) []string {
	var out []string
	for _, n := range f.nodesFor(service) {
		if n.GetStale() {
			out = append(out, n.GetNode())
		}
	}
	return out
}

// Live returns the live nodes that run a service, with their labels.
func (f *fleet) Live(service string) []chaos.Node {
	var out []chaos.Node
	for _, n := range f.nodesFor(service) {
		if !n.GetStale() {
			out = append(out, chaos.Node{ID: n.GetNode(), Labels: n.GetLabels()})
		}
	}
	return out
}

// FaultSeen is when a node first reported a drill's fault active.
func (f *fleet) FaultSeen(node, drill string) (time.Time, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t, ok := f.faultSeen[[2]string{node, drill}]
	return t, ok
}

// activeFaults names the nodes reporting a drill's fault active now.
func (f *fleet) activeFaults(drill string) []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var out []string
	for id, n := range f.nodes {
		if f.now().Sub(n.seen) > f.staleAfter {
			continue
		}
		for _, flt := range n.status.GetFaults() {
			if flt.GetDrill() == drill {
				out = append(out, id)
			}
		}
	}
	slices.Sort(out)
	return out
}
