package coordinator

import (
	"cmp"
	"maps"
	"slices"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The rollout controller asks how far a service converged on every pass,
// and it passes on every health report: with 10,000 nodes, recounting the
// fleet each time was a core's worth of work. The fleet keeps the counts
// instead, changed by each status (O(services of that node)) and by nodes
// going stale (each found once, in the order they were last heard from).

// serviceTally counts one service's nodes.
type serviceTally struct {
	// live counts the nodes heard from within the stale period.
	live int
	// current counts, per fence, the live nodes that applied it and whose
	// proxy is seen doing it; held those of them a failed pre-traffic hook
	// keeps on the old backend there.
	current map[bus.Fence]int
	held    map[bus.Fence]int
	// stale are the nodes silent longer than the stale period.
	stale map[string]struct{}
}

// countedService is what one node adds to one service's tally.
type countedService struct {
	service string
	fence   bus.Fence
	matches bool
	// held: a failed pre-traffic hook keeps the node on the old backend
	// at fence (hookHeld). The controller counts it; the views do not.
	held bool
}

// heardAt is one status arrival, for finding nodes that go stale.
type heardAt struct {
	node string
	seen time.Time
}

// counted lists what a status adds to the tallies.
func counted(st *sv1.AgentStatus) []countedService {
	out := make([]countedService, 0, len(st.GetServices()))
	for _, svc := range st.GetServices() {
		out = append(out, countedService{
			service: svc.GetService(),
			fence:   bus.Fence{Epoch: max(svc.GetAppliedEpoch(), 1), Generation: svc.GetAppliedGeneration()},
			matches: statusMatches(svc),
			held:    hookHeld(svc.GetAppliedGeneration(), svc.GetHookRuns()),
		})
	}
	return out
}

// statusMatches is observedMatches for a service status as it arrived.
func statusMatches(svc *sv1.ServiceStatus) bool {
	return doesApplied(svc.GetObservedMatches(), svc.GetWeights(), svc.GetObservedWeights(), svc.GetLocalRollback(), svc.GetAppliedGeneration())
}

func (f *fleet) tally(service string) *serviceTally {
	t := f.tallies[service]
	if t == nil {
		t = &serviceTally{current: map[bus.Fence]int{}, held: map[bus.Fence]int{}, stale: map[string]struct{}{}}
		f.tallies[service] = t
	}
	return t
}

// count adds (by +1) or removes (by -1) what n adds to the tallies. The
// caller holds f.mu.
func (f *fleet) count(id string, n *nodeSeen, by int) {
	for _, c := range n.counted {
		t := f.tally(c.service)
		switch {
		case n.stale && by > 0:
			t.stale[id] = struct{}{}
		case n.stale:
			delete(t.stale, id)
		default:
			t.live += by
			if c.matches {
				addCount(t.current, c.fence, by)
				if c.held {
					addCount(t.held, c.fence, by)
				}
			}
		}
		if by < 0 && t.live == 0 && len(t.stale) == 0 {
			// No node runs the service any more: a node's status names
			// what it likes, and a name no status names now is let go.
			delete(f.tallies, c.service)
		}
	}
}

// addCount adds by to m[k], deleting what comes to 0.
func addCount(m map[bus.Fence]int, k bus.Fence, by int) {
	if m[k] += by; m[k] == 0 {
		delete(m, k)
	}
}

// sweep marks the nodes silent for longer than the stale period as stale.
// Each arrival is looked at once, oldest first, so the cost follows the
// statuses received, not the fleet's size. The caller holds f.mu.
func (f *fleet) sweep(now time.Time) {
	for f.heardHead < len(f.heard) {
		h := f.heard[f.heardHead]
		if now.Sub(h.seen) <= f.staleAfter {
			break
		}
		f.heardHead++
		// Only the node's latest arrival can make it stale.
		if n := f.nodes[h.node]; n != nil && !n.stale && n.seen.Equal(h.seen) {
			f.count(h.node, n, -1)
			n.stale = true
			f.count(h.node, n, 1)
			f.staled = append(f.staled, h)
		}
	}
	// Drop the looked-at half once it is the larger part.
	if f.heardHead > 1024 && f.heardHead*2 > len(f.heard) {
		f.heard = append(f.heard[:0], f.heard[f.heardHead:]...)
		f.heardHead = 0
	}
	f.forget(now)
}

// DefaultForgetAfter is how long a node may be silent before the fleet
// view forgets it: nodes that leave for good (scaled down, replaced under
// a new name) would otherwise be counted stale, listed in every view and
// in every rollback's unconfirmed nodes, until the coordinator restarts.
const DefaultForgetAfter = 24 * time.Hour

// forget drops the nodes silent for longer than forgetAfter, in the order
// they went stale, and the fault sightings older than that. The caller
// holds f.mu.
func (f *fleet) forget(now time.Time) {
	after := cmp.Or(f.forgetAfter, DefaultForgetAfter)
	forgot := false
	for f.staledHead < len(f.staled) {
		h := f.staled[f.staledHead]
		if now.Sub(h.seen) <= after {
			break
		}
		f.staledHead++
		// A node heard again since is not the one that went silent.
		if n := f.nodes[h.node]; n != nil && n.stale && n.seen.Equal(h.seen) {
			f.count(h.node, n, -1)
			delete(f.nodes, h.node)
			for _, svc := range n.status.GetServices() {
				delete(f.diverged, [2]string{h.node, svc.GetService()})
			}
			f.localRollbacks.forget(h.node)
			forgot = true
		}
	}
	if f.staledHead > 1024 && f.staledHead*2 > len(f.staled) {
		f.staled = append(f.staled[:0], f.staled[f.staledHead:]...)
		f.staledHead = 0
	}
	if !forgot && now.Sub(f.faultsSweptAt) < time.Hour {
		return
	}
	f.faultsSweptAt = now
	// A drill's report reads when each target first reported its fault;
	// a drill lasts at most chaos.MaxDuration, and a forgotten node's
	// sightings go with it.
	for k, at := range f.faultSeen {
		if _, ok := f.nodes[k[0]]; !ok || now.Sub(at) > max(after, 2*chaos.MaxDuration) {
			delete(f.faultSeen, k)
		}
	}
	for svc, t := range f.tallies {
		if t.live == 0 && len(t.stale) == 0 && len(t.current) == 0 {
			delete(f.tallies, svc)
		}
	}
}

// sweptTally marks the nodes gone silent stale, then returns service's
// tally, nil when no node runs it. The caller holds f.mu.
func (f *fleet) sweptTally(service string) *serviceTally {
	f.sweep(f.now())
	return f.tallies[service]
}

// Convergence counts the live nodes of a service that applied exactly the
// document of generation in the cluster's current epoch and whose proxy is
// seen doing it, and all live nodes of the service. None count while the
// bucket holds another document of that fence (setConflict).
func (f *fleet) Convergence(service string, generation uint64) (applied, live int) {
	want := bus.Fence{Epoch: f.epoch(), Generation: generation}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.sweptTally(service)
	if t == nil {
		return 0, 0
	}
	if c, ok := f.conflicts[service]; ok && c == want {
		// The nodes at want hold the other document of that fence.
		return 0, t.live
	}
	return t.current[want], t.live
}

// ConvergedAt is convergedService read from the tallies: the live nodes of
// service that applied exactly fence want, whose proxies do it and that no
// failed pre-traffic hook holds; all live nodes; and, sorted, the held
// ones. None count while the bucket holds another document of want. It
// costs O(fences the nodes hold), and O(nodes) only when some are held.
func (f *fleet) ConvergedAt(service string, want bus.Fence) (applied, live int, held []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.sweptTally(service)
	if t == nil {
		return 0, 0, nil
	}
	if c, ok := f.conflicts[service]; ok && c == want {
		return 0, t.live, nil
	}
	if t.held[want] > 0 {
		held = f.heldAt(service, want)
	}
	return t.current[want] - t.held[want], t.live, held
}

// Reached counts the live nodes of a service whose proxies are seen doing
// the document of fence want or a newer one, not diverged
// (newer than the service's current fence), as a client counts them from
// the nodes' views (cmd/switchyard: --wait), and names, sorted, those of
// them a failed pre-traffic hook keeps on the old backend. It reads the
// tallies: O(fences the nodes hold), and O(nodes) only when some reached
// node is held.
func (f *fleet) Reached(service string, want bus.Fence) (reached, live int, held []string) {
	cur, known := f.current(service)
	in := func(fence bus.Fence) bool {
		return fence.Compare(want) >= 0 && (!known || agreement(fence, cur) != Diverged)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := f.sweptTally(service)
	if t == nil {
		return 0, 0, nil
	}
	heldCount := 0
	for fence, n := range t.current {
		if in(fence) {
			reached += n
			heldCount += t.held[fence]
		}
	}
	if heldCount > 0 {
		for id, n := range f.nodes {
			if n.stale {
				continue
			}
			for _, c := range n.counted {
				if c.service == service && c.matches && c.held && in(c.fence) {
					held = append(held, id)
				}
			}
		}
		slices.Sort(held)
	}
	return reached, t.live, held
}

// Stale names the nodes of a service not heard from within the stale
// period, sorted.
func (f *fleet) Stale(service string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sweep(f.now())
	t := f.tallies[service]
	if t == nil || len(t.stale) == 0 {
		return nil
	}
	return slices.Sorted(maps.Keys(t.stale))
}
