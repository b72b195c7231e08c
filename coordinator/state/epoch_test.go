package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestState_EpochOnlyRisesAndSurvivesSnapshots(t *testing.T) {
	s := New()
	if s.Epoch() != 1 {
		t.Fatalf("a new cluster's epoch is %d, want 1", s.Epoch())
	}
	s.ApplyIntent(1, applyEntry("i1", bgSpec("r1"), t0))
	if ds := s.Desired("web"); ds.GetEpoch() != 1 {
		t.Fatalf("document epoch %d, want 1", ds.GetEpoch())
	}
	for _, c := range []struct {
		to     uint64
		raised bool
		want   uint64
	}{{1, false, 1}, {5, true, 5}, {3, false, 5}, {5, false, 5}, {6, true, 6}} {
		if got := s.ApplyEpoch(uint64(10+c.to), &sv1.EpochEntry{Epoch: c.to, Reason: "test"}); got != c.raised || s.Epoch() != c.want {
			t.Fatalf("raise to %d: raised %v epoch %d, want %v %d", c.to, got, s.Epoch(), c.raised, c.want)
		}
	}
	ds := s.Desired("web")
	if ds.GetEpoch() != 6 || ds.GetGeneration() != 1 {
		t.Fatalf("document fence %d/%d, want 6/1", ds.GetEpoch(), ds.GetGeneration())
	}
	if e, g, ok := s.DesiredFence("web"); !ok || e != 6 || g != 1 {
		t.Fatalf("DesiredFence = %d/%d %v", e, g, ok)
	}
	b, err := proto.Marshal(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var snap sv1.StateSnapshot
	if err := proto.Unmarshal(b, &snap); err != nil {
		t.Fatal(err)
	}
	restored, err := FromSnapshot(&snap)
	if err != nil {
		t.Fatal(err)
	}
	if restored.Epoch() != 6 || !proto.Equal(restored.Desired("web"), ds) {
		t.Fatalf("restored epoch %d, document %v", restored.Epoch(), restored.Desired("web"))
	}
	// A snapshot from before epochs reads as epoch 1.
	snap.Epoch = 0
	old, _ := FromSnapshot(&snap)
	if old.Epoch() != 1 {
		t.Fatalf("epoch of an old snapshot: %d, want 1", old.Epoch())
	}
}

// An epoch entry that names who asked makes a record with that actor and
// the entry's index; one from before (no actor) replays into the record it
// always made, so an upgraded cluster's chain does not change.
func TestState_EpochRecordNamesWhoAskedOnlyWhenTheEntryDoes(t *testing.T) {
	s := New()
	s.ApplyEpoch(7, &sv1.EpochEntry{Epoch: 2, Reason: "old entry"})
	s.ApplyEpoch(9, &sv1.EpochEntry{Epoch: 3, Reason: "new entry", Actor: "cluster certificate CN=c1"})
	entries := s.AuditEntries(0, 10)
	if len(entries) != 2 {
		t.Fatalf("%d audit records, want 2", len(entries))
	}
	for i, want := range []struct {
		actor string
		index uint64
	}{{"operator", 0}, {"cluster certificate CN=c1", 9}} {
		rec, err := audit.Open(entries[i])
		if err != nil {
			t.Fatal(err)
		}
		if rec.GetKind() != "epoch" || rec.GetActor() != want.actor || rec.GetIndex() != want.index {
			t.Errorf("record %d: kind %q actor %q index %d, want epoch %q %d", i, rec.GetKind(), rec.GetActor(), rec.GetIndex(), want.actor, want.index)
		}
	}
}
