package state

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestState_SaveLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := b.Load("web"); err != nil || st != nil {
		t.Fatalf("Load on empty store = %v, %v; want nil, nil", st, err)
	}
	want := &sv1.AppliedState{
		Service:   "web",
		Desired:   &sv1.DesiredState{Service: "web", Generation: 7, RolloutId: "r1"},
		Weights:   map[string]uint32{"blue": 90, "green": 10},
		Wave:      0,
		AppliedAt: timestamppb.New(time.Unix(1700000000, 0)),
	}
	if err := b.Save(want); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}

	b, err = Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got, err := b.Load("web")
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("Load after reopen = %v, want %v", got, want)
	}
	if other, err := b.Load("api"); err != nil || other != nil {
		t.Fatalf("Load(api) = %v, %v; want nil, nil", other, err)
	}
}

func TestState_SecondOpenFailsWithErrLocked(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	start := time.Now()
	_, err = Open(dir, 100*time.Millisecond)
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open: err = %v, want ErrLocked", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("second Open took %s; it should give up after its timeout", waited)
	}
}

func TestState_SaveRequiresService(t *testing.T) {
	b, err := Open(t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Save(&sv1.AppliedState{}); err == nil {
		t.Fatal("Save without service: want an error")
	}
}

// TestState_SaveForgetsTheStateBeingApplied: what SaveApplying recorded
// survives a reopen until Save (or DropApplying) settles it.
func TestState_SaveForgetsTheStateBeingApplied(t *testing.T) {
	dir := t.TempDir()
	b, err := Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	next := &sv1.AppliedState{Service: "web", Desired: &sv1.DesiredState{Service: "web", Generation: 8}, Weights: map[string]uint32{"green": 100}}
	if err := b.SaveApplying(next); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if b, err = Open(dir, 0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if got, err := b.LoadApplying("web"); err != nil || !proto.Equal(got, next) {
		t.Fatalf("LoadApplying after reopen = %v, %v; want %v", got, err, next)
	}
	if got, err := b.LoadApplying("api"); err != nil || got != nil {
		t.Fatalf("LoadApplying of another service = %v, %v; want nil", got, err)
	}
	if err := b.Save(next); err != nil {
		t.Fatal(err)
	}
	if got, err := b.LoadApplying("web"); err != nil || got != nil {
		t.Fatalf("LoadApplying after Save = %v, %v; want nil", got, err)
	}
	if err := b.SaveApplying(next); err != nil {
		t.Fatal(err)
	}
	if err := b.DropApplying("web"); err != nil {
		t.Fatal(err)
	}
	if got, err := b.LoadApplying("web"); err != nil || got != nil {
		t.Fatalf("LoadApplying after DropApplying = %v, %v; want nil", got, err)
	}
}
