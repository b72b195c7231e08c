package coordinator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/notify"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// historyState is a state after months of releases: finished rollouts
// of web, each applied, aborted and confirmed rolled back, then one
// rollout under way.
func historyState(t *testing.T, finished int, t0 time.Time) *fsm.FSM {
	t.Helper()
	f := fsm.New(fsm.Hooks{})
	st := f.State()
	idx := uint64(1)
	at := t0
	entry := func(id string, in *sv1.Intent) *sv1.IntentEntry {
		in.Id, in.Operator = id, "ci"
		return &sv1.IntentEntry{StampedAt: timestamppb.New(at), Rules: state.Rules, Intent: in}
	}
	apply := func(name string) {
		sp := &sv1.RolloutSpec{Name: name, Service: "web", From: "blue", To: "green",
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}}}
		a := st.ApplyIntent(idx, entry("apply-"+name, &sv1.Intent{Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}))
		if !a.Result.GetAccepted() {
			t.Fatalf("apply %s: %v", name, a.Result)
		}
		idx++
	}
	for i := range finished {
		name := fmt.Sprintf("web-%d", i)
		at = at.Add(time.Minute)
		apply(name)
		st.ApplyIntent(idx, entry("abort-"+name, &sv1.Intent{Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: name}}}))
		gen := idx
		idx++
		st.ApplyConverged(idx, &sv1.RolloutConvergedEntry{Rollout: name, Generation: gen, Nodes: 3, StampedAt: timestamppb.New(at)})
		idx++
	}
	at = at.Add(time.Minute)
	apply("web-live")
	return f
}

// The state keeps every rollout ever applied. The loops that run every
// tick (the leader's controller up to ten times a second, the analysis
// warm-up and the series every second, the notifications four times a
// second) and every dashboard's overview used to copy all of them, spec
// and history: 20,000 finished canaries took 870 ms a copy and 260 MB of
// heap. They copy only what they look at.
func TestCoordinator_TickLoopsCopyOnlyTheRolloutsTheyLookAt(t *testing.T) {
	t0 := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	const finished = 300
	f := historyState(t, finished, t0)
	s := &Server{fsm: f}

	if got := (stateReader{s}).Rollouts(); len(got) != 1 || got[0].GetId() != "web-live" {
		t.Fatalf("the controller is given %d rollouts; want only web-live, the one under way", len(got))
	}

	now := t0.Add(time.Duration(finished+1)*time.Minute + 10*time.Second)
	sampledNow := f.State().RolloutsWhere(func(r *sv1.Rollout) bool { return sampled(r, now) })
	if len(sampledNow) != 1 {
		t.Fatalf("the series reads %d rollouts; want 1: the rest ended long ago", len(sampledNow))
	}

	tr := notify.NewTracker(now.Add(-notify.ReplayWindow))
	if got := f.State().RolloutsWhere(tr.Changed); len(got) != 1 {
		t.Fatalf("a new leader's notifications read %d rollouts; want 1: the others ended before its window", len(got))
	}
	if ev := tr.Events(f.State().RolloutsWhere(tr.Changed), nil); len(ev) != 1 || ev[0].Rollout != "web-live" {
		t.Fatalf("events %+v; want web-live progressing", ev)
	}
	if got := f.State().RolloutsWhere(tr.Changed); len(got) != 0 {
		t.Fatalf("read again with nothing new: %d rollouts", len(got))
	}

	// The overview shows what recent chose from every rollout.
	all := f.State().Rollouts()
	want, wantOlder := recent(all, overviewFinished, func(r *sv1.Rollout) (bool, time.Time) {
		return state.Terminal(r.GetPhase()), r.GetUpdatedAt().AsTime()
	})
	got, older := f.State().RecentRollouts(overviewFinished)
	if older != wantOlder || len(got) != len(want) {
		t.Fatalf("overview: %d rollouts, %d older; want %d, %d older", len(got), older, len(want), wantOlder)
	}
	for i := range want {
		if got[i].GetId() != want[i].GetId() {
			t.Fatalf("overview rollout %d is %s; want %s", i, got[i].GetId(), want[i].GetId())
		}
	}
}
