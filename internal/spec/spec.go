// Package spec reads rollout specs written by people (YAML) into the
// RolloutSpec message and validates them with errors that name the field,
// the value and what would be accepted. The CLI validates before sending and
// the coordinators validate again before committing.
package spec

import (
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/switchyard/switchyard/internal/strictyaml"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Version is the only spec version this build reads.
const Version = "v1"

// ErrInvalid is wrapped by every validation and parse error.
var ErrInvalid = strictyaml.ErrInvalid

// FieldError is one problem with one field of a spec.
type FieldError = strictyaml.FieldError

// Errors is every problem found in a spec.
type Errors = strictyaml.Errors

// file is the YAML shape of a spec. Field names are what operators write.
// Lists of waves and steps hold pointers: yaml drops a null entry (a bare
// "-") from a list of structs without a word, but keeps a nil pointer, which
// Parse refuses by its place.
type file struct {
	Version  string        `yaml:"version"`
	Name     string        `yaml:"name"`
	Service  string        `yaml:"service"`
	From     string        `yaml:"from"`
	To       string        `yaml:"to"`
	Strategy strategyFile  `yaml:"strategy"`
	Waves    []*waveFile   `yaml:"waves"`
	Analysis *analysisFile `yaml:"analysis"`
	Hooks    *hooksFile    `yaml:"hooks"`
}

type strategyFile struct {
	BlueGreen *blueGreenFile `yaml:"blueGreen"`
	Canary    *canaryFile    `yaml:"canary"`
}

type blueGreenFile struct {
	Ramp                 []int         `yaml:"ramp"`
	RampInterval         time.Duration `yaml:"rampInterval"`
	PostPromotionWindows int           `yaml:"postPromotionWindows"`
	KeepWarm             time.Duration `yaml:"keepWarm"`
}

type canaryFile struct {
	Steps []*stepFile `yaml:"steps"`
}

type stepFile struct {
	SetWeight *int              `yaml:"setWeight"`
	Pause     *pauseFile        `yaml:"pause"`
	Analysis  *analysisStepFile `yaml:"analysis"`
}

type pauseFile struct {
	// Duration tells `pause: {}` (until approved) from a duration written
	// as 0s, which CheckPlan refuses.
	Duration *time.Duration `yaml:"duration"`
}

type analysisStepFile struct {
	Windows int `yaml:"windows"`
}

type waveFile struct {
	Name       string            `yaml:"name"`
	Selector   map[string]string `yaml:"selector"`
	Percent    *float64          `yaml:"percent"`
	ManualGate bool              `yaml:"manualGate"`
	Steps      []*stepFile       `yaml:"steps"`
}

type analysisFile struct {
	Window        time.Duration `yaml:"window"`
	BreachWindows int           `yaml:"breachWindows"`
	MinRequests   int           `yaml:"minRequests"`
	Confidence    float64       `yaml:"confidence"`
	Method        string        `yaml:"method"`
	FalseAlarm    float64       `yaml:"falseAlarm"`
	Horizon       time.Duration `yaml:"horizon"`
	// NonInferiority and PassConfidence set the rule an analysis step
	// passes by (docs/rollouts.md).
	NonInferiority float64         `yaml:"nonInferiority"`
	PassConfidence float64         `yaml:"passConfidence"`
	ErrorRate      *errorRateFile  `yaml:"errorRate"`
	Latency        *latencyFile    `yaml:"latency"`
	Saturation     *saturationFile `yaml:"saturation"`
}

// errorRateFile and latencyFile tell a limit left out, which takes its
// default, from one written as 0.
type errorRateFile struct {
	Max         *float64 `yaml:"max"`
	MaxIncrease *float64 `yaml:"maxIncrease"`
}

type latencyFile struct {
	Quantile    float64        `yaml:"quantile"`
	Max         time.Duration  `yaml:"max"`
	MaxIncrease *time.Duration `yaml:"maxIncrease"`
}

type saturationFile struct {
	MaxQueue int `yaml:"maxQueue"`
}

// Parse reads a YAML spec, refusing unknown fields, fills in defaults and
// validates it.
func Parse(data []byte) (*sv1.RolloutSpec, error) {
	var f file
	if err := strictyaml.Decode(data, &f, "spec"); err != nil {
		return nil, err
	}
	if f.Version != Version {
		return nil, Errors{{Path: "spec.version", Problem: fmt.Sprintf("%q is not supported, want %q", f.Version, Version)}}
	}
	var errs Errors
	add := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Problem: fmt.Sprintf(format, args...)})
	}
	s := &sv1.RolloutSpec{Name: f.Name, Service: f.Service, From: f.From, To: f.To, Strategy: &sv1.Strategy{}}
	switch {
	case f.Strategy.BlueGreen != nil && f.Strategy.Canary != nil:
		add("spec.strategy", "both blueGreen and canary are set; choose one")
	case f.Strategy.BlueGreen != nil:
		bg := f.Strategy.BlueGreen
		p := &sv1.BlueGreen{
			RampInterval:         durationOrNil(bg.RampInterval),
			PostPromotionWindows: count(add, "spec.strategy.blueGreen.postPromotionWindows", bg.PostPromotionWindows),
			KeepWarm:             durationOrNil(bg.KeepWarm),
		}
		for i, w := range bg.Ramp {
			if w < 1 || w > 100 {
				add(fmt.Sprintf("spec.strategy.blueGreen.ramp[%d]", i), "%d is out of range, want 1..100", w)
				continue
			}
			p.Ramp = append(p.Ramp, uint32(w))
		}
		s.Strategy.Kind = &sv1.Strategy_BlueGreen{BlueGreen: p}
	case f.Strategy.Canary != nil:
		s.Strategy.Kind = &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: convertSteps(add, f.Strategy.Canary.Steps, "spec.strategy.canary.steps")}}
	}
	for i, w := range f.Waves {
		path := fmt.Sprintf("spec.waves[%d]", i)
		if w == nil || (w.Name == "" && w.Selector == nil && w.Percent == nil && !w.ManualGate && w.Steps == nil) {
			// Every field of a wave has a default, so "- {}" would be
			// taken as a wave of every node: more likely a slip.
			add(path, "empty wave: give one or more of name, selector, percent, manualGate, steps")
			continue
		}
		ws := &sv1.WaveSpec{Name: w.Name, Selector: w.Selector, ManualGate: w.ManualGate, BasisPoints: 10000}
		if w.Percent != nil {
			// Stored in hundredths of a percent: a smaller share would
			// round to no node at all.
			if !(*w.Percent >= 0.01 && *w.Percent <= 100) {
				add(path+".percent", "%v is out of range, want 0.01..100", *w.Percent)
			} else {
				ws.BasisPoints = uint32(math.Round(*w.Percent * 100))
			}
		}
		ws.Steps = convertSteps(add, w.Steps, path+".steps")
		s.Waves = append(s.Waves, ws)
	}
	if a := f.Analysis; a != nil {
		as := &sv1.AnalysisSpec{
			Window:        durationOrNil(a.Window),
			BreachWindows: count(add, "spec.analysis.breachWindows", a.BreachWindows),
			MinRequests:   uint64(count(add, "spec.analysis.minRequests", a.MinRequests)),
			Confidence:    a.Confidence,
			Method:        a.Method, FalseAlarm: a.FalseAlarm, Horizon: durationOrNil(a.Horizon),
			NonInferiority: a.NonInferiority, PassConfidence: a.PassConfidence,
		}
		// Default fills a guardrail only when its whole block is absent; a
		// field left out of a block written in part defaults here, where
		// "left out" and "0" still differ.
		if e := a.ErrorRate; e != nil {
			as.ErrorRate = defaultErrorRate(as)
			if e.Max != nil {
				as.ErrorRate.Max = *e.Max
			}
			if e.MaxIncrease != nil {
				as.ErrorRate.MaxIncrease = *e.MaxIncrease
			}
		}
		if l := a.Latency; l != nil {
			as.Latency = defaultLatency(as)
			as.Latency.Quantile, as.Latency.Max = l.Quantile, durationOrNil(l.Max)
			if l.MaxIncrease != nil {
				as.Latency.MaxIncrease = durationOrNil(*l.MaxIncrease)
			}
		}
		if q := a.Saturation; q != nil {
			as.Saturation = &sv1.SaturationGuardrail{MaxQueue: count(add, "spec.analysis.saturation.maxQueue", q.MaxQueue)}
		}
		s.Analysis = as
	}
	s.Hooks = convertHooks(add, f.Hooks)
	if len(errs) > 0 {
		return nil, placed(errs, data)
	}
	Default(s)
	if err := CheckFinite(s); err != nil {
		return nil, placed(err, data)
	}
	if err := Validate(s); err != nil {
		return nil, placed(err, data)
	}
	if err := CheckPlan(s); err != nil {
		return nil, placed(err, data)
	}
	return s, nil
}

// count converts a whole number written for a field stored in 32 bits,
// refusing what the field cannot hold: a cast would wrap 4294967297 to 1.
func count(add func(string, string, ...any), path string, v int) uint32 {
	switch {
	case v < 0:
		add(path, "%d is negative", v)
		return 0
	case v > math.MaxUint32:
		add(path, "%d is too large, want at most %d", v, uint32(math.MaxUint32))
		return 0
	}
	return uint32(v)
}

// placed gives each problem without a line the line its field was written
// on in data, the spec the problems are about.
func placed(err error, data []byte) error {
	var errs Errors
	if !errors.As(err, &errs) {
		return err
	}
	lines := strictyaml.Lines(data, "spec")
	for _, e := range errs {
		if e.Line == 0 {
			e.Line = lines[e.Path]
		}
	}
	return errs
}

func durationOrNil(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func convertSteps(add func(string, string, ...any), in []*stepFile, path string) []*sv1.Step {
	var out []*sv1.Step
	for i, st := range in {
		p := fmt.Sprintf("%s[%d]", path, i)
		if st == nil || (st.SetWeight == nil && st.Pause == nil && st.Analysis == nil) {
			add(p, "empty step: give one of setWeight, pause, analysis")
			continue
		}
		set := 0
		step := &sv1.Step{}
		if st.SetWeight != nil {
			set++
			if *st.SetWeight < 0 || *st.SetWeight > 100 {
				add(p+".setWeight", "%d is out of range, want 0..100", *st.SetWeight)
			}
			step.Kind = &sv1.Step_SetWeight{SetWeight: uint32(max(*st.SetWeight, 0))}
		}
		if st.Pause != nil {
			set++
			pause := &sv1.Pause{}
			if d := st.Pause.Duration; d != nil {
				pause.Duration = durationpb.New(*d)
			}
			step.Kind = &sv1.Step_Pause{Pause: pause}
		}
		if st.Analysis != nil {
			set++
			step.Kind = &sv1.Step_Analysis{Analysis: &sv1.AnalysisStep{Windows: count(add, p+".analysis.windows", st.Analysis.Windows)}}
		}
		if set != 1 {
			add(p, "want exactly one of setWeight, pause, analysis")
			continue
		}
		out = append(out, step)
	}
	return out
}
