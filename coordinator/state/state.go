// Package state is the coordinator's replicated data model: services,
// rollouts and processed intents, changed only by the deterministic apply
// functions the Raft state machine calls, and read concurrently by queries.
package state

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/desired"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Result codes of refused intents, stable words a pipeline can match on.
const (
	CodeInvalid   = "invalid"
	CodeNotFound  = "not_found"
	CodeConflict  = "conflict"
	CodeMalformed = "malformed"
)

// IntentMemory is how long an applied intent id is remembered for
// deduplication; it matches the intent stream's retention.
const IntentMemory = 7 * 24 * time.Hour

// Applied is what an apply function did: the answer for the intent's sender
// and the services whose desired state changed and must be published.
type Applied struct {
	Result  *sv1.IntentResult
	Changed []string
}

// State is the replicated state. Apply functions are called by the state
// machine only, one at a time; readers may call the getters concurrently and
// get copies.
type State struct {
	mu       sync.RWMutex
	services map[string]*sv1.ServiceRecord
	rollouts map[string]*sv1.Rollout
	intents  map[string]*sv1.ProcessedIntent
}

// New returns an empty state.
func New() *State {
	return &State{
		services: map[string]*sv1.ServiceRecord{},
		rollouts: map[string]*sv1.Rollout{},
		intents:  map[string]*sv1.ProcessedIntent{},
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

	var a Applied
	switch act := in.GetAction().(type) {
	case *sv1.Intent_ApplyRollout:
		a = s.applyRollout(index, at, in.GetOperator(), act.ApplyRollout.GetSpec())
	case *sv1.Intent_AbortRollout:
		a = s.abortRollout(index, at, in.GetOperator(), act.AbortRollout)
	default:
		a = refuse(CodeInvalid, "intent names no action; want apply_rollout or abort_rollout")
	}
	a.Result.IntentId = in.GetId()
	a.Result.Index = index
	if in.GetId() != "" {
		s.intents[in.GetId()] = &sv1.ProcessedIntent{Id: in.GetId(), Result: a.Result, At: e.GetStampedAt()}
	}
	return Applied{Result: proto.Clone(a.Result).(*sv1.IntentResult), Changed: a.Changed}
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

func (s *State) applyRollout(index uint64, at time.Time, operator string, sp *sv1.RolloutSpec) Applied {
	if sp == nil {
		return refuse(CodeInvalid, "apply_rollout.spec: required")
	}
	if err := spec.Validate(sp); err != nil {
		return refuse(CodeInvalid, "%v", err)
	}
	if _, ok := s.rollouts[sp.GetName()]; ok {
		return refuse(CodeConflict, "spec.name: rollout %q exists; give the new rollout a new name", sp.GetName())
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
		Id:         sp.GetName(),
		Spec:       proto.Clone(sp).(*sv1.RolloutSpec),
		Phase:      sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		CreatedAt:  ts,
		UpdatedAt:  ts,
		Operator:   operator,
		Generation: index,
	}
	r.History = append(r.History, &sv1.RolloutEvent{At: ts, Index: index, Phase: r.Phase, Operator: operator,
		Message: fmt.Sprintf("switch %s from %s to %s", sp.GetService(), sp.GetFrom(), sp.GetTo())})
	s.rollouts[r.Id] = r
	svc.ActiveRollout = r.Id
	svc.Desired = derive(r, index, ts)
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}, Changed: []string{svc.Name}}
}

func (s *State) abortRollout(index uint64, at time.Time, operator string, ab *sv1.AbortRollout) Applied {
	r := s.rollouts[ab.GetRollout()]
	if r == nil {
		return refuse(CodeNotFound, "abort_rollout.rollout: no rollout named %q", ab.GetRollout())
	}
	svc := s.services[r.GetSpec().GetService()]
	if svc.GetActiveRollout() != r.GetId() {
		return refuse(CodeConflict, "abort_rollout.rollout: %q is no longer the latest rollout of %q (%q is); abort that one",
			r.GetId(), svc.GetName(), svc.GetActiveRollout())
	}
	switch r.GetPhase() {
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
		return refuse(CodeConflict, "abort_rollout.rollout: %q is already %s", r.GetId(), PhaseName(r.GetPhase()))
	}
	ts := timestamppb.New(at)
	reason := ab.GetReason()
	if reason == "" {
		reason = "aborted by " + cmp.Or(operator, "an operator")
	}
	r.Phase = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK
	r.Reason = reason
	r.UpdatedAt = ts
	r.Generation = index
	r.History = append(r.History, &sv1.RolloutEvent{At: ts, Index: index, Phase: r.Phase, Operator: operator, Message: reason})
	svc.Desired = derive(r, index, ts)
	return Applied{Result: &sv1.IntentResult{Accepted: true, RolloutId: r.Id}, Changed: []string{svc.Name}}
}

// ApplyConverged records that the fleet confirmed a rollout's generation.
// It is a no-op when the rollout has moved on since the leader looked.
func (s *State) ApplyConverged(index uint64, e *sv1.RolloutConvergedEntry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.rollouts[e.GetRollout()]
	if r == nil || r.GetGeneration() != e.GetGeneration() {
		return
	}
	var next sv1.RolloutPhase
	switch r.GetPhase() {
	case sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING:
		next = sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK:
		next = sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK
	default:
		return
	}
	r.Phase = next
	r.UpdatedAt = e.GetStampedAt()
	r.History = append(r.History, &sv1.RolloutEvent{At: e.GetStampedAt(), Index: index, Phase: next,
		Message: fmt.Sprintf("%d live nodes applied generation %d", e.GetNodes(), e.GetGeneration())})
	// The desired state is unchanged: its generation stays that of the entry
	// that produced it, so agents have nothing new to apply.
}

// derive computes a rollout's desired state at a generation. It is a pure
// function of committed state, so every replica derives the same document.
func derive(r *sv1.Rollout, generation uint64, at *timestamppb.Timestamp) *sv1.DesiredState {
	sp := r.GetSpec()
	weights := map[string]uint32{sp.GetFrom(): 0, sp.GetTo(): 100}
	name := "switch"
	if r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK || r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		weights = map[string]uint32{sp.GetFrom(): 100, sp.GetTo(): 0}
		name = "rollback"
	}
	return &sv1.DesiredState{
		Service:    sp.GetService(),
		Generation: generation,
		RolloutId:  r.GetId(),
		Waves: []*sv1.WaveWeights{{
			Index:       0,
			Name:        name,
			BasisPoints: desired.FullBasisPoints,
			Weights:     weights,
		}},
		IssuedAt: at,
		Phase:    r.GetPhase(),
	}
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
func (s *State) Rollouts() []*sv1.Rollout {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*sv1.Rollout, 0, len(s.rollouts))
	for _, r := range s.rollouts {
		out = append(out, proto.Clone(r).(*sv1.Rollout))
	}
	slices.SortFunc(out, func(a, b *sv1.Rollout) int { return cmp.Compare(b.GetGeneration(), a.GetGeneration()) })
	return out
}

// Desired returns a copy of a service's current desired state, or nil.
func (s *State) Desired(service string) *sv1.DesiredState {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if d := s.services[service].GetDesired(); d != nil {
		return proto.Clone(d).(*sv1.DesiredState)
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
	snap := &sv1.StateSnapshot{}
	for _, k := range sortedKeys(s.services) {
		snap.Services = append(snap.Services, proto.Clone(s.services[k]).(*sv1.ServiceRecord))
	}
	for _, k := range sortedKeys(s.rollouts) {
		snap.Rollouts = append(snap.Rollouts, proto.Clone(s.rollouts[k]).(*sv1.Rollout))
	}
	for _, k := range sortedKeys(s.intents) {
		snap.Intents = append(snap.Intents, proto.Clone(s.intents[k]).(*sv1.ProcessedIntent))
	}
	return snap
}

// FromSnapshot builds a state from a snapshot message. It refuses snapshots
// with duplicate or empty keys rather than silently merging them.
func FromSnapshot(snap *sv1.StateSnapshot) (*State, error) {
	s := New()
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
