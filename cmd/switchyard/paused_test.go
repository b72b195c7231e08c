package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A rollout paused by an operator and then promoted in full, aborted or
// rolled back by a guardrail keeps its paused mark in the replicated
// record (only a progressing rollout can be resumed). Status shows it as
// paused only while pausing means something: a completed or rolled-back
// rollout is not "paused".
func TestCLI_StatusShowsPausedOnlyWhileProgressing(t *testing.T) {
	sp := &sv1.RolloutSpec{Name: "web-1", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
			{Kind: &sv1.Step_SetWeight{SetWeight: 10}}}}}}}
	for _, c := range []struct {
		phase  sv1.RolloutPhase
		paused bool
	}{
		{sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, true},
		{sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED, false},
		{sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, false},
		{sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, false},
		{sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK, false},
	} {
		v := &sv1.RolloutView{Rollout: &sv1.Rollout{Id: "web-1", Spec: sp, Phase: c.phase, Paused: true}}
		var detail bytes.Buffer
		printRolloutDetail(&detail, v)
		for name, out := range map[string]string{"status": detail.String(), "watch": renderWatch(v)} {
			if got := strings.Contains(out, "(paused)"); got != c.paused {
				t.Errorf("%s of a %s rollout with the paused mark: shows paused %v, want %v:\n%s", name, state.PhaseName(c.phase), got, c.paused, out)
			}
		}
	}
}
