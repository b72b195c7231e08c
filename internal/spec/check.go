package spec

import (
	"fmt"

	"github.com/switchyard/switchyard/internal/strictyaml"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// CheckPlan refuses steps that Validate lets by but that cannot run as
// written: a pause of no time (the controller takes it for a pause until
// approved), an analysis step where the new backend has no weight (it can
// never pass, so the rollout would wait forever), and a setWeight below an
// earlier one of the same steps (a canary only rises; abort rolls back).
// Like CheckFinite it runs where a spec is read (Parse) and where the
// leader checks an intent before commit, never in the state machine:
// rollouts committed before it must replay as they applied.
func CheckPlan(s *sv1.RolloutSpec) error {
	var errs strictyaml.Errors
	add := func(path, format string, args ...any) {
		errs = append(errs, &strictyaml.FieldError{Path: path, Problem: fmt.Sprintf(format, args...)})
	}
	sequential := Method(s.GetAnalysis()) == MethodSequential
	for i, pw := range Compile(s) {
		var path string
		switch {
		case len(pw.Wave.GetSteps()) > 0:
			path = fmt.Sprintf("spec.waves[%d].steps", i)
		case s.GetStrategy().GetCanary() != nil:
			path = "spec.strategy.canary.steps"
		default:
			continue // a blue-green switch: its ramp is Validate's
		}
		// Before the wave moves weight, the new backend serves only on
		// the nodes of earlier waves, where the old one serves nothing: the
		// sequential tests compare the two on the same nodes, so they have
		// no evidence; the windows judge has some after a first wave.
		// Waves that share the strategy's steps find the same problems;
		// each is reported once.
		zeroOK := i > 0 && !sequential
		weight, at := uint32(0), -1
		for j, st := range pw.Steps {
			p := fmt.Sprintf("%s[%d]", path, j)
			switch k := st.GetKind().(type) {
			case *sv1.Step_SetWeight:
				if at >= 0 && k.SetWeight < weight && !hasPath(errs, p+".setWeight") {
					add(p+".setWeight", "%d is below %d set at %s[%d]; the weight of the new backend only rises within a wave "+
						"(want %d..100 here; `rollout abort` moves traffic back)", k.SetWeight, weight, path, at, weight)
				}
				weight, at = k.SetWeight, j
			case *sv1.Step_Pause:
				if d := k.Pause.GetDuration(); d != nil && d.AsDuration() == 0 && !hasPath(errs, p+".pause.duration") {
					add(p+".pause.duration", "0s is no pause, and a pause without a duration waits for `rollout approve`; "+
						"want a duration above 0, or pause: {} to wait for approval, or no pause step")
				}
			case *sv1.Step_Analysis:
				if weight == 0 && !zeroOK && !hasPath(errs, p+".analysis") {
					add(p+".analysis", "the new backend has weight 0 here (no setWeight above 0 before it in the wave), "+
						"so no request to %s can be judged and the step would never pass; put a setWeight above 0 before it", s.GetTo())
				}
			}
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

func hasPath(errs strictyaml.Errors, path string) bool {
	for _, e := range errs {
		if e.Path == path {
			return true
		}
	}
	return false
}
