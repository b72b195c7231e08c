package spec

import (
	"math"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Judging methods of spec.analysis.method.
const (
	// MethodSequential compares the new backend with the old one on the same
	// nodes on every report, with a stated false-alarm rate.
	MethodSequential = "sequential"
	// MethodWindows is the fixed-window judge of earlier releases: a test
	// per window with a margin, breachWindows failures in a row.
	MethodWindows = "windows"
)

// Defaults of the sequential judge (docs/rollouts.md, "How the judge
// decides").
const (
	DefaultFalseAlarm     = 0.005
	DefaultHorizon        = time.Hour
	DefaultNonInferiority = 0.5
	DefaultPassConfidence = 0.95
)

// Method is the analysis method of a spec, sequential unless it says
// otherwise.
func Method(a *sv1.AnalysisSpec) string {
	if a.GetMethod() == "" {
		return MethodSequential
	}
	return a.GetMethod()
}

// FalseAlarm is the probability of a false rollback over Horizon.
func FalseAlarm(a *sv1.AnalysisSpec) float64 {
	if a.GetFalseAlarm() <= 0 {
		return DefaultFalseAlarm
	}
	return a.GetFalseAlarm()
}

// Horizon is the canary time the false-alarm rate covers when the spec
// sets it; otherwise see HorizonOf.
func Horizon(a *sv1.AnalysisSpec) time.Duration {
	if d := a.GetHorizon().AsDuration(); a.GetHorizon() != nil && d > 0 {
		return d
	}
	return DefaultHorizon
}

// HorizonOf is the canary time a rollout's false-alarm rate covers:
// analysis.horizon when set, else the rollout's planned life (PlannedLife),
// else DefaultHorizon when the plan waits for an operator. It is kept
// within 1m..720h.
func HorizonOf(s *sv1.RolloutSpec) time.Duration {
	a := s.GetAnalysis()
	if d := a.GetHorizon().AsDuration(); a.GetHorizon() != nil && d > 0 {
		return d
	}
	d, ok := PlannedLife(s)
	if !ok {
		return DefaultHorizon
	}
	return min(max(d, time.Minute), 30*24*time.Hour)
}

// PlannedLife is how long a rollout's steps take when nothing holds them:
// every timed pause and every analysis step's windows, over all waves. ok is
// false when a pause waits for an operator, whose length no plan knows. A
// plan longer than the longest time.Duration (292 years) is that long: a
// sum that wrapped would be negative, and its horizon a minute.
func PlannedLife(s *sv1.RolloutSpec) (d time.Duration, ok bool) {
	win := Window(s)
	for _, w := range Compile(s) {
		for _, st := range w.Steps {
			switch k := st.GetKind().(type) {
			case *sv1.Step_Pause:
				p := k.Pause.GetDuration().AsDuration()
				if k.Pause.GetDuration() == nil || p <= 0 {
					return 0, false
				}
				d = addCapped(d, p)
			case *sv1.Step_Analysis:
				n := time.Duration(k.Analysis.GetWindows())
				if win > 0 && n > math.MaxInt64/win {
					return math.MaxInt64, true
				}
				d = addCapped(d, n*win)
			}
		}
	}
	return d, true
}

// addCapped is d + e for durations of zero or more, at most the longest
// time.Duration.
func addCapped(d, e time.Duration) time.Duration {
	if e > math.MaxInt64-d {
		return math.MaxInt64
	}
	return d + e
}

// NonInferiority is the relative margin an analysis step must rule out.
func NonInferiority(a *sv1.AnalysisSpec) float64 {
	if a.GetNonInferiority() <= 0 {
		return DefaultNonInferiority
	}
	return a.GetNonInferiority()
}

// PassConfidence is the confidence an analysis step needs that the new
// backend is not worse by the margin.
func PassConfidence(a *sv1.AnalysisSpec) float64 {
	if a.GetPassConfidence() <= 0 {
		return DefaultPassConfidence
	}
	return a.GetPassConfidence()
}

func validateSequential(add func(string, string, ...any), a *sv1.AnalysisSpec) {
	switch a.GetMethod() {
	case "", MethodSequential, MethodWindows:
	default:
		add("spec.analysis.method", "%q is not a method, want %q (the default) or %q", a.GetMethod(), MethodSequential, MethodWindows)
	}
	if f := a.GetFalseAlarm(); f != 0 && (f <= 0 || f > 0.2) {
		add("spec.analysis.falseAlarm", "%v is out of range, want a probability more than 0 and at most 0.2 (0.005 is 0.5%%)", f)
	}
	if h := a.GetHorizon(); h != nil && (h.CheckValid() != nil || h.AsDuration() < time.Minute || h.AsDuration() > 30*24*time.Hour) {
		add("spec.analysis.horizon", "%v is out of range, want 1m..720h", h.AsDuration())
	}
	if m := a.GetNonInferiority(); m < 0 || m > 10 {
		add("spec.analysis.nonInferiority", "%v is out of range, want a relative margin 0..10 (0.5 is 50%% worse)", m)
	}
	if c := a.GetPassConfidence(); c != 0 && (c < 0.5 || c >= 1) {
		add("spec.analysis.passConfidence", "%v is out of range, want 0.5 up to (not including) 1", c)
	}
}

// Without latency.maxIncrease the latency tests still allow a difference
// smaller than what the proxy measures: HAProxy times requests in whole
// milliseconds, so a blue p50 of "0 ms" against a green one of "1 ms" is a
// rounding, not a regression. The floor is the larger of
// DefaultLatencyFloor and DefaultLatencyRelative of the old backend's
// quantile.
const (
	DefaultLatencyFloor    = 2 * time.Millisecond
	DefaultLatencyRelative = 0.05
)

// LatencyTolerance is how much slower than the old backend's quantile q (in
// seconds) the new backend may be before the latency tests count it: the
// spec's latency.maxIncrease when set, else the resolution floor above.
func LatencyTolerance(a *sv1.AnalysisSpec, q float64) float64 {
	if m := a.GetLatency().GetMaxIncrease(); m != nil {
		return m.AsDuration().Seconds()
	}
	return max(DefaultLatencyFloor.Seconds(), DefaultLatencyRelative*q)
}
