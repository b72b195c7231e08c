package fsm

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func entry(t *testing.T, index uint64, typ MessageType, body proto.Message) *raft.Log {
	t.Helper()
	b, err := Encode(typ, body)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

// TestFSM_HookEntriesApplyAndSurviveSnapshots walks a rollout held by a
// gating pre-rollout webhook through its hook entries and checks that a
// restored replica has the same calls.
func TestFSM_HookEntriesApplyAndSurviveSnapshots(t *testing.T) {
	at := timestamppb.New(time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC))
	var changed []string
	f := New(Hooks{Desired: func(s []string) { changed = append(changed, s...) }})
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
		Hooks: &sv1.HooksSpec{Webhooks: []*sv1.Webhook{{Name: "ticket", Point: sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT,
			Url: "http://ci.example/t", Gating: true, Timeout: durationpb.New(time.Second), Recheck: durationpb.New(time.Second)}}}}
	resp := f.Apply(entry(t, 3, IntentType, &sv1.IntentEntry{StampedAt: at, Intent: &sv1.Intent{Id: "i1",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}})).(Response)
	if !resp.Applied.Result.GetAccepted() {
		t.Fatal(resp.Applied.Result)
	}
	r := f.State().Rollout("r1")
	if !r.GetHoldStart() || len(r.GetHookCalls()) != 1 || r.GetHookCalls()[0].GetKey() != state.KeyPreRollout {
		t.Fatalf("rollout %v", r)
	}
	// A repeated due entry adds nothing while the call is pending.
	f.Apply(entry(t, 4, HookDueType, &sv1.HookDueEntry{Rollout: "r1", Key: state.KeyPreRollout, Webhooks: []string{"ticket"}, Generation: 3, StampedAt: at}))
	f.Apply(entry(t, 5, HookResultType, &sv1.HookResultEntry{Rollout: "r1", Key: state.KeyPreRollout, Webhook: "ticket", Seq: 1, Ok: true, Attempts: 1, Detail: "200 OK", StampedAt: at}))
	// A second answer to the same call never counts.
	f.Apply(entry(t, 6, HookResultType, &sv1.HookResultEntry{Rollout: "r1", Key: state.KeyPreRollout, Webhook: "ticket", Seq: 1, Ok: false, Detail: "late", StampedAt: at}))
	changed = nil
	f.Apply(entry(t, 7, RolloutStartType, &sv1.RolloutStartEntry{Rollout: "r1", StampedAt: at}))
	if len(changed) != 1 || f.State().Desired("web").GetGeneration() != 7 {
		t.Fatalf("start changed %v, desired %v", changed, f.State().Desired("web"))
	}
	r = f.State().Rollout("r1")
	if r.GetHoldStart() || len(r.GetHookCalls()) != 1 || r.GetHookCalls()[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_SUCCEEDED ||
		r.GetHookCalls()[0].GetDetail() != "200 OK" {
		t.Fatalf("rollout after start %v", r)
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var out sink
	if err := snap.Persist(&out); err != nil {
		t.Fatal(err)
	}
	g := New(Hooks{})
	if err := g.Restore(io.NopCloser(bytes.NewReader(out.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(g.State().Rollout("r1"), r) {
		t.Fatalf("restored rollout differs:\n%v\n%v", g.State().Rollout("r1"), r)
	}
}
