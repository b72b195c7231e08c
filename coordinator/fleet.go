package coordinator

import (
	"cmp"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/coordinator/rollout"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
	"google.golang.org/protobuf/proto"
)

// fleet is every coordinator's soft view of the agents: their last status
// and when it arrived. It is not replicated; a new leader rebuilds it from
// heartbeats within one heartbeat period.
type fleet struct {
	staleAfter time.Duration
	// forgetAfter is how long a node may be silent before the view
	// forgets it (DefaultForgetAfter when zero).
	forgetAfter time.Duration
	metrics     *metrics
	now         func() time.Time
	log         *slog.Logger
	// current is the fence of a service's current document in this
	// replica's state; ok is false for a service with none.
	current func(service string) (f bus.Fence, ok bool)
	// epoch is the cluster's current epoch.
	epoch func() uint64
	// drillTarget reports whether a node is one of a drill's targets in
	// this replica's state, and when the drill was to start.
	drillTarget func(drill, node string) (startAt time.Time, ok bool)
	// stages times the agents' part of the decision path; nil times
	// nothing.
	stages *stageClock

	mu    sync.RWMutex
	nodes map[string]*nodeSeen
	// tallies count each service's live, converged and stale nodes
	// (fleet_tally.go); heard[heardHead:] are the arrivals not yet old
	// enough to make their node stale, oldest first.
	tallies   map[string]*serviceTally
	heard     []heardAt
	heardHead int
	// staled[staledHead:] are the nodes the sweep marked stale, in the
	// order they went silent, for forgetting them.
	staled     []heardAt
	staledHead int
	// diverged remembers, per node and service, the fence that was
	// reported as diverged, so the warning is logged once per change.
	diverged map[[2]string]bus.Fence
	// divergedCountedAt is when the diverged nodes were last counted;
	// divergedGauged are the services whose gauge that count set above 0.
	divergedCountedAt time.Time
	divergedGauged    map[string]bool
	// faultSeen is when each (node, drill) fault was first reported active.
	faultSeen map[[2]string]time.Time
	// conflicts are the services whose bucket holds, under the fence of
	// their current document, a verified document with other content (a
	// lineage a disaster recovery lost), as this coordinator's publisher
	// last found. A node that applied that fence applied the other
	// document, so it is not counted as converged.
	conflicts map[string]bus.Fence
	// localRollbacks are the local rollbacks nodes reported, until their
	// rollouts' histories have them (fleet_localrollback.go).
	localRollbacks localRollbacks
	// faultsSweptAt is when old fault sightings were last let go.
	faultsSweptAt time.Time
	// listeningSince is when this coordinator began to take agents'
	// status; zero before. askedAt is when it asked every agent for its
	// status (bus.StatusAskSubject); zero if it could not.
	listeningSince time.Time
	askedAt        time.Time

	// refusals paces the warnings about refused statuses.
	refusals refusalLog
}

// refusalLog paces warnings about refused messages: the first is logged,
// then at most one every refusalLogEvery, saying how many were refused
// without a line of their own in between (each is counted in a metric).
// A flood of refusals from stolen credentials must not flood the log.
type refusalLog struct {
	mu   sync.Mutex
	last time.Time
	held int
}

// refusalLogEvery is how often, at most, refusals of one kind are logged.
const refusalLogEvery = 10 * time.Second

// due reports whether a refusal at now gets its log line, and how many
// refusals before it did not.
func (r *refusalLog) due(now time.Time) (held int, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < refusalLogEvery {
		r.held++
		return 0, false
	}
	held, r.held, r.last = r.held, 0, now
	return held, true
}

// statusAskGrace is how long after asking every agent for its status a
// coordinator takes the nodes it has heard from for the fleet: agents
// answer within their status window (docs/agent.md suggests 200 ms for
// fleets of thousands), and the bus carries thousands of statuses a second.
const statusAskGrace = 2 * time.Second

// listening marks the start of the status subscription.
func (f *fleet) listening() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listeningSince = f.now()
}

// relisten starts the view over when this coordinator is back on the bus:
// the statuses sent while it was off are lost, and the nodes it did not
// hear from for the stale period went stale. Until it has asked again and
// the agents had the grace to answer (or for the stale period), the nodes
// it hears are not the fleet, as at start.
func (f *fleet) relisten() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listeningSince = f.now()
	f.askedAt = time.Time{}
}

// asked marks that every agent was asked for its status.
func (f *fleet) asked() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.askedAt = f.now()
}

// Settled reports whether this coordinator's view of the fleet is whole:
// it asked every agent for its status at least statusAskGrace ago, or has
// taken statuses for the stale period (every live node has sent one by
// then). Before, the nodes it has heard from are not the fleet: a service
// with no live node may have nodes not heard from yet, and a step whose
// heard nodes all applied may still have nodes serving the old weights.
func (f *fleet) Settled() bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.listeningSince.IsZero() {
		return false
	}
	now := f.now()
	return now.Sub(f.listeningSince) >= f.staleAfter || (!f.askedAt.IsZero() && now.Sub(f.askedAt) >= statusAskGrace)
}

var _ rollout.Settler = (*fleet)(nil)

// divergedRecount is how often, at most, a status that changes nothing
// recounts the diverged nodes (whose count falls as they go stale).
const divergedRecount = time.Second

type nodeSeen struct {
	status *sv1.AgentStatus
	seen   time.Time
	// stale is set by the sweep once the node was silent for the stale
	// period; counted is what it adds to the tallies.
	stale   bool
	counted []countedService
}

// silent reports whether n is stale at now: not heard from for the stale
// period, or its agent said it stopped. The sweep marks the first kind in
// its own time; reads that look at ages go by this. The caller holds f.mu.
func (f *fleet) silent(n *nodeSeen, now time.Time) bool {
	return n.stale || now.Sub(n.seen) > f.staleAfter
}

func newFleet(staleAfter time.Duration, m *metrics, log *slog.Logger) *fleet {
	return &fleet{
		staleAfter: staleAfter, metrics: m, now: time.Now, log: log,
		current:     func(string) (bus.Fence, bool) { return bus.Fence{}, false },
		epoch:       func() uint64 { return 1 },
		drillTarget: func(string, string) (time.Time, bool) { return time.Time{}, false },
		nodes:       map[string]*nodeSeen{}, diverged: map[[2]string]bus.Fence{}, divergedGauged: map[string]bool{}, faultSeen: map[[2]string]time.Time{},
		localRollbacks: newLocalRollbacks(),
		tallies:        map[string]*serviceTally{},
	}
}

func (f *fleet) handleStatus(msg *nats.Msg) {
	var st sv1.AgentStatus
	if err := proto.Unmarshal(msg.Data, &st); err != nil || st.GetNode() == "" {
		f.metrics.statusRejected.WithLabelValues("malformed").Inc()
		if held, ok := f.refusals.due(f.now()); ok {
			f.log.Warn("agent status refused: it does not decode or names no node", "subject", msg.Subject, "err", err,
				"refused_before_unlogged", held)
		}
		return
	}
	// A node's credentials publish only on its own status subject; a status
	// naming another node is a forgery of that node's convergence and faults.
	if msg.Subject != bus.StatusSubject(st.GetNode()) {
		f.metrics.statusRejected.WithLabelValues("wrong_subject").Inc()
		if held, ok := f.refusals.due(f.now()); ok {
			f.log.Warn("agent status refused: the node it names is not its subject's, which names the credentials that sent it (revoke a node you no longer trust)",
				"subject", msg.Subject, "node", st.GetNode(), "refused_before_unlogged", held)
		}
		return
	}
	// An agent keeps one status per service; a second entry for one would
	// count the node twice in that service's tallies, and which of the two
	// the views show would be an accident of order.
	if svc, ok := namedTwice(&st); ok {
		f.metrics.statusRejected.WithLabelValues("malformed").Inc()
		if held, ok := f.refusals.due(f.now()); ok {
			f.log.Warn("agent status refused: it names a service twice; the node's earlier status still counts",
				"subject", msg.Subject, "node", st.GetNode(), "service", svc, "refused_before_unlogged", held)
		}
		return
	}
	f.metrics.statuses.Inc()
	now := f.now()
	f.mu.Lock()
	if f.stages != nil {
		var prev *sv1.AgentStatus
		if n := f.nodes[st.GetNode()]; n != nil {
			prev = n.status
		}
		f.stages.status(prev, &st, now)
	}
	var prevStatus *sv1.AgentStatus
	if prev := f.nodes[st.GetNode()]; prev != nil {
		f.count(st.GetNode(), prev, -1)
		prevStatus = prev.status
	}
	n := &nodeSeen{status: &st, seen: now, counted: counted(&st)}
	if st.GetStopping() {
		// An agent shutting down cleanly says so: the node is stale now,
		// not after the stale period, and forgotten as a silent one is.
		n.stale = true
		f.staled = append(f.staled, heardAt{node: st.GetNode(), seen: now})
		f.log.Info("agent stopped: its node is counted stale until it is heard from again", "node", st.GetNode())
	}
	f.nodes[st.GetNode()] = n
	f.count(st.GetNode(), n, 1)
	f.heard = append(f.heard, heardAt{node: st.GetNode(), seen: now})
	f.sweep(now)
	f.checkDivergence(prevStatus, &st)
	f.localRollbacks.heard(&st)
	for _, flt := range st.GetFaults() {
		k := [2]string{st.GetNode(), flt.GetDrill()}
		if _, ok := f.faultSeen[k]; !ok {
			// Only a drill's targets inject its fault, and a node's
			// status may name any drills: a fault of a drill this
			// replica does not know, or of one the node is not a
			// target of, would be kept for good.
			startAt, ok := f.drillTarget(flt.GetDrill(), st.GetNode())
			if !ok {
				continue
			}
			at := now
			if s := flt.GetSince(); s != nil && s.AsTime().Before(now) {
				// The agent's own time of injection, but never before the
				// drill was to start: a node's clock, or its credentials,
				// must not move the report's first injection earlier.
				at = s.AsTime()
				if at.Before(startAt) {
					at = startAt
				}
			}
			f.faultSeen[k] = at
		}
	}
	f.mu.Unlock()
}

// namedTwice returns a service st names more than once.
func namedTwice(st *sv1.AgentStatus) (string, bool) {
	seen := make(map[string]bool, len(st.GetServices()))
	for _, svc := range st.GetServices() {
		if seen[svc.GetService()] {
			return svc.GetService(), true
		}
		seen[svc.GetService()] = true
	}
	return "", false
}

// nodesFor returns the view of every node that runs service, live or stale,
// sorted by node id. The views share the maps, hook runs and local
// rollbacks of the statuses they come from, which are never changed once
// received (a node's next status replaces its last): callers read them and
// never change them. Copying them was most of a view's cost, at 10,000
// nodes and several reads a second.
func (f *fleet) nodesFor(service string) []*sv1.NodeView {
	cur, known := f.current(service)
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
			v := &sv1.NodeView{
				Node:              n.status.GetNode(),
				AppliedGeneration: svc.GetAppliedGeneration(),
				Weights:           svc.GetWeights(),
				Driver:            svc.GetDriver(),
				Message:           svc.GetMessage(),
				Stale:             f.silent(n, now),
				Stopped:           n.status.GetStopping(),
				SecondsSinceSeen:  age.Seconds(),
				Labels:            n.status.GetLabels(),
				AppliedEpoch:      svc.GetAppliedEpoch(),
				DocumentExpired:   svc.GetDocumentExpired(),
				HookRuns:          svc.GetHookRuns(),
				ObservedWeights:   svc.GetObservedWeights(),
				ObservedMatches:   svc.GetObservedMatches(),
				Drift:             svc.GetDrift(),
				LocalRollback:     svc.GetLocalRollback(),
				Hooks:             n.status.GetHooks(),
			}
			if known {
				v.Diverged = agreement(nodeFence(v), cur) == Diverged
			}
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b *sv1.NodeView) int { return cmp.Compare(a.GetNode(), b.GetNode()) })
	return out
}

// converged counts the live nodes that applied exactly the document of
// fence want and whose proxy is seen doing it, and the live nodes in all.
// setConflict records that the bucket holds another document of fence f
// for service; clearConflict that it holds this cluster's own (or that this
// coordinator no longer publishes: service "" clears them all).
func (f *fleet) setConflict(service string, fence bus.Fence) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conflicts == nil {
		f.conflicts = map[string]bus.Fence{}
	}
	f.conflicts[service] = fence
}

func (f *fleet) clearConflict(service string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if service == "" {
		clear(f.conflicts)
		return
	}
	delete(f.conflicts, service)
}

// conflicted reports whether the bucket holds another document than this
// cluster's under fence want for service.
func (f *fleet) conflicted(service string, want bus.Fence) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	c, ok := f.conflicts[service]
	return ok && c == want
}

// convergedService is converged for the nodes of one service, none of them
// counted (nor held) while the bucket holds another document of fence want.
func (f *fleet) convergedService(service string, nodes []*sv1.NodeView, want bus.Fence) (applied, live int, held []string) {
	applied, live, held = converged(nodes, want)
	if f.conflicted(service, want) {
		applied, held = 0, nil
	}
	return applied, live, held
}

// converged also names the live nodes that applied want but are kept on
// the old backend by a failed pre-traffic hook (hookHeld): they are not
// counted converged.
func converged(nodes []*sv1.NodeView, want bus.Fence) (applied, live int, held []string) {
	for _, n := range nodes {
		if n.GetStale() {
			continue
		}
		live++
		if agreement(nodeFence(n), want) == Current && observedMatches(n) {
			if NodeHeld(n) {
				held = append(held, n.GetNode())
				continue
			}
			applied++
		}
	}
	return applied, live, held
}

// Held names, sorted, the live nodes of service that applied generation in
// the cluster's current epoch and are kept on the old backend there by a
// failed pre-traffic hook (ConvergedAt's held: it looks at every node
// only when the tallies count some).
func (f *fleet) Held(service string, generation uint64) []string {
	_, _, held := f.ConvergedAt(service, bus.Fence{Epoch: f.epoch(), Generation: generation})
	return held
}

// heldAt names, sorted, the live nodes of service at fence want whose
// proxies do it and that a failed pre-traffic hook holds. It looks at every
// node; the caller holds f.mu.
func (f *fleet) heldAt(service string, want bus.Fence) []string {
	var held []string
	for id, n := range f.nodes {
		if n.stale {
			continue
		}
		for _, c := range n.counted {
			if c.service == service && c.fence == want && c.matches && c.held {
				held = append(held, id)
			}
		}
	}
	slices.Sort(held)
	return held
}

// observedMatches is true when a node's proxy, as its agent last read it
// back, does what the agent applied: the agent says so, and the weights it
// read are the weights it applied. What the agent last wrote is not enough:
// a proxy restarted from its config serves other weights until repaired.
func observedMatches(n *sv1.NodeView) bool {
	return doesApplied(n.GetObservedMatches(), n.GetWeights(), n.GetObservedWeights(), n.GetLocalRollback(), n.GetAppliedGeneration())
}

// NodeDoes reports whether a node's proxy, as its agent last read it back,
// does the document the node applied: what the coordinators require of a
// node counted as converged besides its fence. Clients that wait for the
// fleet use it to count as the coordinators do.
func NodeDoes(n *sv1.NodeView) bool { return observedMatches(n) }

// doesApplied decides for observedMatches and statusMatches. A node whose
// local guard overrode the applied generation keeps that generation (so
// that the same document does not move it back onto the breaching backend)
// but serves the old backend: its proxy matches what the guard set, not
// the document. A guard's override of an earlier generation that a node in
// no wave still carries is what the document asks of it: keep the weights.
func doesApplied(agentSays bool, applied, observed map[string]uint32, lr *sv1.LocalRollback, generation uint64) bool {
	if !agentSays {
		return false
	}
	if lr != nil && lr.GetGeneration() == generation {
		return false
	}
	for b, w := range applied {
		if hw, ok := observed[b]; !ok || hw != w {
			return false
		}
	}
	return true
}

// checkDivergence warns, once per change, about a node that holds a newer
// document than the current one, and keeps the per-service gauge; prev is
// the node's status before st, or nil. The caller holds f.mu.
func (f *fleet) checkDivergence(prev, st *sv1.AgentStatus) {
	changed := false
	// A service the node no longer reports (dropped from its config, or
	// renamed) holds no document of the node's any more.
	for _, svc := range prev.GetServices() {
		k := [2]string{st.GetNode(), svc.GetService()}
		if _, was := f.diverged[k]; !was || slices.ContainsFunc(st.GetServices(), func(s *sv1.ServiceStatus) bool { return s.GetService() == k[1] }) {
			continue
		}
		delete(f.diverged, k)
		changed = true
		f.log.Info("node no longer diverged: it does not run the service any more", "node", k[0], "service", k[1])
	}
	for _, svc := range st.GetServices() {
		k := [2]string{st.GetNode(), svc.GetService()}
		cur, ok := f.current(svc.GetService())
		have := bus.Fence{Epoch: max(svc.GetAppliedEpoch(), 1), Generation: svc.GetAppliedGeneration()}
		if !ok || agreement(have, cur) != Diverged {
			if _, was := f.diverged[k]; was {
				delete(f.diverged, k)
				changed = true
				f.log.Info("node no longer diverged", "node", k[0], "service", k[1], "epoch", have.Epoch, "generation", have.Generation)
			}
		} else if prev, was := f.diverged[k]; !was || prev != have {
			f.diverged[k] = have
			changed = true
			f.metrics.divergences.WithLabelValues(k[1]).Inc()
			f.log.Warn("node holds a newer document than this cluster published; it ignores the current one and is not counted as converged (after rebuilding the coordinators from empty data, raise the epoch: switchyard coordinator raise-epoch)",
				"node", k[0], "service", k[1], "epoch", have.Epoch, "generation", have.Generation, "current_epoch", cur.Epoch, "current_generation", cur.Generation)
		}
	}
	// Counting walks every diverged node: after a rebuild from empty data
	// that can be the whole fleet, and every status of it would walk it
	// again. So the count is taken when a node joins or leaves the set,
	// and otherwise (a diverged node going stale) at most once a second.
	now := f.now()
	if !changed && (len(f.diverged) == 0 || now.Sub(f.divergedCountedAt) < divergedRecount) {
		return
	}
	f.divergedCountedAt = now
	counts := map[string]int{}
	for k := range f.diverged {
		if n := f.nodes[k[0]]; n != nil && !f.silent(n, now) {
			counts[k[1]]++
		}
	}
	// Every service counted last time is set again: its diverged nodes
	// may have gone stale while only other services' nodes report.
	for svc := range f.divergedGauged {
		if counts[svc] == 0 {
			f.metrics.diverged.WithLabelValues(svc).Set(0)
			delete(f.divergedGauged, svc)
		}
	}
	for _, svc := range st.GetServices() {
		f.metrics.diverged.WithLabelValues(svc.GetService()).Set(float64(counts[svc.GetService()]))
	}
	for svc, n := range counts {
		f.metrics.diverged.WithLabelValues(svc).Set(float64(n))
		f.divergedGauged[svc] = true
	}
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
	now := f.now()
	for id, n := range f.nodes {
		if f.silent(n, now) {
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
