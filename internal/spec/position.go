package spec

import (
	"fmt"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Position says in words where a rollout is: wave, step and the new
// backend's share, as `rollout status` and the read API show it.
func Position(r *sv1.Rollout) string {
	switch r.GetPhase() {
	case sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED, sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
		return "every wave on " + r.GetSpec().GetTo()
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
		return "every node back on " + r.GetSpec().GetFrom()
	}
	plan := Compile(r.GetSpec())
	w, s := int(r.GetWave()), int(r.GetStep())
	if w >= len(plan) {
		return "-"
	}
	pw := plan[w]
	if s >= len(pw.Steps) {
		return fmt.Sprintf("wave %d/%d %s done, %s at 100%%", w+1, len(plan), pw.Wave.GetName(), r.GetSpec().GetTo())
	}
	return fmt.Sprintf("wave %d/%d %s, step %d/%d %s, %s at %d%%", w+1, len(plan), pw.Wave.GetName(), s+1, len(pw.Steps),
		DescribeStep(pw.Steps[s]), r.GetSpec().GetTo(), WeightAt(pw.Steps, s))
}
