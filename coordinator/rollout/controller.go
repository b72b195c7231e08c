// Package rollout is the leader's rollout controller: a step function that
// looks at each live rollout, the fleet's convergence and the analysis, and
// decides whether to advance, promote, finish or roll back. It reaches Raft
// only through the narrow interface it defines, so tests and the simulator
// drive it without a cluster.
package rollout

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Action is what the controller does with a rollout on one tick.
type Action int

const (
	// Wait: nothing to do yet; Decision.Waiting says for what.
	Wait Action = iota
	// Advance to the next step or wave.
	Advance
	// Promote: every step is done; all traffic goes to the new backend.
	Promote
	// Finish a promoted rollout whose warm period is over.
	Finish
	// Rollback because a guardrail breached.
	Rollback
	// ConfirmRollback once the fleet applied the rollback.
	ConfirmRollback
	// Webhook marks a webhook call in a simulation's events; Decide never
	// returns it.
	Webhook
)

func (a Action) String() string {
	return [...]string{"wait", "advance", "promote", "finish", "rollback", "confirm-rollback", "webhook"}[a]
}

// Observation is what the controller knows about a rollout besides its
// replicated record.
type Observation struct {
	Now time.Time
	// Applied and Live count the live nodes of the service that applied the
	// rollout's current generation, and all live nodes of the service.
	Applied, Live int
	// Stale names the nodes of the service that went silent; they are not
	// waited for.
	Stale []string
	// Unsettled is set while the fleet view is too young to be the fleet
	// (Settler): "no live node" may mean none heard from yet, and "every
	// live node applied" may leave out nodes not heard from yet.
	Unsettled bool
	Analysis  analysis.Assessment
}

// Decision is the controller's verdict on one rollout.
type Decision struct {
	Action           Action
	ToWave, ToStep   int
	Evidence         *sv1.Evidence
	Message, Waiting string
}

// Decide is the rollout state machine's pure core.
func Decide(r *sv1.Rollout, obs Observation) Decision {
	converged := obs.Live > 0 && obs.Applied >= obs.Live && !obs.Unsettled
	waitNodes := func() Decision {
		if obs.Live == 0 && obs.Unsettled {
			return Decision{Waiting: "no node of " + r.GetSpec().GetService() + " heard from yet"}
		}
		if obs.Unsettled {
			return Decision{Waiting: fmt.Sprintf("%d of %d live nodes heard from so far applied generation %d; still hearing from the fleet",
				obs.Applied, obs.Live, r.GetGeneration())}
		}
		if obs.Live == 0 {
			return Decision{Waiting: "no live node runs " + r.GetSpec().GetService()}
		}
		return Decision{Waiting: fmt.Sprintf("%d of %d live nodes applied generation %d", obs.Applied, obs.Live, r.GetGeneration())}
	}
	switch r.GetPhase() {
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK:
		// Silent nodes are not waited for: with none live (all stale, or a
		// service no node runs) there is nobody to wait for, and waiting
		// would keep the service from any other rollout for good.
		if converged || (obs.Live == 0 && !obs.Unsettled) {
			msg := fmt.Sprintf("%d live nodes back on %s", obs.Live, r.GetSpec().GetFrom())
			if obs.Live == 0 {
				msg = fmt.Sprintf("no live node of %s to wait for", r.GetSpec().GetService())
			}
			if len(obs.Stale) > 0 {
				msg += fmt.Sprintf("; not heard from, so not confirmed: %s", strings.Join(obs.Stale, ", "))
			}
			return Decision{Action: ConfirmRollback, Message: msg}
		}
		return waitNodes()
	case sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED:
	default:
		return Decision{}
	}
	if b := obs.Analysis.Breach; b != nil {
		return Decision{Action: Rollback, Evidence: b, Message: b.GetSummary()}
	}
	if r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED {
		if !converged {
			return waitNodes()
		}
		until := r.GetPromotedAt().AsTime().Add(spec.KeepWarm(r.GetSpec()))
		if obs.Now.Before(until) {
			return Decision{Waiting: fmt.Sprintf("%s kept warm until %s", r.GetSpec().GetFrom(), until.UTC().Format(time.TimeOnly)+" UTC")}
		}
		return Decision{Action: Finish, Message: "completed"}
	}
	if r.GetPaused() {
		if why := r.GetPauseReason(); why != "" {
			return Decision{Waiting: "resume: paused because " + why}
		}
		return Decision{Waiting: "paused by an operator"}
	}
	plan := spec.Compile(r.GetSpec())
	if r.GetStartGate() {
		return Decision{Waiting: fmt.Sprintf("approval to start wave %s", plan[0].Wave.GetName())}
	}
	if !converged {
		return waitNodes()
	}
	w, s := int(r.GetWave()), int(r.GetStep())
	approved := r.GetApprovedWave() == r.GetWave() && r.GetApprovedStep() == r.GetStep()
	next := func(why string) Decision {
		nw, ns, promote := spec.Next(plan, w, s)
		if promote {
			return Decision{Action: Promote, Message: why + "; promoted"}
		}
		return Decision{Action: Advance, ToWave: nw, ToStep: ns, Message: why}
	}
	if w >= len(plan) {
		return next("past the last wave")
	}
	pw := plan[w]
	if s >= len(pw.Steps) {
		if w+1 < len(plan) && plan[w+1].Wave.GetManualGate() && !approved {
			return Decision{Waiting: fmt.Sprintf("approval to start wave %s", plan[w+1].Wave.GetName())}
		}
		return next(fmt.Sprintf("wave %s done", pw.Wave.GetName()))
	}
	step := pw.Steps[s]
	switch k := step.GetKind().(type) {
	case *sv1.Step_SetWeight:
		return next(fmt.Sprintf("wave %s at %d%% on every live node", pw.Wave.GetName(), k.SetWeight))
	case *sv1.Step_Pause:
		if d := k.Pause.GetDuration().AsDuration(); d > 0 {
			until := r.GetStepStartedAt().AsTime().Add(d)
			if obs.Now.Before(until) {
				return Decision{Waiting: fmt.Sprintf("pause until %s UTC", until.UTC().Format(time.TimeOnly))}
			}
			return next(fmt.Sprintf("paused %s", d))
		}
		if !approved {
			return Decision{Waiting: "approval to continue"}
		}
		return next("approved")
	case *sv1.Step_Analysis:
		need := int(k.Analysis.GetWindows())
		got := obs.Analysis.PassedSince(r.GetStepStartedAt().AsTime())
		if got < need {
			return Decision{Waiting: fmt.Sprintf("analysis: %d of %d windows passed%s", got, need, latest(obs.Analysis))}
		}
		if obs.Analysis.Method == spec.MethodSequential {
			// At 100% the old backend serves no node of the wave (nor
			// of earlier waves), so no node has both for the
			// not-worse evidence: a blue-green switch's
			// postPromotionWindows would wait forever. The windows'
			// absolute guardrails are the whole test there.
			if spec.WeightAt(pw.Steps, s) == 100 {
				return next(fmt.Sprintf("analysis passed %d windows; %s serves nothing at 100%% to compare with",
					got, r.GetSpec().GetFrom()))
			}
			if nw := obs.Analysis.NotWorse; !nw.OK() {
				return Decision{Waiting: fmt.Sprintf("analysis: %d windows passed; not yet shown not worse: %s", got, nw)}
			}
			return next(fmt.Sprintf("analysis passed %d windows; %s", got, obs.Analysis.NotWorse))
		}
		return next(fmt.Sprintf("analysis passed %d windows", got))
	}
	return Decision{Waiting: "unknown step kind"}
}

func latest(a analysis.Assessment) string {
	w, ok := a.Latest()
	if !ok {
		return ""
	}
	return fmt.Sprintf(" (last window %s: %s)", w.Verdict, w.Reason)
}

// Raft is how the controller commits decisions; the coordinator implements
// it over raftApply, the simulator over an in-memory state.
type Raft interface {
	Advance(*sv1.RolloutAdvanceEntry) error
	Rollback(*sv1.RollbackEntry) error
	Finish(*sv1.RolloutFinishEntry) error
	Converged(*sv1.RolloutConvergedEntry) error
	LocalRollback(*sv1.LocalRollbackEntry) error
}

// Rollouts reads the replicated rollouts.
type Rollouts interface {
	Rollouts() []*sv1.Rollout
}

// Fleet tells how many live nodes of a service applied a generation, and
// which nodes went silent.
type Fleet interface {
	Convergence(service string, generation uint64) (applied, live int)
	Stale(service string) []string
}

// Holder is a Fleet that can name the live nodes a failed pre-traffic hook
// keeps on the old backend at a generation: they applied it, so the
// rollout goes on without them, and its completion names them.
type Holder interface {
	Held(service string, generation uint64) []string
}

// Guarded is a Fleet that keeps the local rollbacks nodes reported (a
// node's local guard moving it back to a rollout's old backend) until the
// controller has seen them in their rollouts' histories.
type Guarded interface {
	// PendingLocalRollbacks lists the ones not yet seen there, by
	// rollout and node.
	PendingLocalRollbacks() []*sv1.NodeLocalRollback
	// LocalRollbackDone says node's local rollback lr needs no more
	// recording: its rollout's history has it, or never will.
	LocalRollbackDone(node string, lr *sv1.LocalRollback)
}

// RolloutReader reads one rollout, finished or not: a node cut off from
// the coordinators reports its local rollback when it is back, often after
// its rollout ended.
type RolloutReader interface {
	Rollout(id string) *sv1.Rollout
}

// maxLocalRollbacksPerEntry is how many nodes one LocalRollbackEntry
// names; the next pass proposes the rest.
const maxLocalRollbacksPerEntry = 20

// maxLocalRollbackReason is how much of a node's own reason for a local
// rollback the leader copies into the log (the agent writes one line).
const maxLocalRollbackReason = 300

// MaxFinishHeld is how many held nodes a completion names; the rest are
// counted.
const MaxFinishHeld = 20

// Settler is a Fleet that can say whether its view is whole: whether it has
// heard from every live node, so that the nodes it counts are the fleet. A
// Fleet that is not one is taken as settled.
type Settler interface {
	Settled() bool
}

// Analyzer assesses a rollout's telemetry.
type Analyzer interface {
	Assess(r *sv1.Rollout, now time.Time) analysis.Assessment
}

// Gate holds moves at webhook gates (coordinator/hooks).
type Gate interface {
	// Hold returns why r must not move to (toWave, toStep), or promote,
	// yet; "" lets the move go.
	Hold(r *sv1.Rollout, toWave, toStep int, promote bool, now time.Time) (string, error)
	// Start lets a rollout held before its first traffic start once its
	// gates are open; it returns what the rollout waits for.
	Start(r *sv1.Rollout, now time.Time) (string, error)
}

// Controller runs Decide over every live rollout and commits the results.
type Controller struct {
	State    Rollouts
	Raft     Raft
	Fleet    Fleet
	Analyzer Analyzer
	// Gate, if set, holds moves at webhook gates.
	Gate Gate
	Log  *slog.Logger
	// OnDecision, if set, is told every decision that commits something.
	OnDecision func(r *sv1.Rollout, d Decision, at time.Time)
}

// Observe gathers the observation of one rollout.
func (c *Controller) Observe(r *sv1.Rollout, now time.Time) Observation {
	applied, live := c.Fleet.Convergence(r.GetSpec().GetService(), r.GetGeneration())
	obs := Observation{Now: now, Applied: applied, Live: live, Stale: c.Fleet.Stale(r.GetSpec().GetService())}
	if s, ok := c.Fleet.(Settler); ok {
		obs.Unsettled = !s.Settled()
	}
	if p := r.GetPhase(); p == sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || p == sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED {
		obs.Analysis = c.Analyzer.Assess(r, now)
	}
	return obs
}

// Step makes one pass over the live rollouts at now. Errors from Raft (lost
// leadership) end the pass; the next leader decides again from the same
// committed state.
func (c *Controller) Step(now time.Time) error {
	for _, r := range c.State.Rollouts() {
		switch r.GetPhase() {
		case sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
			continue
		}
		if r.GetHoldStart() {
			// A first wave's manual gate is opened by an approval only. A
			// paused rollout does not start (pause stops advancing), and
			// its gates are asked again once it is resumed.
			if c.Gate != nil && r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING && !r.GetStartGate() && !r.GetPaused() {
				if _, err := c.Gate.Start(r, now); err != nil {
					return fmt.Errorf("rollout %s: start: %w", r.GetId(), err)
				}
			}
			continue
		}
		d := Decide(r, c.Observe(r, now))
		if d.Action == Wait {
			continue
		}
		if c.Gate != nil && (d.Action == Advance || d.Action == Promote) {
			waiting, err := c.Gate.Hold(r, d.ToWave, d.ToStep, d.Action == Promote, now)
			if err != nil {
				return fmt.Errorf("rollout %s: gate: %w", r.GetId(), err)
			}
			if waiting != "" {
				continue
			}
		}
		if err := c.commit(r, d, now); err != nil {
			return fmt.Errorf("rollout %s: %s: %w", r.GetId(), d.Action, err)
		}
		if c.Log != nil {
			c.Log.Info("rollout decision", "rollout", r.GetId(), "service", r.GetSpec().GetService(),
				"action", d.Action.String(), "generation", r.GetGeneration(), "message", d.Message)
		}
		if c.OnDecision != nil {
			c.OnDecision(r, d, now)
		}
	}
	// Last, so that recording what nodes did never holds up a decision.
	if err := c.recordLocalRollbacks(now); err != nil {
		return fmt.Errorf("local rollbacks: %w", err)
	}
	return nil
}

// recordLocalRollbacks proposes, for each rollout, the local rollbacks
// its nodes reported that its history does not have, at most
// maxLocalRollbacksPerEntry in one entry (the next pass proposes more).
// Those it has, or can never have (an unknown rollout, a generation it
// never had, a history that names its maximum), are done. Replicas record
// each once, so proposing one again (a new leader, a pass before the
// entry applied) adds nothing.
func (c *Controller) recordLocalRollbacks(now time.Time) error {
	g, ok := c.Fleet.(Guarded)
	rr, ok2 := c.State.(RolloutReader)
	if !ok || !ok2 {
		return nil
	}
	pending := g.PendingLocalRollbacks()
	for len(pending) > 0 {
		id := pending[0].GetRollback().GetRolloutId()
		n := 1
		for n < len(pending) && pending[n].GetRollback().GetRolloutId() == id {
			n++
		}
		moves := pending[:n]
		pending = pending[n:]
		r := rr.Rollout(id)
		var fresh []*sv1.NodeLocalRollback
		for _, m := range moves {
			lr := m.GetRollback()
			if r == nil || r.GetLocalRollbacksCapped() || lr.GetGeneration() == 0 || lr.GetGeneration() > r.GetGeneration() ||
				state.LocalRollbackRecorded(r, m.GetNode(), lr.GetGeneration()) {
				g.LocalRollbackDone(m.GetNode(), lr)
				continue
			}
			if len(fresh) == maxLocalRollbacksPerEntry {
				continue
			}
			if reason := lr.GetReason(); len(reason) > maxLocalRollbackReason {
				lr = proto.Clone(lr).(*sv1.LocalRollback)
				lr.Reason = strings.ToValidUTF8(reason[:maxLocalRollbackReason], "") + "…"
				m = &sv1.NodeLocalRollback{Node: m.GetNode(), Rollback: lr}
			}
			fresh = append(fresh, m)
		}
		if len(fresh) == 0 {
			continue
		}
		if err := c.Raft.LocalRollback(&sv1.LocalRollbackEntry{Rollout: id, Nodes: fresh, StampedAt: timestamppb.New(now)}); err != nil {
			return fmt.Errorf("rollout %s: %w", id, err)
		}
		if c.Log != nil {
			c.Log.Info("nodes' local rollbacks recorded in the rollout's history", "rollout", id, "nodes", len(fresh))
		}
	}
	return nil
}

func (c *Controller) commit(r *sv1.Rollout, d Decision, now time.Time) error {
	at := timestamppb.New(now)
	switch d.Action {
	case Advance, Promote:
		return c.Raft.Advance(&sv1.RolloutAdvanceEntry{
			Rollout: r.GetId(), FromWave: r.GetWave(), FromStep: r.GetStep(),
			ToWave: int32(d.ToWave), ToStep: int32(d.ToStep), Promote: d.Action == Promote,
			Message: d.Message, StampedAt: at,
		})
	case Rollback:
		return c.Raft.Rollback(&sv1.RollbackEntry{Rollout: r.GetId(), Generation: r.GetGeneration(), Evidence: d.Evidence, StampedAt: at, Rules: state.Rules})
	case Finish:
		e := &sv1.RolloutFinishEntry{Rollout: r.GetId(), StampedAt: at}
		if h, ok := c.Fleet.(Holder); ok {
			held := h.Held(r.GetSpec().GetService(), r.GetGeneration())
			if len(held) > MaxFinishHeld {
				e.HeldMore = uint32(len(held) - MaxFinishHeld)
				held = held[:MaxFinishHeld]
			}
			e.Held = held
		}
		return c.Raft.Finish(e)
	case ConfirmRollback:
		applied, _ := c.Fleet.Convergence(r.GetSpec().GetService(), r.GetGeneration())
		return c.Raft.Converged(&sv1.RolloutConvergedEntry{Rollout: r.GetId(), Generation: r.GetGeneration(), Nodes: uint32(applied),
			Stale: c.Fleet.Stale(r.GetSpec().GetService()), StampedAt: at})
	}
	return nil
}
