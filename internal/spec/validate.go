package spec

import (
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/switchyard/switchyard/internal/names"
	"github.com/switchyard/switchyard/internal/strictyaml"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Defaults of a spec's optional fields (DESIGN.md, "Defaults").
const (
	DefaultWindow        = 5 * time.Second
	DefaultBreachWindows = 2
	DefaultMinRequests   = 50
	DefaultConfidence    = 0.99
	DefaultMaxErrorRate  = 0.05
	// DefaultMaxErrorRise and DefaultLatencyRise are the margins of the
	// windows method.
	DefaultMaxErrorRise = 0.01
	DefaultQuantile     = 0.99
	DefaultLatencyRise  = 50 * time.Millisecond
)

// Default fills in a spec's optional fields in place. It is deterministic, so
// every coordinator stores the same spec whatever the sender left out.
func Default(s *sv1.RolloutSpec) {
	if len(s.GetWaves()) == 0 {
		s.Waves = []*sv1.WaveSpec{{Name: "all", BasisPoints: 10000}}
	}
	for i, w := range s.GetWaves() {
		if w.GetName() == "" {
			w.Name = fmt.Sprintf("wave-%d", i+1)
		}
	}
	if bg := s.GetStrategy().GetBlueGreen(); bg != nil && len(bg.GetRamp()) == 0 {
		bg.Ramp = []uint32{100}
	}
	if s.Analysis == nil {
		s.Analysis = &sv1.AnalysisSpec{}
	}
	a := s.Analysis
	if a.Window == nil {
		a.Window = durationpb.New(DefaultWindow)
	}
	if a.BreachWindows == 0 {
		a.BreachWindows = DefaultBreachWindows
	}
	if a.MinRequests == 0 {
		a.MinRequests = DefaultMinRequests
	}
	if a.Confidence == 0 {
		a.Confidence = DefaultConfidence
	}
	// A guardrail message that is present is kept as it is, zeros
	// included: the state machine runs Default on every rollout it applies,
	// replayed log entries too, so what a present field means may never
	// change. Parse fills the fields a YAML spec leaves out of a block.
	if a.ErrorRate == nil {
		a.ErrorRate = defaultErrorRate(a)
	}
	if a.Latency == nil {
		a.Latency = defaultLatency(a)
	}
	if a.Latency.Quantile == 0 {
		a.Latency.Quantile = DefaultQuantile
	}
	defaultHooks(s.Hooks)
}

// defaultErrorRate is the error-rate guardrail of a spec that sets none.
// The sequential judge needs no margin to stay quiet on a good release; a
// margin there is an explicit business tolerance.
func defaultErrorRate(a *sv1.AnalysisSpec) *sv1.ErrorRateGuardrail {
	g := &sv1.ErrorRateGuardrail{Max: DefaultMaxErrorRate}
	if Method(a) == MethodWindows {
		g.MaxIncrease = DefaultMaxErrorRise
	}
	return g
}

// defaultLatency is the latency guardrail of a spec that sets none.
func defaultLatency(a *sv1.AnalysisSpec) *sv1.LatencyGuardrail {
	g := &sv1.LatencyGuardrail{Quantile: DefaultQuantile}
	if Method(a) == MethodWindows {
		g.MaxIncrease = durationpb.New(DefaultLatencyRise)
	}
	return g
}

// Validate checks a spec however it arrived (YAML, protobuf, protojson),
// after Default.
func Validate(s *sv1.RolloutSpec) error {
	var errs Errors
	add := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Problem: fmt.Sprintf(format, args...)})
	}
	name := func(path, v, what string) {
		if v == "" {
			add(path, "required: %s", what)
			return
		}
		if err := names.Validate(v); err != nil {
			add(path, "%s", strings.TrimPrefix(err.Error(), names.ErrInvalid.Error()+": "))
		}
	}
	name("spec.name", s.GetName(), "a name for this rollout, unique among rollouts")
	name("spec.service", s.GetService(), "the service whose traffic moves, as named in agent configs")
	name("spec.from", s.GetFrom(), `the backend that serves now, e.g. "blue"`)
	name("spec.to", s.GetTo(), `the backend traffic moves to, e.g. "green"`)
	if s.GetFrom() != "" && s.GetFrom() == s.GetTo() {
		add("spec.to", "%q is also spec.from; a rollout moves traffic between two different backends", s.GetTo())
	}

	hasSteps := false
	switch st := s.GetStrategy().GetKind().(type) {
	case nil:
		add("spec.strategy", "required: one of blueGreen, canary")
	case *sv1.Strategy_BlueGreen:
		bg := st.BlueGreen
		prev := uint32(0)
		for i, w := range bg.GetRamp() {
			if w == 0 || w > 100 {
				add(fmt.Sprintf("spec.strategy.blueGreen.ramp[%d]", i), "%d is out of range, want 1..100", w)
			} else if w <= prev {
				add(fmt.Sprintf("spec.strategy.blueGreen.ramp[%d]", i), "%d does not rise above %d; a ramp only goes up", w, prev)
			}
			prev = w
		}
		if n := len(bg.GetRamp()); n > 0 && bg.GetRamp()[n-1] != 100 {
			add("spec.strategy.blueGreen.ramp", "ends at %d; the last weight of a switch is 100", bg.GetRamp()[n-1])
		}
		checkDuration(add, "spec.strategy.blueGreen.rampInterval", bg.GetRampInterval())
		checkDuration(add, "spec.strategy.blueGreen.keepWarm", bg.GetKeepWarm())
		hasSteps = true
	case *sv1.Strategy_Canary:
		checkSteps(add, "spec.strategy.canary.steps", st.Canary.GetSteps())
		hasSteps = len(st.Canary.GetSteps()) > 0
	}

	seen := map[string]bool{}
	for i, w := range s.GetWaves() {
		path := fmt.Sprintf("spec.waves[%d]", i)
		name(path+".name", w.GetName(), "a name for the wave")
		if seen[w.GetName()] {
			add(path+".name", "%q names two waves", w.GetName())
		}
		seen[w.GetName()] = true
		if w.GetBasisPoints() == 0 || w.GetBasisPoints() > 10000 {
			add(path+".percent", "%v is out of range, want 0.01..100", float64(w.GetBasisPoints())/100)
		}
		for k, v := range w.GetSelector() {
			if k == "" || v == "" {
				add(path+".selector", "label %q=%q: keys and values must not be empty", k, v)
			}
		}
		checkSteps(add, path+".steps", w.GetSteps())
		if len(w.GetSteps()) == 0 && !hasSteps && s.GetStrategy().GetCanary() != nil {
			add(path+".steps", "required: the canary strategy has no steps, so every wave needs its own")
		}
	}
	if _, ok := s.GetStrategy().GetKind().(*sv1.Strategy_Canary); ok && !hasSteps && len(s.GetWaves()) == 0 {
		add("spec.strategy.canary.steps", "required: at least one step, e.g. setWeight: 10")
	}

	if a := s.GetAnalysis(); a != nil {
		if d := a.GetWindow(); d != nil && (d.AsDuration() < time.Second || d.AsDuration() > time.Hour) {
			add("spec.analysis.window", "%v is out of range, want 1s..1h", d.AsDuration())
		}
		if c := a.GetConfidence(); c != 0 && (c < 0.5 || c >= 1) {
			add("spec.analysis.confidence", "%v is out of range, want 0.5 up to (not including) 1", c)
		}
		validateSequential(add, a)
		if e := a.GetErrorRate(); e != nil {
			if e.GetMax() < 0 || e.GetMax() > 1 {
				add("spec.analysis.errorRate.max", "%v is out of range, want a fraction 0..1 (0.05 is 5%%)", e.GetMax())
			}
			if e.GetMaxIncrease() < 0 || e.GetMaxIncrease() > 1 {
				add("spec.analysis.errorRate.maxIncrease", "%v is out of range, want a fraction 0..1", e.GetMaxIncrease())
			}
		}
		if l := a.GetLatency(); l != nil {
			if q := l.GetQuantile(); q != 0 && (q <= 0 || q >= 1) {
				add("spec.analysis.latency.quantile", "%v is out of range, want more than 0 and less than 1 (0.99 is p99)", q)
			}
			checkDuration(add, "spec.analysis.latency.max", l.GetMax())
			checkDuration(add, "spec.analysis.latency.maxIncrease", l.GetMaxIncrease())
		}
	}
	validateHooks(add, s.GetHooks())
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// CheckFinite refuses an analysis number that is not a number or
// infinite (YAML's .nan and .inf, or JSON's "NaN"), which the range checks
// of Validate let through: every comparison with NaN is false. The leader
// runs it before commit and Parse on every spec it reads; Validate, which
// the state machine also runs on entries already committed, is left as it
// was so those replay alike.
func CheckFinite(s *sv1.RolloutSpec) error {
	a := s.GetAnalysis()
	var errs strictyaml.Errors
	for _, f := range []struct {
		path string
		v    float64
	}{
		{"spec.analysis.confidence", a.GetConfidence()},
		{"spec.analysis.falseAlarm", a.GetFalseAlarm()},
		{"spec.analysis.nonInferiority", a.GetNonInferiority()},
		{"spec.analysis.passConfidence", a.GetPassConfidence()},
		{"spec.analysis.errorRate.max", a.GetErrorRate().GetMax()},
		{"spec.analysis.errorRate.maxIncrease", a.GetErrorRate().GetMaxIncrease()},
		{"spec.analysis.latency.quantile", a.GetLatency().GetQuantile()},
	} {
		if math.IsNaN(f.v) || math.IsInf(f.v, 0) {
			errs = append(errs, &strictyaml.FieldError{Path: f.path, Problem: fmt.Sprintf("%v is not a number in range", f.v)})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

func checkDuration(add func(string, string, ...any), path string, d *durationpb.Duration) {
	if d != nil && (d.CheckValid() != nil || d.AsDuration() < 0) {
		add(path, "%v is not a duration of zero or more", d)
	}
}

func checkSteps(add func(string, string, ...any), path string, steps []*sv1.Step) {
	for i, st := range steps {
		p := fmt.Sprintf("%s[%d]", path, i)
		switch k := st.GetKind().(type) {
		case *sv1.Step_SetWeight:
			if k.SetWeight > 100 {
				add(p+".setWeight", "%d is out of range, want 0..100", k.SetWeight)
			}
		case *sv1.Step_Pause:
			checkDuration(add, p+".pause.duration", k.Pause.GetDuration())
		case *sv1.Step_Analysis:
			if k.Analysis.GetWindows() == 0 {
				add(p+".analysis.windows", "required: how many passing windows, at least 1")
			}
		default:
			add(p, "want exactly one of setWeight, pause, analysis")
		}
	}
}
