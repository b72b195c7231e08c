package coordinator

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/drill"
	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/hooks"
	"github.com/switchyard/switchyard/coordinator/rollout"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// raftShim commits the rollout controller's decisions through raftApply.
type raftShim struct{ s *Server }

var _ rollout.Raft = raftShim{}

func (r raftShim) apply(t fsm.MessageType, m proto.Message) error {
	_, _, err := r.s.raftApply(t, m)
	return err
}

func (r raftShim) Advance(e *sv1.RolloutAdvanceEntry) error {
	return r.apply(fsm.RolloutAdvanceType, e)
}
func (r raftShim) Rollback(e *sv1.RollbackEntry) error    { return r.apply(fsm.RollbackType, e) }
func (r raftShim) Finish(e *sv1.RolloutFinishEntry) error { return r.apply(fsm.RolloutFinishType, e) }
func (r raftShim) Converged(e *sv1.RolloutConvergedEntry) error {
	return r.apply(fsm.RolloutConvergedType, e)
}
func (r raftShim) LocalRollback(e *sv1.LocalRollbackEntry) error {
	return r.apply(fsm.LocalRollbackType, e)
}
func (r raftShim) HookDue(e *sv1.HookDueEntry) error       { return r.apply(fsm.HookDueType, e) }
func (r raftShim) HookResult(e *sv1.HookResultEntry) error { return r.apply(fsm.HookResultType, e) }
func (r raftShim) Start(e *sv1.RolloutStartEntry) error    { return r.apply(fsm.RolloutStartType, e) }

var (
	_ hooks.Raft     = raftShim{}
	_ hooks.Recorder = raftShim{}
)

// pendingReader lists due webhook calls from the current state.
type pendingReader struct{ s *Server }

func (p pendingReader) PendingCalls() []state.PendingCall { return p.s.fsm.State().PendingCalls() }

// runWebhooks makes every due webhook call while this node leads; calls
// under way end with leadership, and the next leader makes them again.
func (s *Server) runWebhooks(ctx context.Context) {
	c := &hooks.Caller{
		State:   pendingReader{s},
		Raft:    raftShim{s},
		Client:  hooks.NewClient(hooks.Destinations{Networks: s.cfg.WebhookNetworks}),
		Log:     s.log,
		Now:     s.cfg.Clock.Now,
		Backoff: 500 * time.Millisecond,
		Observe: func(point, outcome string, seconds float64) {
			s.metrics.webhookCalls.WithLabelValues(point, outcome).Inc()
			s.metrics.webhookSeconds.WithLabelValues(point).Observe(seconds)
		},
	}
	defer c.Wait()
	tick := time.NewTicker(s.cfg.TickInterval)
	defer tick.Stop()
	for {
		c.Step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// stateReader reads the current replicated state, which Restore may swap.
// The controller steps unfinished rollouts only, and it steps up to ten
// times a second: the finished ones, every rollout ever applied, are not
// copied for it.
type stateReader struct{ s *Server }

func (r stateReader) Rollouts() []*sv1.Rollout {
	return r.s.fsm.State().RolloutsWhere(state.Unfinished)
}

// Rollout reads one rollout, finished or not (rollout.RolloutReader).
func (r stateReader) Rollout(id string) *sv1.Rollout { return r.s.fsm.State().Rollout(id) }

var _ rollout.RolloutReader = stateReader{}

func (s *Server) controller() *rollout.Controller {
	return &rollout.Controller{
		State:    stateReader{s},
		Raft:     raftShim{s},
		Fleet:    s.fleet,
		Analyzer: s.analysis,
		Gate:     &hooks.Gate{Raft: raftShim{s}},
		Log:      s.log,
		OnDecision: func(_ *sv1.Rollout, d rollout.Decision, _ time.Time) {
			s.metrics.decisions.WithLabelValues(d.Action.String()).Inc()
		},
	}
}

// runRollouts steps every live rollout on each tick while this node leads.
func (s *Server) runRollouts(ctx context.Context) {
	c := s.controller()
	tick := time.NewTicker(s.cfg.TickInterval)
	defer tick.Stop()
	for {
		// The first pass runs at once: a new leader decides what its
		// predecessor left due without waiting a tick.
		if err := c.Step(s.cfg.Clock.Now()); err != nil {
			s.log.Warn("rollout controller", "err", err)
		}
		stepped := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-s.reported:
			// Reports arrive by the thousand each second: they wake the
			// controller at most once per reportStepGap, or the judge
			// would run for every few reports merged.
			if wait := reportStepGap - time.Since(stepped); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
		}
	}
}

// reportStepGap is the least time between two controller steps a merged
// health report triggers.
const reportStepGap = 100 * time.Millisecond

// drillRaft commits the drill controller's decisions through raftApply.
type drillRaft struct{ s *Server }

var _ drill.Raft = drillRaft{}

func (r drillRaft) apply(t fsm.MessageType, m proto.Message) error {
	_, _, err := r.s.raftApply(t, m)
	return err
}

func (r drillRaft) Start(e *sv1.DrillStartEntry) error   { return r.apply(fsm.DrillStartType, e) }
func (r drillRaft) End(e *sv1.DrillEndEntry) error       { return r.apply(fsm.DrillEndType, e) }
func (r drillRaft) Report(e *sv1.DrillReportEntry) error { return r.apply(fsm.DrillReportType, e) }

// drillState reads the current replicated state for the drill controller.
type drillState struct{ s *Server }

func (d drillState) Drills() []*sv1.Drill     { return d.s.fsm.State().Drills() }
func (d drillState) Rollouts() []*sv1.Rollout { return d.s.fsm.State().Rollouts() }
func (d drillState) Acl() *sv1.AclState       { return d.s.fsm.State().Acl() }
func (d drillState) Desired(service string) *sv1.DesiredState {
	return d.s.fsm.State().Desired(service)
}

func (s *Server) drillController() *drill.Controller {
	return &drill.Controller{State: drillState{s}, Raft: drillRaft{s}, Fleet: s.fleet, Health: s.analysis, Log: s.log}
}

// runDrills steps every drill on each tick while this node leads. No
// drill starts before this leader has handled the intents that waited on
// the stream when it took the lead: a kill switch sent while no
// coordinator led stops a drill whose start came meanwhile before it
// injects anything.
func (s *Server) runDrills(ctx context.Context) {
	c := s.drillController()
	backlog := &intentBacklog{s: s, ctx: ctx}
	c.Hold = backlog.hold
	tick := time.NewTicker(s.cfg.TickInterval)
	defer tick.Stop()
	for {
		if err := c.Step(s.cfg.Clock.Now()); err != nil {
			s.log.Warn("drill controller", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// intentBacklog tells whether the intents the stream held when this
// leader's term began are all handled.
type intentBacklog struct {
	s   *Server
	ctx context.Context
	// lastSeq is the stream's last sequence when first read; 0 before.
	lastSeq uint64
	done    bool
	logged  bool
}

// hold reports whether intents of before this term may still wait on the
// stream. Once they are handled it stays false for the term.
func (b *intentBacklog) hold() bool {
	if b.done {
		return false
	}
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	if b.lastSeq == 0 {
		st, err := b.s.js.Stream(ctx, bus.IntentStream)
		if err != nil {
			b.waiting("read the intent stream", err)
			return true
		}
		if b.lastSeq = st.CachedInfo().State.LastSeq; b.lastSeq == 0 {
			b.done = true // never held an intent
			return false
		}
	}
	cons, err := b.s.js.Consumer(ctx, bus.IntentStream, bus.IntentConsumer)
	if err != nil {
		b.waiting("read the intent consumer", err)
		return true
	}
	ci := cons.CachedInfo()
	// Everything delivered and acknowledged, or everything up to the
	// stream's end at the term's start acknowledged (newer intents may
	// keep coming on a busy stream).
	if (ci.NumPending == 0 && ci.NumAckPending == 0) || ci.AckFloor.Stream >= b.lastSeq {
		b.done = true
		return false
	}
	b.waiting("", nil)
	return true
}

func (b *intentBacklog) waiting(what string, err error) {
	if b.logged {
		return
	}
	b.logged = true
	if err != nil {
		b.s.log.Info("drills wait to start until the intents waiting on the stream are read", "step", what, "err", err)
		return
	}
	b.s.log.Info("drills wait to start until the intents waiting on the stream are read")
}
