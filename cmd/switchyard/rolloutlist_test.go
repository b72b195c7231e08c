package main

import (
	"bytes"
	"strings"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// rollout list shows a finished rollout that a later one of its service
// replaced as superseded, not as "0/3" converged (no node holds its
// generation, by design); the current one keeps its count.
func TestCLI_RolloutListMarksSupersededRollouts(t *testing.T) {
	view := func(id string, gen uint64, phase sv1.RolloutPhase, converged uint32) *sv1.RolloutView {
		return &sv1.RolloutView{Rollout: &sv1.Rollout{Id: id, Generation: gen, Phase: phase,
			Spec: &sv1.RolloutSpec{Service: "web", From: "blue", To: "green"}}, Converged: converged, Live: 3}
	}
	var out bytes.Buffer
	printRolloutTable(&out, []*sv1.RolloutView{
		view("web-1", 7, sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, 0),
		view("web-2", 12, sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, 3),
	})
	lines := strings.Split(out.String(), "\n")
	if len(lines) < 3 || !strings.Contains(lines[1], "superseded") || strings.Contains(lines[1], "0/3") {
		t.Errorf("web-1, replaced by web-2, reads:\n%s", out.String())
	}
	if !strings.Contains(lines[2], "3/3") {
		t.Errorf("web-2, the current rollout, reads:\n%s", out.String())
	}
}

// Under the table, a list says what it leaves out: older rollouts past
// --limit, and those the retention forgot.
func TestCLI_RolloutListSaysWhatItLeavesOut(t *testing.T) {
	var out bytes.Buffer
	printListFooter(&out, &sv1.RolloutsAnswer{Omitted: 4, Forgotten: 120})
	for _, want := range []string{
		"4 older rollouts not listed (--limit 0 lists every one)",
		"120 finished rollouts forgotten by the retention (--forget-finished-after), not listed; what they did is in the audit trail (switchyard audit log)",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("footer lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	printListFooter(&out, &sv1.RolloutsAnswer{})
	if out.Len() != 0 {
		t.Errorf("a list that leaves nothing out says %q", out.String())
	}
}
