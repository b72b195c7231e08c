package spec

import (
	"strconv"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// PlannedWave is one wave with the steps it runs.
type PlannedWave struct {
	Wave  *sv1.WaveSpec
	Steps []*sv1.Step
}

// Compile turns a defaulted spec into the steps each wave runs: a wave's
// own steps, else the canary's, else the blue-green switch compiled to steps
// (the ramp's weights with pauses between them, then the post-promotion
// analysis).
func Compile(s *sv1.RolloutSpec) []PlannedWave {
	var common []*sv1.Step
	switch st := s.GetStrategy().GetKind().(type) {
	case *sv1.Strategy_Canary:
		common = st.Canary.GetSteps()
	case *sv1.Strategy_BlueGreen:
		bg := st.BlueGreen
		ramp := bg.GetRamp()
		if len(ramp) == 0 {
			ramp = []uint32{100}
		}
		for i, w := range ramp {
			common = append(common, &sv1.Step{Kind: &sv1.Step_SetWeight{SetWeight: w}})
			if i < len(ramp)-1 && bg.GetRampInterval().AsDuration() > 0 {
				common = append(common, &sv1.Step{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{Duration: bg.GetRampInterval()}}})
			}
		}
		if n := bg.GetPostPromotionWindows(); n > 0 {
			common = append(common, &sv1.Step{Kind: &sv1.Step_Analysis{Analysis: &sv1.AnalysisStep{Windows: n}}})
		}
	}
	waves := s.GetWaves()
	if len(waves) == 0 {
		waves = []*sv1.WaveSpec{{Name: "all", BasisPoints: 10000}}
	}
	out := make([]PlannedWave, len(waves))
	for i, w := range waves {
		steps := w.GetSteps()
		if len(steps) == 0 {
			steps = common
		}
		out[i] = PlannedWave{Wave: w, Steps: steps}
	}
	return out
}

// WeightAt is the new backend's weight in a wave whose rollout is at step:
// the last setWeight at or before it, 0 before any, and 100 once the wave
// has run all its steps.
func WeightAt(steps []*sv1.Step, step int) uint32 {
	if step >= len(steps) {
		return 100
	}
	w := uint32(0)
	for i := 0; i <= step && i < len(steps); i++ {
		if sw, ok := steps[i].GetKind().(*sv1.Step_SetWeight); ok {
			w = sw.SetWeight
		}
	}
	return w
}

// Next is the position after (wave, step): the next step of the wave, the
// end of the wave (step == len(steps), where a gate of the next wave
// waits), the first step of the next wave, or promotion after the last.
func Next(plan []PlannedWave, wave, step int) (nextWave, nextStep int, promote bool) {
	if wave < 0 || wave >= len(plan) {
		return wave, step, true
	}
	if step < len(plan[wave].Steps) {
		return wave, step + 1, false
	}
	if wave+1 < len(plan) {
		return wave + 1, 0, false
	}
	return wave, step, true
}

// KeepWarm is how long a promoted rollout keeps the old backend ready.
func KeepWarm(s *sv1.RolloutSpec) time.Duration {
	return s.GetStrategy().GetBlueGreen().GetKeepWarm().AsDuration()
}

// Window is the analysis window of a defaulted spec.
func Window(s *sv1.RolloutSpec) time.Duration {
	if d := s.GetAnalysis().GetWindow(); d != nil {
		return d.AsDuration()
	}
	return DefaultWindow
}

// DescribeStep says what a step does, for people.
func DescribeStep(st *sv1.Step) string {
	switch k := st.GetKind().(type) {
	case *sv1.Step_SetWeight:
		return "setWeight " + strconv.Itoa(int(k.SetWeight))
	case *sv1.Step_Pause:
		if d := k.Pause.GetDuration(); d != nil && d.AsDuration() > 0 {
			return "pause " + d.AsDuration().String()
		}
		return "pause until approved"
	case *sv1.Step_Analysis:
		return "analysis " + strconv.Itoa(int(k.Analysis.GetWindows())) + " windows"
	}
	return "unknown step"
}
