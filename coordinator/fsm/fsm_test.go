package fsm

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func intentLog(t testing.TB, index uint64, id, name string) *raft.Log {
	t.Helper()
	b, err := Encode(IntentType, &sv1.IntentEntry{
		StampedAt: timestamppb.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		Intent: &sv1.Intent{Id: id, Operator: "ana", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
			Name: name, Service: name + "-svc", From: "blue", To: "green",
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
		}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
}

func TestFSM_ApplyNotifiesAndAnswers(t *testing.T) {
	var changed []string
	f := New(Hooks{Desired: func(s []string) { changed = append(changed, s...) }})
	resp := f.Apply(intentLog(t, 4, "i1", "r1")).(Response)
	if !resp.Applied.Result.GetAccepted() || resp.Applied.Result.GetIndex() != 4 {
		t.Fatalf("response %v", resp.Applied.Result)
	}
	if len(changed) != 1 || changed[0] != "r1-svc" {
		t.Fatalf("changed %v", changed)
	}
	if f.State().Desired("r1-svc").GetGeneration() != 4 {
		t.Fatal("generation is not the log index")
	}
	// Non-command entries (configuration changes, barriers) are ignored.
	if f.Apply(&raft.Log{Index: 5, Type: raft.LogBarrier}) != nil {
		t.Fatal("barrier applied")
	}
}

// TestFSM_EpochEntryRepublishesEverything: raising the epoch changes every
// document, so the leader is told to publish all of them; an entry that does
// not raise it changes nothing.
func TestFSM_EpochEntryRepublishesEverything(t *testing.T) {
	var changed []string
	f := New(Hooks{Desired: func(s []string) { changed = append(changed, s...) }})
	f.Apply(intentLog(t, 3, "i1", "r1"))
	f.Apply(intentLog(t, 4, "i2", "r2"))
	epochLog := func(index, epoch uint64) *raft.Log {
		b, err := Encode(EpochType, &sv1.EpochEntry{Epoch: epoch, Reason: "rebuilt", HighestSeen: epoch - 1})
		if err != nil {
			t.Fatal(err)
		}
		return &raft.Log{Index: index, Type: raft.LogCommand, Data: b}
	}
	changed = nil
	f.Apply(epochLog(5, 4))
	if len(changed) != 2 || f.State().Epoch() != 4 || f.State().Desired("r1-svc").GetEpoch() != 4 {
		t.Fatalf("after raising to 4: changed %v, epoch %d", changed, f.State().Epoch())
	}
	changed = nil
	f.Apply(epochLog(6, 3))
	if len(changed) != 0 || f.State().Epoch() != 4 {
		t.Fatalf("a lower epoch entry: changed %v, epoch %d", changed, f.State().Epoch())
	}
}

func TestFSM_ApplyPanicsOnUndecodableEntry(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic on a corrupt entry")
		}
	}()
	New(Hooks{}).Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: []byte{99, 1, 2}})
}

type sink struct {
	bytes.Buffer
	cancelled, closed bool
}

func (s *sink) ID() string    { return "test" }
func (s *sink) Cancel() error { s.cancelled = true; return nil }
func (s *sink) Close() error  { s.closed = true; return nil }

// roundTrip persists f's snapshot and restores it into a new FSM.
func roundTrip(t *testing.T, f *FSM) *FSM {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	g := New(Hooks{})
	if err := g.Restore(io.NopCloser(bytes.NewReader(s.Bytes()))); err != nil {
		t.Fatal(err)
	}
	return g
}

func TestFSM_SnapshotRestoreRoundTrip(t *testing.T) {
	f := New(Hooks{})
	for i, name := range []string{"a", "b", "c"} {
		f.Apply(intentLog(t, uint64(i+1), "id-"+name, name))
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil || !s.closed {
		t.Fatalf("persist: %v closed %v", err, s.closed)
	}
	var restored []string
	g := New(Hooks{Desired: func(svcs []string) { restored = append(restored, svcs...) }})
	if err := g.Restore(io.NopCloser(bytes.NewReader(s.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(f.State().Snapshot(), g.State().Snapshot()) {
		t.Fatal("restored state differs")
	}
	if len(restored) != 3 {
		t.Fatalf("restore announced %v, want every service republished", restored)
	}
}

func TestFSM_RestoreRefusesGarbage(t *testing.T) {
	if err := New(Hooks{}).Restore(io.NopCloser(bytes.NewReader([]byte{0xff, 0xff, 0xff}))); err == nil {
		t.Fatal("restored garbage")
	}
}

func FuzzFSM_Decode(f *testing.F) {
	good, _ := Encode(IntentType, &sv1.IntentEntry{Intent: &sv1.Intent{Id: "x"}})
	conv, _ := Encode(RolloutConvergedType, &sv1.RolloutConvergedEntry{Rollout: "r", Generation: 3})
	due, _ := Encode(HookDueType, &sv1.HookDueEntry{Rollout: "r", Key: "pre-promotion", Webhooks: []string{"w"}, Generation: 3})
	result, _ := Encode(HookResultType, &sv1.HookResultEntry{Rollout: "r", Key: "rollback", Webhook: "w", Seq: 1, Ok: true})
	start, _ := Encode(RolloutStartType, &sv1.RolloutStartEntry{Rollout: "r"})
	f.Add(good)
	f.Add(conv)
	f.Add(due)
	f.Add(result)
	f.Add(start)
	epoch, _ := Encode(EpochType, &sv1.EpochEntry{Epoch: 2, Reason: "rebuilt", HighestSeen: 1})
	f.Add(epoch)
	refusal, _ := Encode(AuditRefusalType, &sv1.AuditRefusalEntry{IntentId: "x", Code: "unsigned"})
	f.Add(refusal)
	exported, _ := Encode(AuditExportedType, &sv1.AuditExportedEntry{Through: 3})
	f.Add(exported)
	boot, _ := Encode(AclBootstrapType, &sv1.AclBootstrapEntry{Key: "UADMIN", Name: "root"})
	f.Add(boot)
	f.Add([]byte{})
	f.Add([]byte{200})
	f.Fuzz(func(t *testing.T, data []byte) {
		typ, body, err := Decode(data)
		if err != nil {
			return
		}
		again, err := Encode(typ, body)
		if err != nil {
			t.Fatalf("decoded entry does not encode: %v", err)
		}
		if _, _, err := Decode(again); err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
	})
}

func FuzzFSM_ReadSnapshot(f *testing.F) {
	fs := New(Hooks{})
	fs.Apply(intentLog(f, 1, "i", "r"))
	b, _ := proto.Marshal(fs.State().Snapshot())
	f.Add(b)
	f.Add([]byte{0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ReadSnapshot(bytes.NewReader(data)) // must not panic
	})
}

// A local rollback entry goes through the log to the rollout's history and
// comes back from a snapshot with what it recorded.
func TestFSM_LocalRollbackEntryRoundTripsThroughASnapshot(t *testing.T) {
	f := New(Hooks{})
	f.Apply(intentLog(t, 3, "i1", "r1"))
	f.Apply(entryLog(t, 4, LocalRollbackType, &sv1.LocalRollbackEntry{Rollout: "r1", StampedAt: timestamppb.New(time.Date(2026, 1, 1, 0, 1, 0, 0, time.UTC)),
		Nodes: []*sv1.NodeLocalRollback{{Node: "edge-3", Rollback: &sv1.LocalRollback{Generation: 3, RolloutId: "r1", From: "green", To: "blue", Reason: "error rate"}}}}))
	r := f.State().Rollout("r1")
	if h := r.GetHistory(); h[len(h)-1].GetMessage() != "local guard on edge-3 moved it back to blue at generation 3: error rate" {
		t.Fatalf("history %v", h)
	}
	g := roundTrip(t, f)
	if got := g.State().Rollout("r1"); !proto.Equal(got, r) || len(got.GetLocalRollbacks()) != 1 {
		t.Fatalf("restored %v, want %v", got, r)
	}
}
