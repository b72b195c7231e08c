package spec

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/switchyard/switchyard/internal/strictyaml"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// CheckPlan refuses steps that Validate lets by but that cannot run as
// written: a pause of no time (the controller takes it for a pause until
// approved), an analysis step where the new backend has no weight (it can
// never pass, so the rollout would wait forever), and a wave that an
// earlier one leaves no node to. A setWeight may fall: a soak back at a
// smaller share, or switches back and forth, are plans too.
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
		weight := uint32(0)
		for j, st := range pw.Steps {
			p := fmt.Sprintf("%s[%d]", path, j)
			switch k := st.GetKind().(type) {
			case *sv1.Step_SetWeight:
				weight = k.SetWeight
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
	checkShadowedWaves(add, s.GetWaves())
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// checkShadowedWaves refuses a wave that can take no node on any fleet.
// Every wave places a node by the same stable hash of (rollout, node) and
// the first wave that takes a node wins, so an earlier wave whose selector
// asks for no more labels than a later one's, at the same or a larger
// share, has already taken every node the later wave would.
func checkShadowedWaves(add func(string, string, ...any), waves []*sv1.WaveSpec) {
	for i, w := range waves {
		for j, earlier := range waves[:i] {
			if earlier.GetBasisPoints() < w.GetBasisPoints() || !covers(earlier.GetSelector(), w.GetSelector()) {
				continue
			}
			add(fmt.Sprintf("spec.waves[%d]", i), "selects no node: every node it matches is in spec.waves[%d] %q, which comes first "+
				"(selector %s, percent %v against this wave's selector %s, percent %v) and takes the same stable share of the nodes it matches; "+
				"want a percent above %v here, so that the wave adds the nodes between, or a selector spec.waves[%d] does not match",
				j, earlier.GetName(), selectorText(earlier.GetSelector()), float64(earlier.GetBasisPoints())/100,
				selectorText(w.GetSelector()), float64(w.GetBasisPoints())/100, float64(earlier.GetBasisPoints())/100, j)
			break
		}
	}
}

// covers reports whether every node the selector narrow matches is matched
// by wide too: wide asks for a subset of narrow's labels.
func covers(wide, narrow map[string]string) bool {
	for k, v := range wide {
		if nv, ok := narrow[k]; !ok || nv != v {
			return false
		}
	}
	return true
}

func selectorText(sel map[string]string) string {
	keys := slices.Sorted(maps.Keys(sel))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + ": " + sel[k]
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func hasPath(errs strictyaml.Errors, path string) bool {
	for _, e := range errs {
		if e.Path == path {
			return true
		}
	}
	return false
}
