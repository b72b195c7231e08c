// Package drill is the leader's chaos-drill controller: a step function
// that starts scheduled drills on targets it chooses within the blast-radius
// caps, ends them on time, aborts them when the rest of the fleet suffers,
// and writes each drill's report. It reaches Raft through the narrow
// interface it defines.
package drill

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/coordinator/acl"
	"github.com/switchyard/switchyard/internal/desired"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Raft commits the controller's decisions.
type Raft interface {
	Start(*sv1.DrillStartEntry) error
	End(*sv1.DrillEndEntry) error
	Report(*sv1.DrillReportEntry) error
}

// State reads the replicated state.
type State interface {
	Drills() []*sv1.Drill
	Rollouts() []*sv1.Rollout
	Desired(service string) *sv1.DesiredState
	// Acl is the roles and the admins' policy.
	Acl() *sv1.AclState
}

// Fleet is the coordinator's view of live nodes and their active faults.
type Fleet interface {
	Live(service string) []chaos.Node
	// FaultSeen is when a node first reported the drill's fault active.
	FaultSeen(node, drill string) (time.Time, bool)
}

// Health sums the traffic of a service's nodes outside a set.
type Health interface {
	NodeHealth(service string, exclude map[string]bool, start, end time.Time) (requests, errors uint64, nodes int)
}

// Fleet guardrail outside a drill's targets: over this error rate, with at
// least this many requests over the last Lookback, the drill aborts.
const (
	OutsideMaxErrorRate = 0.05
	OutsideMinRequests  = 100
	Lookback            = 10 * time.Second
)

// LateStartGrace is how late, at least, a drill may still start: one late
// by more than this and by more than its duration is ended unstarted.
const LateStartGrace = time.Minute

// Controller steps every live drill.
type Controller struct {
	State  State
	Raft   Raft
	Fleet  Fleet
	Health Health
	Log    *slog.Logger
	// Hold, when set and true, keeps scheduled drills from starting: a
	// new leader has not yet read the intents (a kill switch, an abort)
	// that waited on the stream while no coordinator led.
	Hold func() bool
}

// Step makes one pass at now.
func (c *Controller) Step(now time.Time) error {
	for _, d := range c.State.Drills() {
		var err error
		switch d.GetPhase() {
		case sv1.DrillPhase_DRILL_PHASE_SCHEDULED:
			err = c.maybeStart(d, now)
		case sv1.DrillPhase_DRILL_PHASE_RUNNING:
			err = c.watch(d, now)
		case sv1.DrillPhase_DRILL_PHASE_ENDED, sv1.DrillPhase_DRILL_PHASE_ABORTED:
			if d.GetReport() == nil {
				err = c.Raft.Report(&sv1.DrillReportEntry{Drill: d.GetId(), Report: c.report(d, now)})
			}
		}
		if err != nil {
			return fmt.Errorf("drill %s: %w", d.GetId(), err)
		}
	}
	return nil
}

func (c *Controller) end(d *sv1.Drill, now time.Time, aborted bool, reason string) error {
	if c.Log != nil {
		c.Log.Info("drill ends", "drill", d.GetId(), "aborted", aborted, "reason", reason)
	}
	return c.Raft.End(&sv1.DrillEndEntry{Drill: d.GetId(), Aborted: aborted, Reason: reason, StampedAt: timestamppb.New(now)})
}

// Targets chooses a drill's nodes among the live ones now, or says why it
// cannot run. A rollback drill targets the nodes of its rollout's current
// wave that its selector and percent take.
func Targets(d *sv1.Drill, st State, live []chaos.Node) ([]string, error) {
	sp := d.GetSpec()
	var targets []string
	if id := sp.GetRollout(); id != "" {
		var r *sv1.Rollout
		for _, x := range st.Rollouts() {
			if x.GetId() == id {
				r = x
			}
		}
		if r == nil || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
			return nil, fmt.Errorf("rollout %s is not progressing", id)
		}
		ds := st.Desired(sp.GetService())
		var wave []chaos.Node
		for _, n := range live {
			if _, w, ok := desired.Evaluate(ds, n.ID, n.Labels); ok && w == r.GetWave() {
				wave = append(wave, n)
			}
		}
		// The drill's selector and percent narrow the wave as they
		// narrow the live nodes for any other drill.
		targets = chaos.Select(sp, wave)
	} else {
		targets = chaos.Select(sp, live)
	}
	if err := chaos.CheckCap(sp, len(targets), len(live)); err != nil {
		return nil, err
	}
	return targets, nil
}

func (c *Controller) maybeStart(d *sv1.Drill, now time.Time) error {
	start := d.GetStartAt().AsTime()
	if now.Before(start) {
		return nil
	}
	// A drill whose whole window passed before a leader could start it
	// (the coordinators had no quorum for longer than it would have run)
	// does not start now, right after the outage, at a time nobody chose.
	if late := now.Sub(start); late > max(d.GetSpec().GetDuration().AsDuration(), LateStartGrace) {
		return c.end(d, now, true, fmt.Sprintf("not started: it was to start at %s and run for %s, which passed with no leader to start it (late by %s)",
			start.UTC().Format(time.RFC3339), d.GetSpec().GetDuration().AsDuration(), late.Round(time.Second)))
	}
	if c.Hold != nil && c.Hold() {
		return nil
	}
	// Targets and the cap are chosen from the live nodes: not from the few
	// a coordinator that has just started has heard from.
	if s, ok := c.Fleet.(interface{ Settled() bool }); ok && !s.Settled() {
		return nil
	}
	// The admins' caps as they are now: they may have been lowered since
	// the drill was scheduled.
	if err := acl.CheckDrillCaps(c.State.Acl().GetPolicy(), d.GetSpec()); err != nil {
		return c.end(d, now, true, "not started: "+err.Error())
	}
	targets, err := Targets(d, c.State, c.Fleet.Live(d.GetSpec().GetService()))
	if err != nil {
		return c.end(d, now, true, "not started: "+err.Error())
	}
	if c.Log != nil {
		c.Log.Info("drill starts", "drill", d.GetId(), "targets", targets)
	}
	return c.Raft.Start(&sv1.DrillStartEntry{Drill: d.GetId(), Targets: targets, StampedAt: timestamppb.New(now)})
}

func (c *Controller) rolloutOf(d *sv1.Drill) *sv1.Rollout {
	for _, r := range c.State.Rollouts() {
		if r.GetId() == d.GetSpec().GetRollout() {
			return r
		}
	}
	return nil
}

func (c *Controller) watch(d *sv1.Drill, now time.Time) error {
	sp := d.GetSpec()
	if !now.Before(d.GetEndAt().AsTime()) {
		return c.end(d, now, false, "duration over")
	}
	if sp.GetRollout() != "" {
		// A rollback drill is done once the fleet is back and traffic
		// recovered; the report tells whether that was in time.
		if r := c.rolloutOf(d); r != nil && r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
			if _, ok := c.recoveredAt(d, r, now); ok {
				return c.end(d, now, false, "the fleet rolled back and recovered")
			}
		}
		if r := c.rolloutOf(d); r != nil && (r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED || r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED) {
			return c.end(d, now, true, "the rollout was promoted: the guardrails did not catch the fault")
		}
	}
	if sp.GetKeepOnBreach() {
		return nil
	}
	// Guardrails outside the targets: a rollback of any rollout of the
	// service since the drill began (what a rollback drill waits for, so
	// not for it), or errors on the other nodes.
	for _, r := range c.State.Rollouts() {
		if sp.GetRollout() != "" || r.GetSpec().GetService() != sp.GetService() || r.GetEvidence() == nil {
			continue
		}
		if at, ok := rollbackAt(r); ok && at.After(d.GetStartAt().AsTime()) {
			return c.end(d, now, true, "guardrail breached during the drill: "+r.GetReason())
		}
	}
	exclude := map[string]bool{}
	for _, t := range d.GetTargets() {
		exclude[t] = true
	}
	from := now.Add(-Lookback)
	if s := d.GetStartAt().AsTime(); from.Before(s) {
		from = s
	}
	req, errs, nodes := c.Health.NodeHealth(sp.GetService(), exclude, from, now)
	if req >= OutsideMinRequests && float64(errs)/float64(req) > OutsideMaxErrorRate {
		return c.end(d, now, true, fmt.Sprintf("error rate %.1f%% on %d nodes outside the drill's targets, over %.0f%%",
			100*float64(errs)/float64(req), nodes, 100*OutsideMaxErrorRate))
	}
	return nil
}

// rollbackAt is when a rollout began rolling back.
func rollbackAt(r *sv1.Rollout) (time.Time, bool) {
	for _, e := range r.GetHistory() {
		if e.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK {
			return e.GetAt().AsTime(), true
		}
	}
	return time.Time{}, false
}

func rolledBackAt(r *sv1.Rollout) (time.Time, bool) {
	for _, e := range r.GetHistory() {
		if e.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
			return e.GetAt().AsTime(), true
		}
	}
	return time.Time{}, false
}

// recoveredAt is the end of the first analysis window after the rollback
// was applied in which the whole service's error rate was under the
// rollout's limit.
func (c *Controller) recoveredAt(d *sv1.Drill, r *sv1.Rollout, now time.Time) (time.Time, bool) {
	back, ok := rolledBackAt(r)
	if !ok {
		return time.Time{}, false
	}
	win := spec.Window(r.GetSpec())
	limit := r.GetSpec().GetAnalysis().GetErrorRate().GetMax()
	if limit <= 0 {
		limit = OutsideMaxErrorRate
	}
	for start := back; !start.Add(win).After(now); start = start.Add(time.Second) {
		req, errs, _ := c.Health.NodeHealth(r.GetSpec().GetService(), nil, start, start.Add(win))
		if req > 0 && float64(errs)/float64(req) <= limit {
			return start.Add(win), true
		}
	}
	return time.Time{}, false
}

func (c *Controller) report(d *sv1.Drill, now time.Time) *sv1.DrillReport {
	rep := &sv1.DrillReport{}
	var first time.Time
	for _, t := range d.GetTargets() {
		if at, ok := c.Fleet.FaultSeen(t, d.GetId()); ok {
			rep.Injected = append(rep.Injected, &sv1.NodeFaultTime{Node: t, At: timestamppb.New(at)})
			if first.IsZero() || at.Before(first) {
				first = at
			}
		}
	}
	if !first.IsZero() {
		rep.FirstInjectedAt = timestamppb.New(first)
	}
	var lines []string
	if d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ABORTED {
		lines = append(lines, "aborted: "+d.GetAbortReason())
	}
	lines = append(lines, fmt.Sprintf("fault seen active on %d of %d targets", len(rep.Injected), len(d.GetTargets())))
	if d.GetSpec().GetRollout() == "" {
		rep.Verdict = "pass"
		if d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ABORTED || len(rep.Injected) < len(d.GetTargets()) {
			rep.Verdict = "fail"
		}
		rep.Summary = strings.Join(lines, "; ")
		return rep
	}
	r := c.rolloutOf(d)
	verdict := "pass"
	fail := func(why string) {
		verdict = "fail"
		lines = append(lines, why)
	}
	if r == nil {
		fail("the rollout is gone")
	} else {
		if at, ok := rollbackAt(r); ok && r.GetEvidence() != nil {
			rep.DetectedAt = timestamppb.New(at)
			if !first.IsZero() {
				det := at.Sub(first)
				lines = append(lines, fmt.Sprintf("detected %s after injection (%s)", det.Round(100*time.Millisecond), r.GetEvidence().GetGuardrail()))
				if lim := d.GetSpec().GetDetectWithin().AsDuration(); lim > 0 && det > lim {
					fail(fmt.Sprintf("detection took longer than %s", lim))
				}
			}
		} else {
			fail("the guardrails did not roll the rollout back")
		}
		if at, ok := rolledBackAt(r); ok {
			rep.RolledBackAt = timestamppb.New(at)
			if rep.DetectedAt != nil {
				lines = append(lines, fmt.Sprintf("every live node back on %s %s after detection", r.GetSpec().GetFrom(), at.Sub(rep.DetectedAt.AsTime()).Round(100*time.Millisecond)))
			}
		}
		if at, ok := c.recoveredAt(d, r, now); ok {
			rep.RecoveredAt = timestamppb.New(at)
			if rep.DetectedAt != nil {
				rec := at.Sub(rep.DetectedAt.AsTime())
				lines = append(lines, fmt.Sprintf("traffic recovered %s after detection", rec.Round(100*time.Millisecond)))
				if lim := d.GetSpec().GetRecoverWithin().AsDuration(); lim > 0 && rec > lim {
					fail(fmt.Sprintf("recovery took longer than %s", lim))
				}
			}
		} else if rep.RolledBackAt != nil {
			fail("traffic did not recover before the drill ended")
		}
	}
	rep.Verdict = verdict
	rep.Summary = strings.Join(lines, "; ")
	return rep
}

// Describe says, for people, what a fault does on one node.
func Describe(f *sv1.Fault, d time.Duration) string {
	var what string
	switch k := f.GetKind().(type) {
	case *sv1.Fault_Http:
		var parts []string
		if k.Http.GetErrorPercent() > 0 {
			parts = append(parts, fmt.Sprintf("answer %d%% of %s's requests with %d", k.Http.GetErrorPercent(), k.Http.GetBackend(), k.Http.GetStatus()))
		}
		if k.Http.GetDelay() != nil {
			parts = append(parts, fmt.Sprintf("delay %d%% of %s's requests by %s", k.Http.GetDelayPercent(), k.Http.GetBackend(), k.Http.GetDelay().AsDuration()))
		}
		what = strings.Join(parts, " and ") + " (fault proxy in front of the backend)"
	case *sv1.Fault_Tcp:
		what = fmt.Sprintf("%s on TCP to %s (fault proxy in front of the backend)", k.Tcp.GetKind(), k.Tcp.GetBackend())
	case *sv1.Fault_BackendState:
		what = fmt.Sprintf("set %s to %s through the proxy's runtime API", k.BackendState.GetBackend(), k.BackendState.GetState())
	case *sv1.Fault_Process:
		what = fmt.Sprintf("%s the %s process named in the agent's config", k.Process.GetAction(), k.Process.GetProcess())
	case *sv1.Fault_CpuBurn:
		what = fmt.Sprintf("burn %d cores", k.CpuBurn.GetCores())
	case *sv1.Fault_BusDrop:
		what = "drop the agent's bus connection"
	default:
		what = "nothing"
	}
	return fmt.Sprintf("%s for %s, then revert", what, d)
}
