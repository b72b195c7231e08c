// Package state is the coordinator's replicated data model: services,
// rollouts and processed intents, changed only by the deterministic apply
// functions the Raft state machine calls, and read concurrently by queries.
package state

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/names"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Result codes of refused intents, stable words a pipeline can match on.
const (
	CodeInvalid   = "invalid"
	CodeNotFound  = "not_found"
	CodeConflict  = "conflict"
	CodeMalformed = "malformed"
	// CodeBlastRadius refuses a drill that would touch more nodes than its
	// caps allow.
	CodeBlastRadius = "blast_radius"
	// CodeIDTaken refuses an intent whose id another intent took before.
	CodeIDTaken = bus.CodeIDTaken
	// CodeRefusalsNotRecorded marks the audit record that counts refusals
	// the leader answered but did not record one by one (more came than
	// it records a second).
	CodeRefusalsNotRecorded = "refusals_not_recorded"
)

// Rules is the version of the intent rules this code applies; the leader
// stamps it on every intent entry it commits (IntentEntry.rules). A rule
// that changes what an intent does, or what its history and audit record
// say, applies only to entries of its version or later, so an entry from
// before replays exactly as it applied and the audit chain stays the same.
//
// Version 1: a manualGate on the first wave holds the rollout before any
// traffic moves until it is approved (before, it was ignored); the reason
// of an approve or promote is kept in the history line and audit record.
//
// Version 2: an intent's audit record says every history line it wrote and
// every drill it ended (before, its rollout's last history line only: an
// abort's reason was lost behind a rollback webhook's line, and chaos
// abort and stop-all said nothing).
//
// Version 3: an approval counts toward the two-person rule only while its
// approver's key holds the approver role on the rollout's service (before,
// the approval of a key revoked since still counted).
//
// Version 4: the audit record of a drill's intent (chaos run, chaos abort)
// names the rollout the drill runs inside, if any (before, the drill's own
// name, as if it were a rollout).
//
// Version 5 (stamped on rollback and webhook-result entries too): only the
// line that starts a rollback is audited as a "rollback" record with its
// evidence; the webhook lines written while rolling back are "decision"
// records (before, each was a rollback record of its own, so one rollback
// with a rollback webhook read as three).
const Rules uint32 = 5

// IntentMemory is how long an applied intent id is remembered for
// deduplication; it matches the intent stream's retention.
const IntentMemory = 7 * 24 * time.Hour

// Applied is what an apply function did: the answer for the intent's sender
// and the services whose desired state changed and must be published.
type Applied struct {
	Result  *sv1.IntentResult
	Changed []string
	// Drills names drills whose document changed.
	Drills []string
}

// State is the replicated state. Apply functions are called by the state
// machine only, one at a time; readers may call the getters concurrently and
// get copies.
type State struct {
	mu       sync.RWMutex
	services map[string]*sv1.ServiceRecord
	rollouts map[string]*sv1.Rollout
	intents  map[string]*sv1.ProcessedIntent
	drills   map[string]*sv1.Drill
	// forgotten are the tombstones of the rollouts the retention forgot
	// (see forget.go).
	forgotten       map[string]*sv1.ForgottenRollout
	forgottenDrills map[string]*sv1.ForgottenDrill
	// epoch is the cluster's lineage (see epoch.go); 0 reads as 1.
	epoch uint64
	// acl is the roles and policy (see acl.go).
	acl *sv1.AclState
	// auditHead and audit are the audit chain (see audit.go).
	auditHead *sv1.AuditHead
	audit     []*sv1.AuditEntry
	// inIntent is set while an intent applies: its history lines are
	// audited as the intent, not one record each; intentLines collects
	// them (and the drills it ended) for that record.
	inIntent    bool
	intentLines []string
	// rollbackRules is the rules version of the RollbackEntry or
	// HookResultEntry applying; rollbackLine is set while the line that
	// starts its rollback is recorded. From version 5 only that line is
	// audited as a rollback.
	rollbackRules uint32
	rollbackLine  bool
	// actor is the verified author of the intent being applied.
	actor actor
}

// New returns an empty state.
func New() *State {
	return &State{
		services:        map[string]*sv1.ServiceRecord{},
		rollouts:        map[string]*sv1.Rollout{},
		intents:         map[string]*sv1.ProcessedIntent{},
		drills:          map[string]*sv1.Drill{},
		forgotten:       map[string]*sv1.ForgottenRollout{},
		forgottenDrills: map[string]*sv1.ForgottenDrill{},
		acl:             &sv1.AclState{},
		auditHead:       &sv1.AuditHead{},
	}
}

// ApplyIntent applies an operator intent committed at index. It never fails:
// refusals are part of the result, so every replica records the same answer.
func (s *State) ApplyIntent(index uint64, e *sv1.IntentEntry) Applied {
	s.mu.Lock()
	defer s.mu.Unlock()

	in := e.GetIntent()
	at := e.GetStampedAt().AsTime()
	if prev, ok := s.intents[in.GetId()]; ok {
		res := proto.Clone(prev.GetResult()).(*sv1.IntentResult)
		res.Duplicate = true
		return Applied{Result: res}
	}
	s.forgetIntentsBefore(at.Add(-IntentMemory))

	s.inIntent = true
	defer func() { s.inIntent, s.intentLines, s.actor = false, nil, actor{} }()
	who, refused := s.authorize(e)
	s.actor = who
	var a Applied
	op := who.name
	if refused != nil {
		a = *refused
	} else {
		switch act := in.GetAction().(type) {
		case nil:
			a = refuse(CodeInvalid, "intent names no action")
		case *sv1.Intent_ApplyRollout:
			a = s.applyRollout(index, at, op, act.ApplyRollout.GetSpec(), e.GetRules())
		case *sv1.Intent_AbortRollout:
			a = s.rollBack(index, at, op, act.AbortRollout.GetRollout(), act.AbortRollout.GetReason(), "abort")
		case *sv1.Intent_UndoRollout:
			a = s.rollBack(index, at, op, act.UndoRollout.GetRollout(), act.UndoRollout.GetReason(), "undo")
		case *sv1.Intent_PauseRollout:
			a = s.setPaused(index, at, op, act.PauseRollout, true)
		case *sv1.Intent_ResumeRollout:
			a = s.setPaused(index, at, op, act.ResumeRollout, false)
		case *sv1.Intent_ApproveRollout:
			a = s.approve(index, at, op, act.ApproveRollout, e.GetRules())
		case *sv1.Intent_PromoteRollout:
			a = s.promote(index, at, op, act.PromoteRollout, e.GetRules())
		case *sv1.Intent_RetryRollout:
			a = s.retry(index, at, op, act.RetryRollout)
		case *sv1.Intent_RunDrill:
			a = s.runDrill(index, at, op, act.RunDrill.GetSpec())
		case *sv1.Intent_AbortDrill:
			a = s.abortDrill(index, at, op, act.AbortDrill)
		case *sv1.Intent_StopAllDrills:
			a = s.stopAllDrills(index, at, op, act.StopAllDrills)
		case *sv1.Intent_Acl:
			a = s.applyAcl(index, who, act.Acl)
		}
	}
	a.Result.IntentId = in.GetId()
	a.Result.Index = index
	if in.GetId() != "" {
		s.intents[in.GetId()] = &sv1.ProcessedIntent{Id: in.GetId(), Result: a.Result, At: e.GetStampedAt(),
			Signer: e.GetSigner(), Fingerprint: bus.IntentFingerprint(in)}
	}
	s.auditIntent(index, e, who, a.Result)
	return Applied{Result: proto.Clone(a.Result).(*sv1.IntentResult), Changed: a.Changed, Drills: a.Drills}
}

func refuse(code, format string, args ...any) Applied {
	return Applied{Result: &sv1.IntentResult{Code: code, Error: fmt.Sprintf(format, args...)}}
}

func (s *State) forgetIntentsBefore(t time.Time) {
	for id, p := range s.intents {
		if p.GetAt().AsTime().Before(t) {
			delete(s.intents, id)
		}
	}
}

func (s *State) applyRollout(index uint64, at time.Time, operator string, sp *sv1.RolloutSpec, rules uint32) Applied {
	if sp == nil {
		return refuse(CodeInvalid, "apply_rollout.spec: required")
	}
	sp = proto.Clone(sp).(*sv1.RolloutSpec)
	spec.Default(sp)
	if err := spec.Validate(sp); err != nil {
		return refuse(CodeInvalid, "%v", err)
	}
	if _, ok := s.rollouts[sp.GetName()]; ok {
		return refuse(CodeConflict, "spec.name: rollout %q exists; give the new rollout a new name", sp.GetName())
	}
	if f := s.forgotten[sp.GetName()]; f != nil {
		return refuse(CodeConflict, "spec.name: rollout %q existed (%s, ended %s; forgotten by the retention since); a name stays taken, give the new rollout a new name",
			sp.GetName(), PhaseName(f.GetPhase()), f.GetEndedAt().AsTime().UTC().Format(time.RFC3339))
	}
	svc := s.services[sp.GetService()]
	if svc != nil {
		if cur := s.rollouts[svc.GetActiveRollout()]; cur != nil && !terminal(cur.GetPhase()) {
			return refuse(CodeConflict, "spec.service: %q is in rollout %q (%s); abort it or wait for it to finish",
				sp.GetService(), cur.GetId(), PhaseName(cur.GetPhase()))
		}
	} else {
		svc = &sv1.ServiceRecord{Name: sp.GetService()}
		s.services[sp.GetService()] = svc
	}
	ts := timestamppb.New(at)
	r := &sv1.Rollout{
		Id:            sp.GetName(),
		Spec:          sp,
		Phase:         sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		CreatedAt:     ts,
		UpdatedAt:     ts,
		Operator:      operator,
		AuthorKey:     s.actor.key,
		StepStartedAt: ts,
		ApprovedWave:  -1,
		ApprovedStep:  -1,
	}
	s.rollouts[r.Id] = r
	svc.ActiveRollout = r.Id
	r.HoldStart = spec.Gated(sp, sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT)
	first := spec.Compile(sp)[0].Wave
	if rules >= 1 && first.GetManualGate() {
		r.StartGate, r.HoldStart = true, true
	}
	changed := s.rederive(svc, r, index, ts)
	where := s.position(r)
	switch {
	case r.StartGate && spec.Gated(sp, sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT):
		where = fmt.Sprintf("waiting for approval to start wave %s (manualGate) and for gating pre-rollout webhooks, no traffic moved", first.GetName())
	case r.StartGate:
		where = fmt.Sprintf("waiting for approval to start wave %s (manualGate), no traffic moved", first.GetName())
	case r.HoldStart:
		where = "held by gating pre-rollout webhooks, no traffic moved"
	}
	s.record(r, index, ts, operator, fmt.Sprintf("started: %s from %s to %s, %s", sp.GetService(), sp.GetFrom(), sp.GetTo(), where))
	s.duePoint(r, sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT, KeyPreRollout, index, ts)
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}, Changed: changed}
}

// gateAt reports whether r waits for an approval where it is: a pause
// without a duration, the end of a wave whose next wave has a manual gate,
// or the start of a rollout whose first wave has one.
func gateAt(r *sv1.Rollout) bool {
	if r.GetStartGate() {
		return true
	}
	plan := spec.Compile(r.GetSpec())
	w, st := int(r.GetWave()), int(r.GetStep())
	if w >= len(plan) {
		return false
	}
	pw := plan[w]
	if st >= len(pw.Steps) {
		return w+1 < len(plan) && plan[w+1].Wave.GetManualGate()
	}
	p := pw.Steps[st].GetPause()
	return p != nil && p.GetDuration().AsDuration() <= 0
}

// rederive recomputes the service's desired state after r changed. A new
// document, with generation index, is made only when some wave's weights
// changed: a step that only waits must not make every agent re-apply.
func (s *State) rederive(svc *sv1.ServiceRecord, r *sv1.Rollout, index uint64, at *timestamppb.Timestamp) []string {
	next := derive(r, index, at)
	if cur := svc.GetDesired(); cur != nil && cur.GetRolloutId() == next.GetRolloutId() && sameWeights(cur, next) {
		return nil
	}
	svc.Desired = next
	r.Generation = index
	return []string{svc.GetName()}
}

func sameWeights(a, b *sv1.DesiredState) bool {
	strip := func(d *sv1.DesiredState) *sv1.DesiredState {
		return &sv1.DesiredState{Waves: d.GetWaves(), DefaultWeights: d.GetDefaultWeights()}
	}
	return proto.Equal(strip(a), strip(b))
}

// record appends to a rollout's history.
func (s *State) record(r *sv1.Rollout, index uint64, at *timestamppb.Timestamp, operator, message string) {
	appendHistory(r, index, at, operator, message)
	s.auditDecision(r, index, at, message)
}

// appendHistory adds a line to a rollout's history, at its phase now.
func appendHistory(r *sv1.Rollout, index uint64, at *timestamppb.Timestamp, operator, message string) {
	r.UpdatedAt = at
	r.History = append(r.History, &sv1.RolloutEvent{At: at, Index: index, Phase: r.GetPhase(), Operator: operator, Message: message})
}

// position says where a rollout is, for history lines.
func (s *State) position(r *sv1.Rollout) string {
	plan := spec.Compile(r.GetSpec())
	w, st := int(r.GetWave()), int(r.GetStep())
	if w >= len(plan) {
		return "past the last wave"
	}
	pw := plan[w]
	if st >= len(pw.Steps) {
		return fmt.Sprintf("wave %s done", pw.Wave.GetName())
	}
	return fmt.Sprintf("wave %s step %d/%d (%s, new backend at %d%%)", pw.Wave.GetName(), st+1, len(pw.Steps),
		spec.DescribeStep(pw.Steps[st]), spec.WeightAt(pw.Steps, st))
}

// owned returns the rollout named id if it is the one that owns its service.
func (s *State) owned(id, field string) (*sv1.Rollout, *sv1.ServiceRecord, *Applied) {
	r := s.rollouts[id]
	if r == nil {
		a := refuse(CodeNotFound, "%s: no rollout named %q", field, id)
		if f := s.forgotten[id]; f != nil {
			a = refuse(CodeNotFound, "%s: %v", field, ForgottenError(f))
		}
		return nil, nil, &a
	}
	svc := s.services[r.GetSpec().GetService()]
	if svc.GetActiveRollout() != r.GetId() {
		a := refuse(CodeConflict, "%s: %q is no longer the latest rollout of %q (%q is)", field, r.GetId(), svc.GetName(), svc.GetActiveRollout())
		return nil, nil, &a
	}
	return r, svc, nil
}

// rollBack sends a rollout's service back to its old backend. "abort" works
// at any point until the rollout is rolled back; "undo" is for a completed
// rollout only, so a script cannot roll back a release still in flight by
// mistake.
func (s *State) rollBack(index uint64, at time.Time, operator, id, reason, verb string) Applied {
	r, svc, refused := s.owned(id, verb+"_rollout.rollout")
	if refused != nil {
		return *refused
	}
	switch p := r.GetPhase(); {
	case p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK || p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
		return refuse(CodeConflict, "%s_rollout.rollout: %q is already %s", verb, r.GetId(), PhaseName(p))
	case verb == "undo" && p != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
		return refuse(CodeConflict, "undo_rollout.rollout: %q is %s, not completed; abort it instead", r.GetId(), PhaseName(p))
	}
	if reason == "" {
		reason = verb + " by " + cmp.Or(operator, "an operator")
	}
	ts := timestamppb.New(at)
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK
	r.Reason = reason
	r.HoldStart, r.StartGate = false, false
	s.cancelGates(r, index, ts)
	changed := s.rederive(svc, r, index, ts)
	s.record(r, index, ts, operator, "rolling back: "+reason)
	s.duePoint(r, sv1.HookPoint_HOOK_POINT_ROLLBACK, KeyRollback, index, ts)
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}, Changed: changed}
}

func (s *State) setPaused(index uint64, at time.Time, operator string, c *sv1.RolloutControl, paused bool) Applied {
	verb := map[bool]string{true: "pause", false: "resume"}[paused]
	r, _, refused := s.owned(c.GetRollout(), verb+"_rollout.rollout")
	if refused != nil {
		return *refused
	}
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		return refuse(CodeConflict, "%s_rollout.rollout: %q is %s; only a progressing rollout can be paused or resumed", verb, r.GetId(), PhaseName(r.GetPhase()))
	}
	if r.GetPaused() == paused {
		return refuse(CodeConflict, "%s_rollout.rollout: %q is already %sd", verb, r.GetId(), verb)
	}
	r.Paused = paused
	r.PauseReason = ""
	msg := verb + "d"
	if c.GetReason() != "" {
		msg += ": " + c.GetReason()
	}
	s.record(r, index, timestamppb.New(at), operator, msg)
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}}
}

// approve approves the gate at the rollout's current position: a pause
// without a duration, the manual gate of the next wave, or that of the
// first wave before any traffic moved.
func (s *State) approve(index uint64, at time.Time, operator string, c *sv1.RolloutControl, rules uint32) Applied {
	r, _, refused := s.owned(c.GetRollout(), "approve_rollout.rollout")
	if refused != nil {
		return *refused
	}
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		return refuse(CodeConflict, "approve_rollout.rollout: %q is %s; there is nothing to approve", r.GetId(), PhaseName(r.GetPhase()))
	}
	if !gateAt(r) {
		return refuse(CodeNothingToApprove, "approve_rollout.rollout: %q is at %s; there is nothing to approve (approval opens a pause without a duration or the manual gate of the next wave)", r.GetId(), s.position(r))
	}
	if r.GetStartGate() {
		return s.approveStart(index, at, operator, r, why(c.GetReason(), rules), rules)
	}
	if r.GetApprovedWave() == r.GetWave() && r.GetApprovedStep() == r.GetStep() {
		return refuse(CodeNothingToApprove, "approve_rollout.rollout: %q is approved at %s already", r.GetId(), s.position(r))
	}
	ts := timestamppb.New(at)
	if stop := s.countApproval(r, index, ts, operator, "at "+s.position(r), why(c.GetReason(), rules), rules); stop != nil {
		return *stop
	}
	r.ApprovedWave, r.ApprovedStep = r.GetWave(), r.GetStep()
	s.record(r, index, ts, operator, "approved at "+s.position(r)+why(c.GetReason(), rules))
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}}
}

// approveStart approves the manual gate of the first wave. Without gating
// pre-rollout webhooks the first traffic moves in this entry; with them,
// the controller starts the rollout once they passed too.
func (s *State) approveStart(index uint64, at time.Time, operator string, r *sv1.Rollout, reason string, rules uint32) Applied {
	first := spec.Compile(r.GetSpec())[0].Wave.GetName()
	ts := timestamppb.New(at)
	if stop := s.countApproval(r, index, ts, operator, "to start wave "+first, reason, rules); stop != nil {
		return *stop
	}
	r.StartGate = false
	r.Approvers = nil
	if spec.Gated(r.GetSpec(), sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT) {
		s.record(r, index, ts, operator, fmt.Sprintf("approved the start of wave %s; waiting for gating pre-rollout webhooks", first)+reason)
		return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}}
	}
	svc := s.services[r.GetSpec().GetService()]
	r.HoldStart = false
	r.StepStartedAt = ts
	changed := s.rederive(svc, r, index, ts)
	s.record(r, index, ts, operator, fmt.Sprintf("approved the start of wave %s: %s", first, s.position(r))+reason)
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}, Changed: changed}
}

// countApproval applies the two-person rule to an approval of the gate
// where names: it returns what to answer when the approval is refused, or
// recorded as one of several still needed (the gate stays shut), and nil
// when the gate opens.
func (s *State) countApproval(r *sv1.Rollout, index uint64, ts *timestamppb.Timestamp, operator, where, reason string, rules uint32) *Applied {
	marks, need, refused := s.twoPerson(r, s.actor, "approve")
	if refused != nil {
		return refused
	}
	if need > 0 {
		r.Approvers = marks
		if got := len(s.approvalsAt(r, marks, rules)); uint32(got) < need {
			s.record(r, index, ts, operator, fmt.Sprintf("approval %d of %d %s (two-person rule)", got, need, where)+reason)
			return &Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}}
		}
	}
	return nil
}

// why is an operator's reason as a history line ends with it; entries from
// before rules version 1 never recorded it.
func why(reason string, rules uint32) string {
	if reason == "" || rules < 1 {
		return ""
	}
	return "; reason: " + reason
}

// promote skips the current step, or with full every remaining one.
func (s *State) promote(index uint64, at time.Time, operator string, c *sv1.PromoteRollout, rules uint32) Applied {
	r, svc, refused := s.owned(c.GetRollout(), "promote_rollout.rollout")
	if refused != nil {
		return *refused
	}
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		return refuse(CodeConflict, "promote_rollout.rollout: %q is %s; only a progressing rollout can be promoted", r.GetId(), PhaseName(r.GetPhase()))
	}
	marks, need, refused := s.twoPerson(r, s.actor, "promote")
	if refused != nil {
		return *refused
	}
	if got := len(s.approvalsAt(r, marks, rules)); uint32(got) < need {
		return refuse(CodeTwoPerson, "promote_rollout.rollout: %q has %d of the %d approvals the policy asks at %s (two-person rule: approvers other than the author); another approver must approve first",
			r.GetId(), got, need, s.position(r))
	}
	ts := timestamppb.New(at)
	var changed []string
	reason := why(c.GetReason(), rules)
	if c.GetFull() {
		changed = s.promoteFully(svc, r, index, ts, operator, "promoted fully by an operator", reason)
	} else {
		w, st, full := spec.Next(spec.Compile(r.GetSpec()), int(r.GetWave()), int(r.GetStep()))
		if full {
			changed = s.promoteFully(svc, r, index, ts, operator, "promoted past the last step by an operator", reason)
		} else {
			changed = s.moveTo(svc, r, index, ts, operator, w, st, "skipped ahead by an operator", reason)
		}
	}
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}, Changed: changed}
}

// retry issues a rollout's current desired state again, unchanged but
// for its generation (this entry's index). A node a failed pre-traffic
// hook kept on the old backend applied the last generation with the new
// backend at 0; the new one gives it weight again, so it runs the hook
// again (agents run it once per generation). The other nodes have the
// weights already and change nothing. Only a rollout that gives the new
// backend traffic can be retried: progressing, promoted or completed, and
// still the latest of its service.
func (s *State) retry(index uint64, at time.Time, operator string, c *sv1.RolloutControl) Applied {
	r, svc, refused := s.owned(c.GetRollout(), "retry_rollout.rollout")
	if refused != nil {
		return *refused
	}
	switch r.GetPhase() {
	case sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED, sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
	default:
		return refuse(CodeConflict, "retry_rollout.rollout: %q is %s; only a progressing, promoted or completed rollout gives %s traffic to retry",
			r.GetId(), PhaseName(r.GetPhase()), r.GetSpec().GetTo())
	}
	cur := svc.GetDesired()
	if cur.GetRolloutId() != r.GetId() {
		return refuse(CodeConflict, "retry_rollout.rollout: %q has no document of its own to issue again", r.GetId())
	}
	// The document itself, not one derived anew: a completed rollout's is
	// its promotion's, which agents still read as moving traffic (so the
	// pre-traffic hooks run); derived now it would say completed.
	ts := timestamppb.New(at)
	prev := cur.GetGeneration()
	next := proto.Clone(cur).(*sv1.DesiredState)
	next.Generation, next.IssuedAt = index, ts
	svc.Desired = next
	r.Generation = index
	s.record(r, index, ts, operator, fmt.Sprintf("retried: generation %d issues generation %d's weights again, so nodes a failed pre-traffic hook kept on %s run it again%s",
		index, prev, r.GetSpec().GetFrom(), why(c.GetReason(), 1)))
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}, Changed: []string{svc.GetName()}}
}

func (s *State) moveTo(svc *sv1.ServiceRecord, r *sv1.Rollout, index uint64, at *timestamppb.Timestamp, operator string, wave, step int, what, reason string) []string {
	r.Wave, r.Step = int32(wave), int32(step)
	r.Approvers = nil
	r.StepStartedAt = at
	r.HoldStart = false // an operator's skip passes the pre-rollout gates too
	r.StartGate = false // and the first wave's manual gate
	s.cancelGates(r, index, at)
	changed := s.rederive(svc, r, index, at)
	s.record(r, index, at, operator, what+": "+s.position(r)+reason)
	return changed
}

func (s *State) promoteFully(svc *sv1.ServiceRecord, r *sv1.Rollout, index uint64, at *timestamppb.Timestamp, operator, what, reason string) []string {
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED
	r.Approvers = nil
	r.HoldStart = false
	r.StartGate = false
	s.cancelGates(r, index, at)
	r.PromotedAt = at
	r.StepStartedAt = at
	changed := s.rederive(svc, r, index, at)
	msg := what + ": all traffic on " + r.GetSpec().GetTo()
	if d := spec.KeepWarm(r.GetSpec()); d > 0 {
		msg += fmt.Sprintf(", %s kept warm for %s", r.GetSpec().GetFrom(), d)
	}
	s.record(r, index, at, operator, msg+reason)
	return changed
}

// ApplyAdvance moves a rollout on, as the leader's controller decided. It is
// a no-op when the rollout is no longer where the controller saw it.
func (s *State) ApplyAdvance(index uint64, e *sv1.RolloutAdvanceEntry) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || r.GetPaused() || r.GetHoldStart() ||
		r.GetWave() != e.GetFromWave() || r.GetStep() != e.GetFromStep() {
		return nil
	}
	svc := s.services[r.GetSpec().GetService()]
	if e.GetPromote() {
		return s.promoteFully(svc, r, index, e.GetStampedAt(), "", cmp.Or(e.GetMessage(), "promoted"), "")
	}
	return s.moveTo(svc, r, index, e.GetStampedAt(), "", int(e.GetToWave()), int(e.GetToStep()), cmp.Or(e.GetMessage(), "advanced"), "")
}

// ApplyRollback sends a rollout back because a guardrail breached. It is a
// no-op when the rollout has moved on from the generation judged.
func (s *State) ApplyRollback(index uint64, e *sv1.RollbackEntry) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil || r.GetGeneration() != e.GetGeneration() {
		return nil
	}
	if p := r.GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING && p != sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED {
		return nil
	}
	svc := s.services[r.GetSpec().GetService()]
	s.rollbackRules = e.GetRules()
	defer func() { s.rollbackRules = 0 }()
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK
	s.cancelGates(r, index, e.GetStampedAt())
	r.Evidence = e.GetEvidence()
	r.Reason = "guardrail " + e.GetEvidence().GetGuardrail() + " breached: " + e.GetEvidence().GetSummary()
	changed := s.rederive(svc, r, index, e.GetStampedAt())
	s.recordRollback(r, index, e.GetStampedAt())
	s.duePoint(r, sv1.HookPoint_HOOK_POINT_ROLLBACK, KeyRollback, index, e.GetStampedAt())
	return changed
}

// ApplyFinish ends a promoted rollout's warm period.
func (s *State) ApplyFinish(index uint64, e *sv1.RolloutFinishEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED {
		return
	}
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED
	s.record(r, index, e.GetStampedAt(), "", finishMessage(r.GetSpec(), e))
	s.duePoint(r, sv1.HookPoint_HOOK_POINT_POST_ROLLOUT, KeyPostRollout, index, e.GetStampedAt())
}

// ApplyConverged records that the fleet confirmed a rollback. It is a no-op
// when the rollout has moved on since the leader looked.
func (s *State) ApplyConverged(index uint64, e *sv1.RolloutConvergedEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil || r.GetGeneration() != e.GetGeneration() || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK {
		return
	}
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK
	// The desired state is unchanged: its generation stays that of the entry
	// that produced it, so agents have nothing new to apply.
	msg := fmt.Sprintf("rolled back: %d live nodes applied generation %d", e.GetNodes(), e.GetGeneration())
	if len(e.GetStale()) > 0 {
		msg += "; not heard from, so not confirmed: " + strings.Join(e.GetStale(), ", ")
	}
	s.record(r, index, e.GetStampedAt(), "", msg)
}

// derive computes a rollout's desired state at a generation. It is a pure
// function of committed state, so every replica derives the same document.
// Waves the rollout has not reached are left out, so their nodes keep the
// weights they have.
func derive(r *sv1.Rollout, generation uint64, at *timestamppb.Timestamp) *sv1.DesiredState {
	sp := r.GetSpec()
	split := func(green uint32) map[string]uint32 {
		return map[string]uint32{sp.GetFrom(): 100 - green, sp.GetTo(): green}
	}
	ds := &sv1.DesiredState{
		Service:     sp.GetService(),
		Generation:  generation,
		RolloutId:   r.GetId(),
		IssuedAt:    at,
		Phase:       r.GetPhase(),
		FromBackend: sp.GetFrom(),
		ToBackend:   sp.GetTo(),
		AgentHooks:  sp.GetHooks().GetAgent(),
	}
	plan := spec.Compile(sp)
	for i, pw := range plan {
		var green uint32
		switch r.GetPhase() {
		case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
			green = 0
		case sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED, sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
			green = 100
		default:
			if i > int(r.GetWave()) || r.GetHoldStart() {
				continue
			}
			green = 100
			if i == int(r.GetWave()) {
				green = spec.WeightAt(pw.Steps, int(r.GetStep()))
			}
		}
		ds.Waves = append(ds.Waves, &sv1.WaveWeights{
			Index:       int32(i),
			Name:        pw.Wave.GetName(),
			Selector:    pw.Wave.GetSelector(),
			BasisPoints: pw.Wave.GetBasisPoints(),
			Weights:     split(green),
		})
	}
	if p := r.GetPhase(); p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK || p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		// Every node of the service goes back, whichever wave it was in.
		ds.DefaultWeights = split(0)
	}
	return ds
}

func terminal(p sv1.RolloutPhase) bool {
	return p == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED || p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK
}

// Terminal reports whether a phase is final: the fleet confirmed it and the
// service is free for another rollout.
func Terminal(p sv1.RolloutPhase) bool { return terminal(p) }

// PhaseName is the short lower-case name of a phase operators see.
func PhaseName(p sv1.RolloutPhase) string {
	switch p {
	case sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING:
		return "progressing"
	case sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
		return "completed"
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK:
		return "rolling-back"
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
		return "rolled-back"
	case sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED:
		return "promoted"
	}
	return "unknown"
}

// IntentResult returns the recorded result of an applied intent, or nil.
func (s *State) IntentResult(id string) *sv1.IntentResult {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if p := s.intents[id]; p != nil {
		return proto.Clone(p.GetResult()).(*sv1.IntentResult)
	}
	return nil
}

// IntentTaken returns the record of the intent that took id when it is
// not the intent of signer with fingerprint (bus.IntentFingerprint): an id
// names one intent, and a resend is answered with its first result, but
// another intent under the same id must not be. Records from before
// fingerprints take nothing.
func (s *State) IntentTaken(id, signer string, fingerprint []byte) *sv1.ProcessedIntent {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p := s.intents[id]
	if p == nil || len(p.GetFingerprint()) == 0 {
		return nil
	}
	if p.GetSigner() == signer && bytes.Equal(p.GetFingerprint(), fingerprint) {
		return nil
	}
	return proto.CloneOf(p)
}

// TakenError says that id was taken by another intent, and what to do.
func TakenError(p *sv1.ProcessedIntent) error {
	return fmt.Errorf("intent.id %q was taken at %s (index %d) by another intent; nothing of this one was applied: an id names one intent, send it again with a new id",
		p.GetId(), p.GetAt().AsTime().UTC().Format(time.RFC3339), p.GetResult().GetIndex())
}

// Rollout returns a copy of one rollout, or nil.
func (s *State) Rollout(id string) *sv1.Rollout {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if r := s.rollouts[id]; r != nil {
		return proto.Clone(r).(*sv1.Rollout)
	}
	return nil
}

// Rollouts returns copies of every rollout, newest first.
func (s *State) Rollouts() []*sv1.Rollout { return s.RolloutsWhere(nil) }

// RolloutsWhere returns copies of the rollouts keep takes (every one when
// keep is nil), newest first. keep is given the state's own rollout: it
// must neither change nor keep it. The state holds every rollout ever
// applied, so what runs every tick copies only the rollouts it looks at.
func (s *State) RolloutsWhere(keep func(*sv1.Rollout) bool) []*sv1.Rollout {
	out, _ := s.NewestRollouts(keep, 0)
	return out
}

// NewestRollouts is RolloutsWhere cut to the newest limit rollouts (every
// one when limit is 0), with how many older ones it left out. Only the
// rollouts it returns are copied.
func (s *State) NewestRollouts(keep func(*sv1.Rollout) bool, limit int) ([]*sv1.Rollout, int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var kept []*sv1.Rollout
	for _, r := range s.rollouts {
		if keep == nil || keep(r) {
			kept = append(kept, r)
		}
	}
	slices.SortFunc(kept, newestFirst)
	omitted := 0
	if limit > 0 && len(kept) > limit {
		kept, omitted = kept[:limit], len(kept)-limit
	}
	out := make([]*sv1.Rollout, len(kept))
	for i, r := range kept {
		out[i] = proto.Clone(r).(*sv1.Rollout)
	}
	return out, omitted
}

// Unfinished takes the rollouts that are not in a final phase, for
// RolloutsWhere.
func Unfinished(r *sv1.Rollout) bool { return !terminal(r.GetPhase()) }

func newestFirst(a, b *sv1.Rollout) int { return cmp.Compare(b.GetGeneration(), a.GetGeneration()) }

// RecentRollouts returns copies of the unfinished rollouts and of the
// finished newest that ended last (latest update), newest first, and how
// many finished rollouts it left out.
func (s *State) RecentRollouts(finished int) ([]*sv1.Rollout, int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var live, done []*sv1.Rollout
	for _, r := range s.rollouts {
		if terminal(r.GetPhase()) {
			done = append(done, r)
		} else {
			live = append(live, r)
		}
	}
	older := 0
	if len(done) > finished {
		slices.SortFunc(done, newestFirst)
		slices.SortStableFunc(done, func(a, b *sv1.Rollout) int {
			return b.GetUpdatedAt().AsTime().Compare(a.GetUpdatedAt().AsTime())
		})
		older = len(done) - finished
		done = done[:finished]
	}
	out := make([]*sv1.Rollout, 0, len(live)+len(done))
	for _, r := range append(live, done...) {
		out = append(out, proto.Clone(r).(*sv1.Rollout))
	}
	slices.SortFunc(out, newestFirst)
	return out, older
}

// Desired returns a copy of a service's current desired state, or nil.
func (s *State) Desired(service string) *sv1.DesiredState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if d := s.services[service].GetDesired(); d != nil {
		ds := proto.Clone(d).(*sv1.DesiredState)
		ds.Epoch = s.epochLocked()
		return ds
	}
	return nil
}

// Services returns the names of services with a desired state, sorted.
func (s *State) Services() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for name, svc := range s.services {
		if svc.GetDesired() != nil {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// Snapshot returns the whole state as one message, sorted so that equal
// states give equal bytes. The message is a copy the caller owns.
func (s *State) Snapshot() *sv1.StateSnapshot {
	s.mu.RLock()
	defer s.mu.RUnlock()
	snap := &sv1.StateSnapshot{Epoch: s.epoch, Acl: proto.Clone(s.acl).(*sv1.AclState), AuditHead: proto.Clone(s.auditHead).(*sv1.AuditHead)}
	for _, e := range s.audit {
		snap.Audit = append(snap.Audit, proto.Clone(e).(*sv1.AuditEntry))
	}
	for _, k := range sortedKeys(s.services) {
		snap.Services = append(snap.Services, proto.Clone(s.services[k]).(*sv1.ServiceRecord))
	}
	for _, k := range sortedKeys(s.rollouts) {
		snap.Rollouts = append(snap.Rollouts, proto.Clone(s.rollouts[k]).(*sv1.Rollout))
	}
	for _, k := range sortedKeys(s.intents) {
		snap.Intents = append(snap.Intents, proto.Clone(s.intents[k]).(*sv1.ProcessedIntent))
	}
	for _, k := range sortedKeys(s.drills) {
		snap.Drills = append(snap.Drills, proto.Clone(s.drills[k]).(*sv1.Drill))
	}
	for _, k := range sortedKeys(s.forgotten) {
		snap.Forgotten = append(snap.Forgotten, proto.CloneOf(s.forgotten[k]))
	}
	for _, k := range sortedKeys(s.forgottenDrills) {
		snap.ForgottenDrills = append(snap.ForgottenDrills, proto.CloneOf(s.forgottenDrills[k]))
	}
	return snap
}

// FromSnapshot builds a state from a snapshot message. It refuses snapshots
// with duplicate or empty keys rather than silently merging them.
func FromSnapshot(snap *sv1.StateSnapshot) (*State, error) {
	s := New()
	s.epoch = snap.GetEpoch()
	if err := s.restoreAclAudit(snap); err != nil {
		return nil, err
	}
	for _, v := range snap.GetServices() {
		if v.GetName() == "" || s.services[v.GetName()] != nil {
			return nil, fmt.Errorf("snapshot: service with empty or duplicate name %q", v.GetName())
		}
		s.services[v.GetName()] = v
	}
	for _, v := range snap.GetRollouts() {
		if v.GetId() == "" || s.rollouts[v.GetId()] != nil {
			return nil, fmt.Errorf("snapshot: rollout with empty or duplicate id %q", v.GetId())
		}
		s.rollouts[v.GetId()] = v
	}
	for _, v := range snap.GetIntents() {
		if v.GetId() == "" || s.intents[v.GetId()] != nil {
			return nil, fmt.Errorf("snapshot: intent with empty or duplicate id %q", v.GetId())
		}
		s.intents[v.GetId()] = v
	}
	for _, v := range snap.GetDrills() {
		if v.GetId() == "" || s.drills[v.GetId()] != nil {
			return nil, fmt.Errorf("snapshot: drill with empty or duplicate id %q", v.GetId())
		}
		s.drills[v.GetId()] = v
	}
	for _, v := range snap.GetForgotten() {
		if v.GetId() == "" || s.forgotten[v.GetId()] != nil || s.rollouts[v.GetId()] != nil {
			return nil, fmt.Errorf("snapshot: forgotten rollout with empty or duplicate id %q", v.GetId())
		}
		s.forgotten[v.GetId()] = v
	}
	for _, v := range snap.GetForgottenDrills() {
		if v.GetId() == "" || s.forgottenDrills[v.GetId()] != nil || s.drills[v.GetId()] != nil {
			return nil, fmt.Errorf("snapshot: forgotten drill with empty or duplicate id %q", v.GetId())
		}
		s.forgottenDrills[v.GetId()] = v
	}
	return s, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// finishMessage is the history line of a completed rollout: the nodes a
// failed pre-traffic hook kept on the old backend, as the leader saw them,
// are named, since the new backend does not serve them.
func finishMessage(sp *sv1.RolloutSpec, e *sv1.RolloutFinishEntry) string {
	msg := "completed: " + sp.GetTo() + " serves every wave"
	if len(e.GetHeld()) == 0 {
		return msg
	}
	return fmt.Sprintf("%s but on %s, kept on %s by a failed pre-traffic hook", msg, names.Listed(e.GetHeld(), int(e.GetHeldMore())), sp.GetFrom())
}
