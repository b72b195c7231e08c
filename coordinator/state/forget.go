package state

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The retention: the state would otherwise keep every rollout ever applied
// (some 13 KB of heap each with its history, 2 KB of snapshot). The leader
// names finished rollouts to forget in a ForgetEntry; every replica checks
// each name against the same state and forgets the same ones, keeping a
// tombstone per rollout so its name stays taken and a query for it is
// answered. The records of what the rollout did are on the audit stream.

// KeepFinishedPerService is how many finished rollouts of each service the
// retention never forgets, however old: the newest ones, which the
// dashboard and `switchyard rollout list` show.
const KeepFinishedPerService = 20

// drilledRollouts names the rollouts a live rollback drill runs in.
func (s *State) drilledRollouts() map[string]bool {
	in := map[string]bool{}
	for _, d := range s.drills {
		if id := d.GetSpec().GetRollout(); id != "" && DrillLive(d.GetPhase()) {
			in[id] = true
		}
	}
	return in
}

// forgettable says why r must stay, or "" when it may be forgotten;
// drilled is drilledRollouts.
func (s *State) forgettable(r *sv1.Rollout, drilled map[string]bool) string {
	if !terminal(r.GetPhase()) {
		return "not finished"
	}
	if s.services[r.GetSpec().GetService()].GetActiveRollout() == r.GetId() {
		return "its service's active rollout"
	}
	for _, c := range r.GetHookCalls() {
		if c.GetOutcome() == sv1.HookOutcome_HOOK_OUTCOME_PENDING {
			return "a webhook call pending"
		}
	}
	if drilled[r.GetId()] {
		return "a drill running in it"
	}
	return ""
}

// Forgot names what a ForgetEntry forgot.
type Forgot struct {
	Rollouts, Drills []string
}

// ApplyForget forgets the finished rollouts and ended drills e names that
// may be forgotten and returns the names it forgot; it ignores the rest (a
// name already forgotten, unknown, or one that must stay).
func (s *State) ApplyForget(index uint64, e *sv1.ForgetEntry) Forgot {
	s.mu.Lock()
	defer s.mu.Unlock()
	var forgot []string
	drilled := s.drilledRollouts()
	for _, id := range e.GetRollouts() {
		r := s.rollouts[id]
		if r == nil || s.forgettable(r, drilled) != "" {
			continue
		}
		s.forgotten[id] = &sv1.ForgottenRollout{
			Id:          id,
			Service:     r.GetSpec().GetService(),
			Phase:       r.GetPhase(),
			CreatedAt:   r.GetCreatedAt(),
			EndedAt:     r.GetUpdatedAt(),
			Generation:  r.GetGeneration(),
			ForgottenAt: e.GetStampedAt(),
			Index:       index,
		}
		delete(s.rollouts, id)
		forgot = append(forgot, id)
	}
	var drills []string
	for _, id := range e.GetDrills() {
		d := s.drills[id]
		if d == nil || DrillLive(d.GetPhase()) {
			continue
		}
		s.forgottenDrills[id] = &sv1.ForgottenDrill{
			Id:          id,
			Service:     d.GetSpec().GetService(),
			Phase:       d.GetPhase(),
			CreatedAt:   d.GetCreatedAt(),
			EndedAt:     d.GetEndedAt(),
			ForgottenAt: e.GetStampedAt(),
			Index:       index,
			Generation:  d.GetGeneration(),
		}
		delete(s.drills, id)
		drills = append(drills, id)
	}
	var what []string
	if len(forgot) > 0 {
		what = append(what, fmt.Sprintf("%d finished rollouts: %s", len(forgot), strings.Join(forgot, ", ")))
	}
	if len(drills) > 0 {
		what = append(what, fmt.Sprintf("%d ended drills: %s", len(drills), strings.Join(drills, ", ")))
	}
	if len(what) > 0 {
		s.appendAudit(&sv1.AuditRecord{Index: index, At: e.GetStampedAt(), Kind: "forgotten", Actor: "switchyard", Accepted: true,
			Message: fmt.Sprintf("forgot from the replicated state (%s) %s", e.GetReason(), strings.Join(what, "; "))})
	}
	return Forgot{Rollouts: forgot, Drills: drills}
}

// DrillForgetCandidates names at most limit drills that ended before
// endedBefore, oldest first, keeping the newest KeepFinishedPerService
// ended drills of every service.
func (s *State) DrillForgetCandidates(endedBefore time.Time, limit int) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var done []ended
	for _, d := range s.drills {
		if !DrillLive(d.GetPhase()) {
			done = append(done, ended{id: d.GetId(), service: d.GetSpec().GetService(), at: d.GetEndedAt().AsTime()})
		}
	}
	return oldestBeyondNewest(done, endedBefore, limit)
}

// ended is a finished rollout or ended drill as the retention reads it.
type ended struct {
	id, service string
	at          time.Time
	// stays is set for one the retention must not forget yet; it still
	// counts among its service's newest.
	stays bool
}

// oldestBeyondNewest names, oldest first, at most limit (0: no limit) of
// done that ended before endedBefore and may go, leaving out the newest
// KeepFinishedPerService of each service.
func oldestBeyondNewest(done []ended, endedBefore time.Time, limit int) []string {
	byEnd := func(a, b ended) int { return cmp.Or(a.at.Compare(b.at), cmp.Compare(a.id, b.id)) }
	byService := map[string][]ended{}
	for _, e := range done {
		byService[e.service] = append(byService[e.service], e)
	}
	var old []ended
	for _, es := range byService {
		if len(es) <= KeepFinishedPerService {
			continue
		}
		slices.SortFunc(es, byEnd)
		for _, e := range es[:len(es)-KeepFinishedPerService] {
			if !e.stays && e.at.Before(endedBefore) {
				old = append(old, e)
			}
		}
	}
	slices.SortFunc(old, byEnd)
	if limit > 0 && len(old) > limit {
		old = old[:limit]
	}
	ids := make([]string, len(old))
	for i, e := range old {
		ids[i] = e.id
	}
	return ids
}

// ForgottenDrill returns a copy of the tombstone of a forgotten drill, or
// nil.
func (s *State) ForgottenDrill(id string) *sv1.ForgottenDrill {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if f := s.forgottenDrills[id]; f != nil {
		return proto.CloneOf(f)
	}
	return nil
}

// DrillCounts is how many drills the state holds and how many it forgot.
func (s *State) DrillCounts() (held, forgotten int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.drills), len(s.forgottenDrills)
}

// ForgottenDrillError says that a drill was forgotten, and where its
// records are.
func ForgottenDrillError(f *sv1.ForgottenDrill) error {
	return fmt.Errorf("drill %q (%s) %s at %s and was forgotten from the replicated state at %s (index %d) by the retention (--forget-finished-after); what it did is in the audit trail (switchyard audit log)",
		f.GetId(), f.GetService(), DrillPhaseName(f.GetPhase()), f.GetEndedAt().AsTime().UTC().Format(time.RFC3339),
		f.GetForgottenAt().AsTime().UTC().Format(time.RFC3339), f.GetIndex())
}

// ForgetCandidates names at most limit finished rollouts that ended before
// endedBefore and may be forgotten, oldest first, keeping the newest
// KeepFinishedPerService finished rollouts of every service (those that
// ended last, as the dashboard lists them).
func (s *State) ForgetCandidates(endedBefore time.Time, limit int) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	drilled := s.drilledRollouts()
	var done []ended
	for _, r := range s.rollouts {
		if terminal(r.GetPhase()) {
			done = append(done, ended{id: r.GetId(), service: r.GetSpec().GetService(), at: r.GetUpdatedAt().AsTime(),
				stays: s.forgettable(r, drilled) != ""})
		}
	}
	return oldestBeyondNewest(done, endedBefore, limit)
}

// Forgotten returns a copy of the tombstone of a forgotten rollout, or nil.
func (s *State) Forgotten(id string) *sv1.ForgottenRollout {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if f := s.forgotten[id]; f != nil {
		return proto.CloneOf(f)
	}
	return nil
}

// RolloutCounts is how many rollouts the state holds and how many it
// forgot.
func (s *State) RolloutCounts() (held, forgotten int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.rollouts), len(s.forgotten)
}

// ForgottenOf counts the forgotten rollouts of service, or of every
// service when it is empty.
func (s *State) ForgottenOf(service string) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if service == "" {
		return len(s.forgotten)
	}
	n := 0
	for _, f := range s.forgotten {
		if f.GetService() == service {
			n++
		}
	}
	return n
}

// ForgottenError says that a rollout was forgotten, and where its records
// are.
func ForgottenError(f *sv1.ForgottenRollout) error {
	return fmt.Errorf("rollout %q (%s) %s at %s and was forgotten from the replicated state at %s (index %d) by the retention (--forget-finished-after); what it did is in the audit trail (switchyard audit log --rollout %[1]q)",
		f.GetId(), f.GetService(), PhaseName(f.GetPhase()), f.GetEndedAt().AsTime().UTC().Format(time.RFC3339),
		f.GetForgottenAt().AsTime().UTC().Format(time.RFC3339), f.GetIndex())
}
