package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

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
		if got := s.ApplyEpoch(&sv1.EpochEntry{Epoch: c.to, Reason: "test"}); got != c.raised || s.Epoch() != c.want {
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
