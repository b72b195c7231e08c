// Package fsm is the coordinator's Raft state machine: it decodes log entries
// (one type byte and a protobuf body) and applies them to the replicated
// state, and it snapshots and restores that state.
package fsm

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// MessageType is the first byte of every log entry. Numbers are append-only:
// a number once used keeps its meaning forever, or old logs replay wrong.
type MessageType uint8

const (
	// IntentType carries an sv1.IntentEntry: an operator's intent, stamped
	// by the leader.
	IntentType MessageType = 1
	// RolloutConvergedType carries an sv1.RolloutConvergedEntry.
	RolloutConvergedType MessageType = 2
	// RolloutAdvanceType carries an sv1.RolloutAdvanceEntry.
	RolloutAdvanceType MessageType = 3
	// RollbackType carries an sv1.RollbackEntry.
	RollbackType MessageType = 4
	// RolloutFinishType carries an sv1.RolloutFinishEntry.
	RolloutFinishType MessageType = 5
	// DrillStartType carries an sv1.DrillStartEntry.
	DrillStartType MessageType = 6
	// DrillEndType carries an sv1.DrillEndEntry.
	DrillEndType MessageType = 7
	// DrillReportType carries an sv1.DrillReportEntry.
	DrillReportType MessageType = 8
	// EpochType carries an sv1.EpochEntry: the operator raising the
	// cluster epoch.
	EpochType MessageType = 20
	// HookDueType carries an sv1.HookDueEntry.
	HookDueType MessageType = 50
	// HookResultType carries an sv1.HookResultEntry.
	HookResultType MessageType = 51
	// RolloutStartType carries an sv1.RolloutStartEntry.
	RolloutStartType MessageType = 52
	// LocalRollbackType carries an sv1.LocalRollbackEntry. A coordinator
	// from before it stops at such an entry (unknown type): upgrade every
	// coordinator of a cluster before rolling out with the new release.
	LocalRollbackType MessageType = 53
	// AuditRefusalType carries an sv1.AuditRefusalEntry: an intent the
	// leader refused before commit, kept for the audit.
	AuditRefusalType MessageType = 70
	// AuditExportedType carries an sv1.AuditExportedEntry.
	AuditExportedType MessageType = 71
	// AclBootstrapType carries an sv1.AclBootstrapEntry: the first admin.
	AclBootstrapType MessageType = 72
	// ForgetType carries an sv1.ForgetEntry: finished rollouts the
	// leader's retention removes. A coordinator from before it stops at
	// such an entry (unknown type): upgrade every coordinator of a cluster
	// before running one with --forget-finished-after on.
	ForgetType MessageType = 73
)

// ErrMalformedEntry is returned by Decode for bytes that are not an entry.
var ErrMalformedEntry = errors.New("malformed log entry")

// Encode builds a log entry.
func Encode(t MessageType, body proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encode entry type %d: %w", t, err)
	}
	return append([]byte{byte(t)}, b...), nil
}

// Decode parses a log entry into its type and body. Bad bytes give an error,
// never a panic; only Apply turns that error into a panic.
func Decode(data []byte) (MessageType, proto.Message, error) {
	if len(data) == 0 {
		return 0, nil, fmt.Errorf("%w: empty", ErrMalformedEntry)
	}
	t := MessageType(data[0])
	var body proto.Message
	switch t {
	case IntentType:
		body = &sv1.IntentEntry{}
	case RolloutConvergedType:
		body = &sv1.RolloutConvergedEntry{}
	case RolloutAdvanceType:
		body = &sv1.RolloutAdvanceEntry{}
	case RollbackType:
		body = &sv1.RollbackEntry{}
	case RolloutFinishType:
		body = &sv1.RolloutFinishEntry{}
	case LocalRollbackType:
		body = &sv1.LocalRollbackEntry{}
	case DrillStartType:
		body = &sv1.DrillStartEntry{}
	case DrillEndType:
		body = &sv1.DrillEndEntry{}
	case DrillReportType:
		body = &sv1.DrillReportEntry{}
	case EpochType:
		body = &sv1.EpochEntry{}
	case HookDueType:
		body = &sv1.HookDueEntry{}
	case HookResultType:
		body = &sv1.HookResultEntry{}
	case RolloutStartType:
		body = &sv1.RolloutStartEntry{}
	case AuditRefusalType:
		body = &sv1.AuditRefusalEntry{}
	case AuditExportedType:
		body = &sv1.AuditExportedEntry{}
	case AclBootstrapType:
		body = &sv1.AclBootstrapEntry{}
	case ForgetType:
		body = &sv1.ForgetEntry{}
	default:
		return t, nil, fmt.Errorf("%w: unknown type %d", ErrMalformedEntry, t)
	}
	if err := proto.Unmarshal(data[1:], body); err != nil {
		return t, nil, fmt.Errorf("%w: type %d: %v", ErrMalformedEntry, t, err)
	}
	return t, body, nil
}

// Response is what Apply returns to the caller of raft.Apply on the leader.
type Response struct {
	// Applied is set for intents.
	Applied state.Applied
	// Forgot names what a ForgetEntry forgot.
	Forgot state.Forgot
}

// Hooks are told, on every replica, which documents an entry changed; the
// leader uses them to publish. They must not block.
type Hooks struct {
	// Desired is told services whose desired state changed.
	Desired func(services []string)
	// Drills is told drills whose document changed.
	Drills func(drills []string)
}

// FSM implements raft.FSM over state.State.
type FSM struct {
	mu    sync.RWMutex
	state *state.State
	hooks Hooks
}

var _ raft.FSM = (*FSM)(nil)

// New returns a state machine over an empty state.
func New(hooks Hooks) *FSM {
	return &FSM{state: state.New(), hooks: hooks}
}

// State returns the current state for reading. After a Restore it is a new
// value, so callers should not hold on to it.
func (f *FSM) State() *state.State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state
}

// Apply applies one committed entry. An entry that does not decode means this
// replica would diverge from the others, so it panics rather than guess.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	t, body, err := Decode(l.Data)
	if err != nil {
		panic(fmt.Sprintf("raft log index %d: %v", l.Index, err))
	}
	st := f.State()
	switch t {
	case IntentType:
		a := st.ApplyIntent(l.Index, body.(*sv1.IntentEntry))
		f.changed(a.Changed)
		f.drillsChanged(a.Drills)
		return Response{Applied: a}
	case RolloutConvergedType:
		st.ApplyConverged(l.Index, body.(*sv1.RolloutConvergedEntry))
		return Response{}
	case RolloutAdvanceType:
		f.changed(st.ApplyAdvance(l.Index, body.(*sv1.RolloutAdvanceEntry)))
		return Response{}
	case RollbackType:
		f.changed(st.ApplyRollback(l.Index, body.(*sv1.RollbackEntry)))
		return Response{}
	case RolloutFinishType:
		st.ApplyFinish(l.Index, body.(*sv1.RolloutFinishEntry))
		return Response{}
	case LocalRollbackType:
		st.ApplyLocalRollback(l.Index, body.(*sv1.LocalRollbackEntry))
		return Response{}
	case DrillStartType:
		f.drillsChanged(st.ApplyDrillStart(l.Index, body.(*sv1.DrillStartEntry)))
		return Response{}
	case DrillEndType:
		f.drillsChanged(st.ApplyDrillEnd(l.Index, body.(*sv1.DrillEndEntry)))
		return Response{}
	case DrillReportType:
		st.ApplyDrillReport(l.Index, body.(*sv1.DrillReportEntry))
		return Response{}
	case EpochType:
		if st.ApplyEpoch(l.Index, body.(*sv1.EpochEntry)) {
			// Every document carries the epoch: all of them change.
			f.changed(st.Services())
			f.drillsChanged(st.PublishedDrills())
		}
		return Response{}
	case HookDueType:
		st.ApplyHookDue(l.Index, body.(*sv1.HookDueEntry))
		return Response{}
	case HookResultType:
		f.changed(st.ApplyHookResult(l.Index, body.(*sv1.HookResultEntry)))
		return Response{}
	case RolloutStartType:
		f.changed(st.ApplyStart(l.Index, body.(*sv1.RolloutStartEntry)))
		return Response{}
	case AuditRefusalType:
		st.ApplyAuditRefusal(l.Index, body.(*sv1.AuditRefusalEntry))
		return Response{}
	case AuditExportedType:
		st.ApplyAuditExported(body.(*sv1.AuditExportedEntry))
		return Response{}
	case AclBootstrapType:
		st.ApplyAclBootstrap(l.Index, body.(*sv1.AclBootstrapEntry))
		return Response{}
	case ForgetType:
		return Response{Forgot: st.ApplyForget(l.Index, body.(*sv1.ForgetEntry))}
	}
	panic(fmt.Sprintf("raft log index %d: type %d decoded but not applied", l.Index, t))
}

func (f *FSM) changed(services []string) {
	if f.hooks.Desired != nil && len(services) > 0 {
		f.hooks.Desired(services)
	}
}

func (f *FSM) drillsChanged(drills []string) {
	if f.hooks.Drills != nil && len(drills) > 0 {
		f.hooks.Drills(drills)
	}
}

// Snapshot captures the state as an immutable message; Persist writes it.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{msg: f.State().Snapshot()}, nil
}

// Restore replaces the state with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := ReadSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.state = st
	f.mu.Unlock()
	f.changed(st.Services())
	f.drillsChanged(st.PublishedDrills())
	return nil
}

// ReadSnapshot decodes a snapshot stream into a state. Bad bytes give an
// error, never a panic.
func ReadSnapshot(r io.Reader) (*state.State, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read snapshot: %w", err)
	}
	var msg sv1.StateSnapshot
	if err := proto.Unmarshal(data, &msg); err != nil {
		return nil, fmt.Errorf("decode snapshot: %w", err)
	}
	return state.FromSnapshot(&msg)
}

type snapshot struct{ msg *sv1.StateSnapshot }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(s.msg)
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
