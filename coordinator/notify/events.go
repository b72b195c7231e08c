package notify

import (
	"fmt"
	"time"

	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ReplayWindow is how far back a new leader looks for events its
// predecessor may not have delivered.
const ReplayWindow = 30 * time.Second

// Tracker turns replicated state into events, each once per tracker: a
// leader makes one when its term starts.
type Tracker struct {
	since time.Time
	// seen is, per rollout, the last history index turned into events;
	// per drill, whether its end was.
	seen  map[string]uint64
	drill map[string]bool
}

// NewTracker returns a tracker that makes events only for entries committed
// at or after since.
func NewTracker(since time.Time) *Tracker {
	return &Tracker{since: since, seen: map[string]uint64{}, drill: map[string]bool{}}
}

// Events returns what changed since the last call, oldest first per
// rollout.
func (tr *Tracker) Events(rollouts []*sv1.Rollout, drills []*sv1.Drill) []Event {
	var out []Event
	for _, r := range rollouts {
		out = append(out, tr.rolloutEvents(r)...)
	}
	for _, d := range drills {
		if e, ok := tr.drillEvent(d); ok {
			out = append(out, e)
		}
	}
	return out
}

// Changed reports whether r has a history line that Events would turn
// into an event: one it has not looked at, committed at or after since.
// A leader asks four times a second, and the state keeps every rollout
// ever applied: only those that changed are copied for Events.
func (tr *Tracker) Changed(r *sv1.Rollout) bool {
	last := tr.seen[r.GetId()]
	h := r.GetHistory()
	for i := len(h) - 1; i >= 0 && h[i].GetIndex() > last; i-- {
		if !h[i].GetAt().AsTime().Before(tr.since) {
			return true
		}
	}
	return false
}

func (tr *Tracker) rolloutEvents(r *sv1.Rollout) []Event {
	var out []Event
	sp := r.GetSpec()
	prev := sv1.RolloutPhase_ROLLOUT_PHASE_UNSPECIFIED
	last := tr.seen[r.GetId()]
	for _, h := range r.GetHistory() {
		phase := h.GetPhase()
		changed := phase != prev
		prevPhase := prev
		prev = phase
		if h.GetIndex() <= last {
			continue
		}
		tr.seen[r.GetId()] = h.GetIndex()
		if !changed || h.GetAt().AsTime().Before(tr.since) {
			continue
		}
		e := Event{
			ID: fmt.Sprintf("%s/%s/%d", KindPhase, r.GetId(), h.GetIndex()), Kind: KindPhase,
			At: h.GetAt().AsTime(), Index: h.GetIndex(),
			Rollout: r.GetId(), Service: sp.GetService(), From: sp.GetFrom(), To: sp.GetTo(),
			Phase: state.PhaseName(phase), Operator: h.GetOperator(), Message: h.GetMessage(),
		}
		if prevPhase != sv1.RolloutPhase_ROLLOUT_PHASE_UNSPECIFIED {
			e.PreviousPhase = state.PhaseName(prevPhase)
		}
		out = append(out, e)
		rollingBack := phase == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK ||
			(phase == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK && prevPhase != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK)
		if rollingBack {
			rb := e
			rb.ID = fmt.Sprintf("%s/%s/%d", KindRollback, r.GetId(), h.GetIndex())
			rb.Kind = KindRollback
			rb.Reason = r.GetReason()
			if rb.Reason == "" {
				rb.Reason = h.GetMessage()
			}
			rb.Evidence = r.GetEvidence().GetSummary()
			out = append(out, rb)
		}
	}
	return out
}

func (tr *Tracker) drillEvent(d *sv1.Drill) (Event, bool) {
	if tr.drill[d.GetId()] || state.DrillLive(d.GetPhase()) {
		return Event{}, false
	}
	rep := d.GetReport()
	aborted := d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ABORTED
	if rep.GetVerdict() == "" && !aborted {
		return Event{}, false // ended; its report is not committed yet
	}
	tr.drill[d.GetId()] = true
	at := d.GetEndedAt().AsTime()
	if at.Before(tr.since) {
		return Event{}, false
	}
	return Event{
		ID: fmt.Sprintf("%s/%s/%d", KindDrill, d.GetId(), d.GetGeneration()), Kind: KindDrill,
		At: at, Index: d.GetGeneration(),
		Drill: d.GetId(), Service: d.GetSpec().GetService(), Rollout: d.GetSpec().GetRollout(),
		Phase: state.DrillPhaseName(d.GetPhase()), Operator: d.GetOperator(),
		Reason: d.GetAbortReason(), Verdict: rep.GetVerdict(), Report: rep.GetSummary(),
	}, true
}
