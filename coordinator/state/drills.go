package state

import (
	"strings"

	"fmt"
	"github.com/switchyard/switchyard/coordinator/acl"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/chaos"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// DrillPhaseName is the short name of a drill phase operators see.
func DrillPhaseName(p sv1.DrillPhase) string {
	switch p {
	case sv1.DrillPhase_DRILL_PHASE_SCHEDULED:
		return "scheduled"
	case sv1.DrillPhase_DRILL_PHASE_RUNNING:
		return "running"
	case sv1.DrillPhase_DRILL_PHASE_ENDED:
		return "ended"
	case sv1.DrillPhase_DRILL_PHASE_ABORTED:
		return "aborted"
	}
	return "unknown"
}

// DrillLive reports whether a drill may still inject.
func DrillLive(p sv1.DrillPhase) bool {
	return p == sv1.DrillPhase_DRILL_PHASE_SCHEDULED || p == sv1.DrillPhase_DRILL_PHASE_RUNNING
}

func (s *State) runDrill(index uint64, at time.Time, operator string, sp *sv1.DrillSpec) Applied {
	if sp == nil {
		return refuse(CodeInvalid, "run_drill.spec: required")
	}
	sp = proto.Clone(sp).(*sv1.DrillSpec)
	chaos.DefaultDrill(sp)
	if err := chaos.ValidateDrill(sp); err != nil {
		return refuse(CodeInvalid, "%v", err)
	}
	if _, ok := s.drills[sp.GetName()]; ok {
		return refuse(CodeConflict, "drill.name: drill %q exists; give the new drill a new name", sp.GetName())
	}
	if f := s.forgottenDrills[sp.GetName()]; f != nil {
		return refuse(CodeConflict, "drill.name: drill %q existed (%s, ended %s; forgotten by the retention since); a name stays taken, give the new drill a new name",
			sp.GetName(), DrillPhaseName(f.GetPhase()), f.GetEndedAt().AsTime().UTC().Format(time.RFC3339))
	}
	if err := acl.CheckDrillCaps(s.acl.GetPolicy(), sp); err != nil {
		return refuse(CodeBlastRadius, "%v", err)
	}
	if id := sp.GetRollout(); id != "" {
		r := s.rollouts[id]
		if f := s.forgotten[id]; f != nil {
			return refuse(CodeNotFound, "drill.rollout: %v", ForgottenError(f))
		}
		if r == nil {
			return refuse(CodeNotFound, "drill.rollout: no rollout named %q", id)
		}
		if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
			return refuse(CodeConflict, "drill.rollout: %q is %s; a rollback drill runs inside a progressing rollout", id, PhaseName(r.GetPhase()))
		}
		if r.GetSpec().GetService() != sp.GetService() {
			return refuse(CodeInvalid, "drill.service: %q, but rollout %q moves %q", sp.GetService(), id, r.GetSpec().GetService())
		}
	}
	start := at.Add(sp.GetStartAfter().AsDuration())
	d := &sv1.Drill{
		Id: sp.GetName(), Spec: sp, Phase: sv1.DrillPhase_DRILL_PHASE_SCHEDULED, Operator: operator,
		CreatedAt: timestamppb.New(at), StartAt: timestamppb.New(start), EndAt: timestamppb.New(start.Add(sp.GetDuration().AsDuration())),
	}
	s.drills[d.Id] = d
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: d.Id}}
}

func (s *State) endDrillLocked(index uint64, d *sv1.Drill, at *timestamppb.Timestamp, aborted bool, reason string) []string {
	if !DrillLive(d.GetPhase()) {
		return nil
	}
	wasRunning := d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_RUNNING
	d.Phase = sv1.DrillPhase_DRILL_PHASE_ENDED
	if aborted {
		d.Phase = sv1.DrillPhase_DRILL_PHASE_ABORTED
		d.AbortReason = reason
	}
	d.EndedAt = at
	what := "ended"
	if aborted {
		what = "aborted: " + reason
	}
	s.auditDrill(d, index, at, "drill_end", what)
	if !wasRunning {
		return nil // agents never saw it
	}
	d.Generation = index
	return []string{d.GetId()}
}

func (s *State) abortDrill(index uint64, at time.Time, operator string, ab *sv1.AbortDrill) Applied {
	d := s.drills[ab.GetDrill()]
	if f := s.forgottenDrills[ab.GetDrill()]; f != nil {
		return refuse(CodeNotFound, "abort_drill.drill: %v", ForgottenDrillError(f))
	}
	if d == nil {
		return refuse(CodeNotFound, "abort_drill.drill: no drill named %q", ab.GetDrill())
	}
	if !DrillLive(d.GetPhase()) {
		return refuse(CodeConflict, "abort_drill.drill: %q has already %s", d.GetId(), DrillPhaseName(d.GetPhase()))
	}
	reason := ab.GetReason()
	if reason == "" {
		reason = "aborted by " + operator
	}
	changed := s.endDrillLocked(index, d, timestamppb.New(at), true, reason)
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: d.Id}, Drills: changed}
}

// stopAllDrills is the kill switch.
func (s *State) stopAllDrills(index uint64, at time.Time, operator string, st *sv1.StopAllDrills) Applied {
	reason := st.GetReason()
	if reason == "" {
		reason = "every drill stopped by " + operator
	}
	var changed []string
	for _, id := range sortedKeys(s.drills) {
		changed = append(changed, s.endDrillLocked(index, s.drills[id], timestamppb.New(at), true, reason)...)
	}
	return Applied{Result: &sv1.IntentResult{Accepted: true}, Drills: changed}
}

// ApplyDrillStart starts a scheduled drill on the targets the leader chose.
func (s *State) ApplyDrillStart(index uint64, e *sv1.DrillStartEntry) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.drills[e.GetDrill()]
	if d == nil || d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_SCHEDULED {
		return nil
	}
	if uint32(len(e.GetTargets())) > d.GetSpec().GetMaxNodes() {
		// The leader checks the cap; a replica does not trust it blindly.
		s.endDrillLocked(index, d, e.GetStampedAt(), true, fmt.Sprintf("%d targets exceed maxNodes %d", len(e.GetTargets()), d.GetSpec().GetMaxNodes()))
		return nil
	}
	d.Phase = sv1.DrillPhase_DRILL_PHASE_RUNNING
	d.Targets = slices.Clone(e.GetTargets())
	d.StartAt = e.GetStampedAt()
	d.EndAt = timestamppb.New(e.GetStampedAt().AsTime().Add(d.GetSpec().GetDuration().AsDuration()))
	d.Generation = index
	s.auditDrill(d, index, e.GetStampedAt(), "drill_start", fmt.Sprintf("started on %d node(s): %s", len(d.Targets), strings.Join(d.Targets, ", ")))
	return []string{d.GetId()}
}

// ApplyDrillEnd ends a drill at its end or because it was aborted.
func (s *State) ApplyDrillEnd(index uint64, e *sv1.DrillEndEntry) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.drills[e.GetDrill()]
	if d == nil {
		return nil
	}
	return s.endDrillLocked(index, d, e.GetStampedAt(), e.GetAborted(), e.GetReason())
}

// ApplyDrillReport records a drill's report.
func (s *State) ApplyDrillReport(index uint64, e *sv1.DrillReportEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d := s.drills[e.GetDrill()]; d != nil {
		d.Report = e.GetReport()
	}
}

// Drill returns a copy of one drill, or nil.
func (s *State) Drill(id string) *sv1.Drill {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if d := s.drills[id]; d != nil {
		return proto.Clone(d).(*sv1.Drill)
	}
	return nil
}

// DrillUnjudged reports whether a rollout's judge leaves out the telemetry
// of node while drill's fault is on it: node is one of the drill's targets,
// and the drill is not a rollback drill of rollout (whose faults are there
// to be judged). A drill's injected failures are not the release's.
func (s *State) DrillUnjudged(drill, node, rollout string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.drills[drill]
	if d == nil || !slices.Contains(d.GetTargets(), node) {
		return false
	}
	return d.GetSpec().GetRollout() != rollout
}

// DrillTarget reports whether node is one of a drill's targets, and when
// the drill was to start.
func (s *State) DrillTarget(id, node string) (startAt time.Time, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.drills[id]
	if d == nil || !slices.Contains(d.GetTargets(), node) {
		return time.Time{}, false
	}
	return d.GetStartAt().AsTime(), true
}

// Drills returns copies of every drill, newest first.
func (s *State) Drills() []*sv1.Drill {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*sv1.Drill, 0, len(s.drills))
	for _, d := range s.drills {
		out = append(out, proto.Clone(d).(*sv1.Drill))
	}
	slices.SortFunc(out, func(a, b *sv1.Drill) int { return b.GetCreatedAt().AsTime().Compare(a.GetCreatedAt().AsTime()) })
	return out
}

// DrillDocument is what agents read for a drill that has started; nil
// before.
func (s *State) DrillDocument(id string) *sv1.DrillDocument {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d := s.drills[id]
	if d == nil || d.GetGeneration() == 0 {
		return nil
	}
	// A drill that ended before its time (a rollback drill whose fleet
	// recovered) ends on the agents then too: they revert at end_at.
	end := d.GetEndAt()
	if e := d.GetEndedAt(); e != nil && e.AsTime().Before(end.AsTime()) {
		end = e
	}
	return &sv1.DrillDocument{
		Drill: d.GetId(), Generation: d.GetGeneration(), Spec: proto.Clone(d.GetSpec()).(*sv1.DrillSpec),
		Targets: slices.Clone(d.GetTargets()), StartAt: d.GetStartAt(), EndAt: end,
		Aborted: d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ABORTED,
		Epoch:   s.epochLocked(),
	}
}

// PublishedDrills names the drills that have a document, sorted.
func (s *State) PublishedDrills() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for id, d := range s.drills {
		if d.GetGeneration() > 0 {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}
