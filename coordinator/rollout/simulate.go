package rollout

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// SimNode is a node of a simulated fleet as the telemetry source sees it.
type SimNode struct {
	ID     string
	Labels map[string]string
	// Weights the node applied; empty before its first document.
	Weights map[string]uint32
	// Wave is the node's wave, or desired.NoWave.
	Wave int32
}

// Source produces the health reports of a simulated fleet. Reports returns
// the reports whose windows end in (from, to], given what each node has
// applied; a recording ignores the weights, a synthetic source follows them.
// Done reports that nothing more will come.
type Source interface {
	Nodes() []SimNode
	Reports(from, to time.Time, nodes []SimNode) []*sv1.HealthReport
	Done(t time.Time) bool
}

// SimOptions tune a simulation.
type SimOptions struct {
	// Start is when the rollout is applied.
	Start time.Time
	// Tick is how often the controller runs (the leader's tick).
	Tick time.Duration
	// ApplyDelay is how long a node takes to apply a new generation.
	ApplyDelay time.Duration
	// Until bounds the simulation; zero runs until the source is done or the
	// rollout ends.
	Until time.Duration
	// Analyzer, when set, replaces the statistical analysis over the
	// simulation's windows (to compare judges on the same telemetry).
	Analyzer func(*analysis.Store) Analyzer
}

// Event is one committed decision of a simulated rollout.
type Event struct {
	At      time.Time
	Offset  time.Duration
	Action  Action
	Phase   sv1.RolloutPhase
	Message string
	// Evidence is set for rollbacks.
	Evidence *sv1.Evidence
}

// SimResult is what a simulation did.
type SimResult struct {
	Events []Event
	Final  *sv1.Rollout
}

// Simulate runs a rollout spec against a telemetry source with a fake clock,
// through the same state machine, analysis and controller as the live
// leader: only Raft, the bus and the agents are replaced.
func Simulate(sp *sv1.RolloutSpec, src Source, o SimOptions) (*SimResult, error) {
	if o.Tick <= 0 {
		o.Tick = 250 * time.Millisecond
	}
	if o.ApplyDelay < 0 {
		return nil, errors.New("simulate: apply delay is negative")
	}
	st := state.New()
	raft := &simRaft{st: st}
	a := st.ApplyIntent(raft.next(), &sv1.IntentEntry{StampedAt: timestamppb.New(o.Start), Rules: state.Rules, Intent: &sv1.Intent{
		Id: "simulate", Operator: "simulator",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: proto.Clone(sp).(*sv1.RolloutSpec)}},
	}})
	if !a.Result.GetAccepted() {
		return nil, fmt.Errorf("simulate: spec refused: %s", a.Result.GetError())
	}
	fleet := newSimFleet(src.Nodes(), o.ApplyDelay)
	store := analysis.NewStore()
	res := &SimResult{}
	var an Analyzer = store
	if o.Analyzer != nil {
		an = o.Analyzer(store)
	}
	gate := &simGate{st: st, raft: raft, start: o.Start, res: res}
	c := &Controller{State: st, Raft: raft, Fleet: fleet, Analyzer: an, Gate: gate,
		OnDecision: func(r *sv1.Rollout, d Decision, now time.Time) {
			after := st.Rollout(r.GetId())
			res.Events = append(res.Events, Event{At: now, Offset: now.Sub(o.Start), Action: d.Action,
				Phase: after.GetPhase(), Message: d.Message, Evidence: d.Evidence})
		}}
	id := sp.GetName()
	prev := o.Start
	for now := o.Start; ; now = now.Add(o.Tick) {
		if o.Until > 0 && now.Sub(o.Start) > o.Until {
			break
		}
		ds := st.Desired(sp.GetService())
		fleet.advance(now, ds)
		nodes := fleet.view(ds)
		for _, r := range src.Reports(prev, now, nodes) {
			r = proto.Clone(r).(*sv1.HealthReport)
			n := fleet.nodes[r.GetNode()]
			if n == nil {
				continue
			}
			r.RolloutId, r.Generation, r.Wave = id, n.applied, n.wave
			if r.Generation == 0 {
				continue
			}
			if err := store.Add(r); err != nil {
				return nil, fmt.Errorf("simulate: report from %s at %s: %w", r.GetNode(), r.GetWindowEnd().AsTime(), err)
			}
		}
		prev = now
		if err := c.Step(now); err != nil {
			return nil, err
		}
		gate.answer(now) // rollback and post-rollout webhooks the step made due
		r := st.Rollout(id)
		if state.Terminal(r.GetPhase()) || (o.Until == 0 && src.Done(now)) {
			break
		}
	}
	res.Final = st.Rollout(id)
	return res, nil
}

type simRaft struct {
	st    *state.State
	index uint64
}

func (m *simRaft) next() uint64 { m.index++; return m.index }
func (m *simRaft) Advance(e *sv1.RolloutAdvanceEntry) error {
	m.st.ApplyAdvance(m.next(), e)
	return nil
}
func (m *simRaft) Rollback(e *sv1.RollbackEntry) error {
	m.st.ApplyRollback(m.next(), e)
	return nil
}
func (m *simRaft) Finish(e *sv1.RolloutFinishEntry) error {
	m.st.ApplyFinish(m.next(), e)
	return nil
}
func (m *simRaft) Converged(e *sv1.RolloutConvergedEntry) error {
	m.st.ApplyConverged(m.next(), e)
	return nil
}
func (m *simRaft) LocalRollback(e *sv1.LocalRollbackEntry) error {
	m.st.ApplyLocalRollback(m.next(), e)
	return nil
}

type simNode struct {
	SimNode
	applied  uint64
	wave     int32
	pending  uint64
	pendingT time.Time
}

type simFleet struct {
	delay time.Duration
	nodes map[string]*simNode
	order []string
}

func newSimFleet(nodes []SimNode, delay time.Duration) *simFleet {
	f := &simFleet{delay: delay, nodes: map[string]*simNode{}}
	for _, n := range nodes {
		f.nodes[n.ID] = &simNode{SimNode: n, wave: desired.NoWave}
		f.order = append(f.order, n.ID)
	}
	slices.Sort(f.order)
	return f
}

// advance lets nodes apply the desired state once the apply delay passed.
func (f *simFleet) advance(now time.Time, ds *sv1.DesiredState) {
	if ds == nil {
		return
	}
	for _, id := range f.order {
		n := f.nodes[id]
		if ds.GetGeneration() <= n.applied {
			continue
		}
		if n.pending != ds.GetGeneration() {
			n.pending, n.pendingT = ds.GetGeneration(), now
		}
		if now.Sub(n.pendingT) >= f.delay {
			w, wave, ok := desired.Evaluate(ds, n.ID, n.Labels)
			if ok {
				n.Weights = w
			}
			n.applied, n.wave = ds.GetGeneration(), wave
		}
	}
}

func (f *simFleet) view(*sv1.DesiredState) []SimNode {
	out := make([]SimNode, 0, len(f.order))
	for _, id := range f.order {
		n := f.nodes[id]
		out = append(out, SimNode{ID: n.ID, Labels: n.Labels, Weights: maps.Clone(n.Weights), Wave: n.wave})
	}
	return out
}

// Stale implements Fleet: simulated nodes never go silent.
func (f *simFleet) Stale(string) []string { return nil }

// Convergence implements Fleet: every simulated node is live.
func (f *simFleet) Convergence(_ string, generation uint64) (applied, live int) {
	for _, n := range f.nodes {
		live++
		if n.applied >= generation {
			applied++
		}
	}
	return applied, live
}
