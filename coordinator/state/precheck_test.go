package state

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func canaryFrom(name, from, to string) *sv1.RolloutSpec {
	return &sv1.RolloutSpec{Name: name, Service: "web", From: from, To: to,
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{{Kind: &sv1.Step_SetWeight{SetWeight: 10}}}}}}}
}

func TestState_CheckNewRolloutWantsFromToBeWhatTheServiceServes(t *testing.T) {
	completed := func() *State {
		s := New()
		s.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0))
		s.ApplyIntent(6, &sv1.IntentEntry{StampedAt: timestamppb.New(t0.Add(time.Second)), Intent: &sv1.Intent{Id: "i2",
			Action: &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: "r1", Full: true}}}})
		s.ApplyFinish(7, &sv1.RolloutFinishEntry{Rollout: "r1", StampedAt: timestamppb.New(t0.Add(2 * time.Second))})
		return s
	}
	rolledBack := func() *State {
		s := New()
		s.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0))
		s.ApplyIntent(6, abortEntry("i2", "r1", t0))
		s.ApplyConverged(7, &sv1.RolloutConvergedEntry{Rollout: "r1", Generation: 6, StampedAt: timestamppb.New(t0)})
		return s
	}
	rollingBack := func() *State {
		s := New()
		s.ApplyIntent(5, applyEntry("i1", bgSpec("r1"), t0))
		s.ApplyIntent(6, abortEntry("i2", "r1", t0))
		return s
	}
	for _, c := range []struct {
		name     string
		st       func() *State
		sp       *sv1.RolloutSpec
		refusal  string
		wantCode string
	}{
		{"no rollout yet: any from", New, canaryFrom("r2", "green", "blue"), "", ""},
		{"completed: from its to", completed, canaryFrom("r2", "green", "blue"), "", ""},
		{"completed: from its from", completed, canaryFrom("r2", "blue", "green"),
			`spec.from: "blue", but service "web" serves "green" now (rollout "r1" completed)`, CodeConflict},
		{"rolled back: from its from", rolledBack, canaryFrom("r2", "blue", "green"), "", ""},
		{"rolled back: from its to", rolledBack, canaryFrom("r2", "green", "blue"),
			`spec.from: "green", but service "web" serves "blue" now (rollout "r1" rolled-back)`, CodeConflict},
		{"rolling back: no impossible advice", rollingBack, canaryFrom("r2", "blue", "green"),
			`"r1" (rolling-back); the service is free once the rollback is confirmed`, CodeConflict},
		{"another service", completed, &sv1.RolloutSpec{Name: "r2", Service: "api", From: "blue", To: "green"}, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, err := c.st().CheckNewRollout(c.sp)
			if c.refusal == "" {
				if err != nil {
					t.Fatalf("refused: %s %v", code, err)
				}
				return
			}
			if err == nil || code != c.wantCode || !strings.Contains(err.Error(), c.refusal) {
				t.Fatalf("got %q %v; want %s saying %q", code, err, c.wantCode, c.refusal)
			}
			if strings.Contains(err.Error(), "abort it") {
				t.Errorf("advice the operator cannot follow: %v", err)
			}
		})
	}
}
