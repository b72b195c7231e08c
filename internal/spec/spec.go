// Package spec reads rollout specs written by people (YAML) into the
// RolloutSpec message and validates them with errors that name the field,
// the value and what would be accepted. The CLI validates before sending and
// the coordinators validate again before committing.
package spec

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Version is the only spec version this build reads.
const Version = "v1"

// ErrInvalid is wrapped by every validation and parse error.
var ErrInvalid = errors.New("invalid rollout spec")

// FieldError is one problem with one field of a spec.
type FieldError struct {
	// Path is the field's path, e.g. "spec.strategy.blueGreen".
	Path string
	// Problem says what is wrong and what would be accepted.
	Problem string
	// Line is the YAML line, when known.
	Line int
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s: %s (line %d)", e.Path, e.Problem, e.Line)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Problem)
}

// Errors is every problem found in a spec.
type Errors []*FieldError

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is(err, ErrInvalid) hold for every spec error.
func (es Errors) Unwrap() error { return ErrInvalid }

// file is the YAML shape of a spec. Field names are what operators write.
type file struct {
	Version  string        `yaml:"version"`
	Name     string        `yaml:"name"`
	Service  string        `yaml:"service"`
	From     string        `yaml:"from"`
	To       string        `yaml:"to"`
	Strategy strategyFile  `yaml:"strategy"`
	Waves    []waveFile    `yaml:"waves"`
	Analysis *analysisFile `yaml:"analysis"`
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
	Steps []stepFile `yaml:"steps"`
}

type stepFile struct {
	SetWeight *int              `yaml:"setWeight"`
	Pause     *pauseFile        `yaml:"pause"`
	Analysis  *analysisStepFile `yaml:"analysis"`
}

type pauseFile struct {
	Duration time.Duration `yaml:"duration"`
}

type analysisStepFile struct {
	Windows int `yaml:"windows"`
}

type waveFile struct {
	Name       string            `yaml:"name"`
	Selector   map[string]string `yaml:"selector"`
	Percent    *float64          `yaml:"percent"`
	ManualGate bool              `yaml:"manualGate"`
	Steps      []stepFile        `yaml:"steps"`
}

type analysisFile struct {
	Window        time.Duration   `yaml:"window"`
	BreachWindows int             `yaml:"breachWindows"`
	MinRequests   int             `yaml:"minRequests"`
	Confidence    float64         `yaml:"confidence"`
	ErrorRate     *errorRateFile  `yaml:"errorRate"`
	Latency       *latencyFile    `yaml:"latency"`
	Saturation    *saturationFile `yaml:"saturation"`
}

type errorRateFile struct {
	Max         float64 `yaml:"max"`
	MaxIncrease float64 `yaml:"maxIncrease"`
}

type latencyFile struct {
	Quantile    float64       `yaml:"quantile"`
	Max         time.Duration `yaml:"max"`
	MaxIncrease time.Duration `yaml:"maxIncrease"`
}

type saturationFile struct {
	MaxQueue int `yaml:"maxQueue"`
}

// Parse reads a YAML spec, refusing unknown fields, fills in defaults and
// validates it.
func Parse(data []byte) (*sv1.RolloutSpec, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{{Path: "spec", Problem: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if len(root.Content) == 0 {
		return nil, Errors{{Path: "spec", Problem: "empty document"}}
	}
	if errs := checkKnown(root.Content[0], reflect.TypeOf(file{}), "spec"); len(errs) > 0 {
		return nil, errs
	}
	var f file
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, Errors{{Path: "spec", Problem: strings.TrimPrefix(err.Error(), "yaml: ")}}
	}
	if f.Version != Version {
		return nil, Errors{{Path: "spec.version", Problem: fmt.Sprintf("%q is not supported, want %q", f.Version, Version)}}
	}
	var errs Errors
	add := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{Path: path, Problem: fmt.Sprintf(format, args...)})
	}
	nonNegative := func(path string, v int) uint32 {
		if v < 0 {
			add(path, "%d is negative", v)
			return 0
		}
		return uint32(v)
	}
	s := &sv1.RolloutSpec{Name: f.Name, Service: f.Service, From: f.From, To: f.To, Strategy: &sv1.Strategy{}}
	switch {
	case f.Strategy.BlueGreen != nil && f.Strategy.Canary != nil:
		add("spec.strategy", "both blueGreen and canary are set; choose one")
	case f.Strategy.BlueGreen != nil:
		bg := f.Strategy.BlueGreen
		p := &sv1.BlueGreen{
			RampInterval:         durationOrNil(bg.RampInterval),
			PostPromotionWindows: nonNegative("spec.strategy.blueGreen.postPromotionWindows", bg.PostPromotionWindows),
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
		ws := &sv1.WaveSpec{Name: w.Name, Selector: w.Selector, ManualGate: w.ManualGate, BasisPoints: 10000}
		if w.Percent != nil {
			if *w.Percent <= 0 || *w.Percent > 100 {
				add(path+".percent", "%v is out of range, want more than 0 and at most 100", *w.Percent)
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
			BreachWindows: nonNegative("spec.analysis.breachWindows", a.BreachWindows),
			MinRequests:   uint64(nonNegative("spec.analysis.minRequests", a.MinRequests)),
			Confidence:    a.Confidence,
		}
		if e := a.ErrorRate; e != nil {
			as.ErrorRate = &sv1.ErrorRateGuardrail{Max: e.Max, MaxIncrease: e.MaxIncrease}
		}
		if l := a.Latency; l != nil {
			as.Latency = &sv1.LatencyGuardrail{Quantile: l.Quantile, Max: durationOrNil(l.Max), MaxIncrease: durationOrNil(l.MaxIncrease)}
		}
		if q := a.Saturation; q != nil {
			as.Saturation = &sv1.SaturationGuardrail{MaxQueue: nonNegative("spec.analysis.saturation.maxQueue", q.MaxQueue)}
		}
		s.Analysis = as
	}
	if len(errs) > 0 {
		return nil, errs
	}
	Default(s)
	if err := Validate(s); err != nil {
		return nil, err
	}
	return s, nil
}

func durationOrNil(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

func convertSteps(add func(string, string, ...any), in []stepFile, path string) []*sv1.Step {
	var out []*sv1.Step
	for i, st := range in {
		p := fmt.Sprintf("%s[%d]", path, i)
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
			step.Kind = &sv1.Step_Pause{Pause: &sv1.Pause{Duration: durationOrNil(st.Pause.Duration)}}
		}
		if st.Analysis != nil {
			set++
			if st.Analysis.Windows < 0 {
				add(p+".analysis.windows", "%d is negative", st.Analysis.Windows)
			}
			step.Kind = &sv1.Step_Analysis{Analysis: &sv1.AnalysisStep{Windows: uint32(max(st.Analysis.Windows, 0))}}
		}
		if set != 1 {
			add(p, "want exactly one of setWeight, pause, analysis")
			continue
		}
		out = append(out, step)
	}
	return out
}

// checkKnown walks a YAML mapping against the struct type it decodes into
// and reports every key the type does not have, with its full path, so an
// operator sees "spec.strategy.blueGren: unknown field" rather than a Go
// type name.
func checkKnown(n *yaml.Node, t reflect.Type, path string) Errors {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil
	}
	switch t.Kind() {
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return Errors{{Path: path, Problem: "want a list", Line: n.Line}}
		}
		var errs Errors
		for i, item := range n.Content {
			errs = append(errs, checkKnown(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
		}
		return errs
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return Errors{{Path: path, Problem: "want a mapping", Line: n.Line}}
		}
		return nil
	case reflect.Struct:
	default:
		return nil
	}
	if n.Kind != yaml.MappingNode {
		return Errors{{Path: path, Problem: "want a mapping of fields", Line: n.Line}}
	}
	fields := map[string]reflect.Type{}
	var known []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = f.Type
		known = append(known, tag)
	}
	var errs Errors
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ft, ok := fields[k.Value]
		if !ok {
			want := "this mapping has no fields"
			if len(known) > 0 {
				want = "want one of " + strings.Join(known, ", ")
			}
			errs = append(errs, &FieldError{Path: path + "." + k.Value, Problem: "unknown field; " + want, Line: k.Line})
			continue
		}
		errs = append(errs, checkKnown(v, ft, path+"."+k.Value)...)
	}
	return errs
}
