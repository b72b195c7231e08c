package spec

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const good = `
version: v1
name: web-green-1
service: web
from: blue
to: green
strategy:
  blueGreen: {}
`

const canary = `
version: v1
name: web-canary-1
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 10
      - pause: {duration: 30s}
      - analysis: {windows: 3}
`

func TestSpec_ParseCanaryWithWavesAndDefaults(t *testing.T) {
	s, err := Parse([]byte(canary + `waves:
  - name: canary
    selector: {region: eu}
    percent: 12.5
  - name: rest
    manualGate: true
    steps: [{setWeight: 100}]
`))
	if err != nil {
		t.Fatal(err)
	}
	steps := s.GetStrategy().GetCanary().GetSteps()
	if len(steps) != 3 || steps[0].GetSetWeight() != 10 || steps[1].GetPause().GetDuration().AsDuration() != 30*time.Second || steps[2].GetAnalysis().GetWindows() != 3 {
		t.Fatalf("steps %v", steps)
	}
	w := s.GetWaves()
	if len(w) != 2 || w[0].GetBasisPoints() != 1250 || w[0].GetSelector()["region"] != "eu" || w[1].GetBasisPoints() != 10000 || !w[1].GetManualGate() || len(w[1].GetSteps()) != 1 {
		t.Fatalf("waves %v", w)
	}
	a := s.GetAnalysis()
	if a.GetWindow().AsDuration() != DefaultWindow || a.GetBreachWindows() != DefaultBreachWindows || a.GetConfidence() != DefaultConfidence ||
		a.GetErrorRate().GetMaxIncrease() != 0 || a.GetLatency().GetMaxIncrease() != nil || a.GetLatency().GetQuantile() != DefaultQuantile ||
		Method(a) != MethodSequential || FalseAlarm(a) != DefaultFalseAlarm || Horizon(a) != DefaultHorizon {
		t.Fatalf("analysis defaults %v", a)
	}
}

func TestSpec_AnalysisMethodsAndTheirDefaults(t *testing.T) {
	// A spec written for the windows judge keeps its margins; the
	// sequential judge's fields are read as written.
	s, err := Parse([]byte(good + "analysis:\n  method: windows\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := s.GetAnalysis()
	if Method(a) != MethodWindows || a.GetErrorRate().GetMaxIncrease() != DefaultMaxErrorRise || a.GetLatency().GetMaxIncrease().AsDuration() != DefaultLatencyRise {
		t.Fatalf("windows defaults %v", a)
	}
	s, err = Parse([]byte(good + "analysis:\n  falseAlarm: 0.001\n  horizon: 2h\n  nonInferiority: 0.2\n  passConfidence: 0.99\n  errorRate: {maxIncrease: 0.002}\n"))
	if err != nil {
		t.Fatal(err)
	}
	a = s.GetAnalysis()
	if Method(a) != MethodSequential || FalseAlarm(a) != 0.001 || Horizon(a) != 2*time.Hour || NonInferiority(a) != 0.2 ||
		PassConfidence(a) != 0.99 || a.GetErrorRate().GetMaxIncrease() != 0.002 {
		t.Fatalf("sequential fields %v", a)
	}
}

// A guardrail block written in part keeps the defaults of the fields it
// leaves out; a limit written as 0 stays 0 (errorRate.max 0: no absolute
// limit).
func TestSpec_GuardrailFieldsLeftOutTakeTheirDefaults(t *testing.T) {
	cases := []struct {
		name, analysis  string
		errMax, errRise float64
		latRise         time.Duration // -1: none
	}{
		{"maxIncrease alone keeps the absolute limit", "errorRate: {maxIncrease: 0.02}", DefaultMaxErrorRate, 0.02, -1},
		{"max 0 switches the absolute limit off", "errorRate: {max: 0}", 0, 0, -1},
		{"windows: max alone keeps the margin", "method: windows\n  errorRate: {max: 0.1}", 0.1, DefaultMaxErrorRise, DefaultLatencyRise},
		{"windows: a margin of 0 stays 0", "method: windows\n  errorRate: {maxIncrease: 0}", DefaultMaxErrorRate, 0, DefaultLatencyRise},
		{"windows: latency max alone keeps the latency margin", "method: windows\n  latency: {max: 300ms}", DefaultMaxErrorRate, DefaultMaxErrorRise, DefaultLatencyRise},
		{"windows: a latency margin written as 0s stays off", "method: windows\n  latency: {maxIncrease: 0s}", DefaultMaxErrorRate, DefaultMaxErrorRise, -1},
		{"sequential: latency max alone adds no margin", "latency: {max: 300ms}", DefaultMaxErrorRate, 0, -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := Parse([]byte(good + "analysis:\n  " + c.analysis + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			e, l := s.GetAnalysis().GetErrorRate(), s.GetAnalysis().GetLatency()
			if e.GetMax() != c.errMax || e.GetMaxIncrease() != c.errRise {
				t.Errorf("errorRate max %v, maxIncrease %v; want %v, %v", e.GetMax(), e.GetMaxIncrease(), c.errMax, c.errRise)
			}
			if got := l.GetMaxIncrease(); (c.latRise < 0) != (got == nil) || (got != nil && got.AsDuration() != c.latRise) {
				t.Errorf("latency maxIncrease %v, want %v (-1: none)", got.AsDuration(), c.latRise)
			}
			if l.GetQuantile() != DefaultQuantile {
				t.Errorf("latency quantile %v, want %v", l.GetQuantile(), DefaultQuantile)
			}
		})
	}
}

// The state machine runs Default on every rollout it applies, replayed log
// entries included: a guardrail message that is present must keep its
// meaning, so Default fills only guardrails that are absent.
func TestSpec_DefaultKeepsAPresentGuardrailAsItIs(t *testing.T) {
	s := &sv1.RolloutSpec{Analysis: &sv1.AnalysisSpec{Method: MethodWindows,
		ErrorRate: &sv1.ErrorRateGuardrail{MaxIncrease: 0.02},
		Latency:   &sv1.LatencyGuardrail{Max: durationpb.New(300 * time.Millisecond)}}}
	Default(s)
	e, l := s.GetAnalysis().GetErrorRate(), s.GetAnalysis().GetLatency()
	if e.GetMax() != 0 || e.GetMaxIncrease() != 0.02 || l.GetMaxIncrease() != nil || l.GetMax().AsDuration() != 300*time.Millisecond {
		t.Errorf("Default changed a present guardrail: %v, %v", e, l)
	}
	if l.GetQuantile() != DefaultQuantile {
		t.Errorf("latency quantile %v, want %v", l.GetQuantile(), DefaultQuantile)
	}
}

func TestSpec_DefaultsBlueGreen(t *testing.T) {
	s, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if r := s.GetStrategy().GetBlueGreen().GetRamp(); len(r) != 1 || r[0] != 100 {
		t.Fatalf("ramp %v, want [100]", r)
	}
	if len(s.GetWaves()) != 1 || s.GetWaves()[0].GetBasisPoints() != 10000 || s.GetWaves()[0].GetName() != "all" {
		t.Fatalf("waves %v, want one wave of every node", s.GetWaves())
	}
}

func TestSpec_ParseGood(t *testing.T) {
	s, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if s.GetName() != "web-green-1" || s.GetService() != "web" || s.GetFrom() != "blue" || s.GetTo() != "green" || s.GetStrategy().GetBlueGreen() == nil {
		t.Fatalf("parsed %v", s)
	}
}

func TestSpec_ParseRefuses(t *testing.T) {
	cases := []struct {
		name string
		yaml string
		want []string // substrings that must all appear
	}{
		{"unknown top-level field", good + "colour: red\n", []string{"spec.colour: unknown field", "line 9"}},
		{"unknown nested field", strings.Replace(good, "blueGreen: {}", "blueGren: {}", 1), []string{"spec.strategy.blueGren: unknown field", "want one of blueGreen"}},
		{"unknown field inside blueGreen", strings.Replace(good, "blueGreen: {}", "blueGreen: {rampp: 5}", 1), []string{"spec.strategy.blueGreen.rampp: unknown field", "want one of ramp, rampInterval"}},
		{"ramp not a list", strings.Replace(good, "blueGreen: {}", "blueGreen: {ramp: 5}", 1), []string{"spec.strategy.blueGreen.ramp: want a list"}},
		{"ramp out of range", strings.Replace(good, "blueGreen: {}", "blueGreen: {ramp: [50, 140]}", 1), []string{"spec.strategy.blueGreen.ramp[1]: 140 is out of range"}},
		{"ramp not ending at 100", strings.Replace(good, "blueGreen: {}", "blueGreen: {ramp: [10, 50]}", 1), []string{"spec.strategy.blueGreen.ramp: ends at 50"}},
		{"ramp going down", strings.Replace(good, "blueGreen: {}", "blueGreen: {ramp: [50, 20, 100]}", 1), []string{"spec.strategy.blueGreen.ramp[1]: 20 does not rise"}},
		{"canary weight out of range", canary + "      - setWeight: 140\n", []string{"spec.strategy.canary.steps[3].setWeight: 140 is out of range, want 0..100"}},
		{"canary step with two kinds", canary + "      - {setWeight: 5, pause: {}}\n", []string{"spec.strategy.canary.steps[3]: want exactly one of"}},
		{"canary empty step", canary + "      - {}\n", []string{"spec.strategy.canary.steps[3]: empty step: give one of setWeight, pause, analysis (line 13)"}},
		{"canary bare step", strings.Replace(canary, "      - pause:", "      -\n      - pause:", 1), []string{"spec.strategy.canary.steps[1]: empty step: give one of setWeight, pause, analysis (line 11)"}},
		{"canary null step", canary + "      - ~\n", []string{"spec.strategy.canary.steps[3]: empty step"}},
		{"wave bare step", good + "waves:\n  - {name: eu, steps: [{setWeight: 100}, null]}\n", []string{"spec.waves[0].steps[1]: empty step: give one of setWeight, pause, analysis"}},
		{"empty wave", good + "waves:\n  - {name: eu, percent: 10}\n  - {}\n", []string{"spec.waves[1]: empty wave: give one or more of name, selector, percent, manualGate, steps (line 11)"}},
		{"bare wave", good + "waves:\n  - {name: eu, percent: 10}\n  -\n  - {name: rest}\n", []string{"spec.waves[1]: empty wave: give one or more of"}},
		{"canary unknown step", canary + "      - wait: 5s\n", []string{"spec.strategy.canary.steps[3].wait: unknown field; want one of setWeight, pause, analysis"}},
		{"analysis step without windows", canary + "      - analysis: {}\n", []string{"spec.strategy.canary.steps[3].analysis.windows: required"}},
		{"both strategies", strings.Replace(good, "blueGreen: {}", "blueGreen: {}\n  canary: {steps: [{setWeight: 5}]}", 1), []string{"spec.strategy: both blueGreen and canary"}},
		{"wave percent out of range", good + "waves:\n  - {name: eu, percent: 140}\n", []string{"spec.waves[0].percent: 140 is out of range, want 0.01..100"}},
		{"wave percent below a hundredth", good + "waves:\n  - {name: eu, percent: 0.004}\n", []string{"spec.waves[0].percent: 0.004 is out of range, want 0.01..100 (line 10)"}},
		{"wave percent not a number", good + "waves:\n  - {name: eu, percent: .nan}\n", []string{"spec.waves[0].percent: NaN is out of range"}},
		{"duplicate wave names", good + "waves:\n  - {name: eu, percent: 10}\n  - {name: eu}\n", []string{`spec.waves[1].name: "eu" names two waves`}},
		{"error rate as percent", good + "analysis:\n  errorRate: {max: 5}\n", []string{"spec.analysis.errorRate.max: 5 is out of range, want a fraction"}},
		{"bad quantile", good + "analysis:\n  latency: {quantile: 99}\n", []string{"spec.analysis.latency.quantile: 99 is out of range"}},
		{"bad duration", good + "analysis:\n  window: soon\n", []string{`spec.analysis.window: "soon" is not a duration`}},
		{"unknown method", good + "analysis:\n  method: bayes\n", []string{`spec.analysis.method: "bayes" is not a method, want "sequential" (the default) or "windows"`}},
		{"false alarm as percent", good + "analysis:\n  falseAlarm: 5\n", []string{"spec.analysis.falseAlarm: 5 is out of range"}},
		{"horizon too short", good + "analysis:\n  horizon: 10s\n", []string{"spec.analysis.horizon: 10s is out of range, want 1m..720h"}},
		{"negative margin", good + "analysis:\n  nonInferiority: -1\n", []string{"spec.analysis.nonInferiority: -1 is out of range"}},
		{"pass confidence 1", good + "analysis:\n  passConfidence: 1\n", []string{"spec.analysis.passConfidence: 1 is out of range"}},
		// Every comparison with NaN is false: the range checks alone let it by.
		{"error rate not a number", good + "analysis:\n  errorRate: {max: .nan}\n", []string{"spec.analysis.errorRate.max: NaN is not a number in range (line 10)"}},
		{"confidence not a number", good + "analysis:\n  confidence: .nan\n", []string{"spec.analysis.confidence: NaN is not a number in range"}},
		{"false alarm infinite", good + "analysis:\n  falseAlarm: .inf\n", []string{"spec.analysis.falseAlarm: +Inf is not a number in range"}},
		{"quantile not a number", good + "analysis:\n  latency: {quantile: .nan}\n", []string{"spec.analysis.latency.quantile: NaN is not a number in range"}},
		{"missing to", strings.Replace(good, "to: green\n", "", 1), []string{"spec.to: required"}},
		{"missing from", strings.Replace(good, "from: blue\n", "", 1), []string{"spec.from: required"}},
		{"same backend", strings.Replace(good, "to: green", "to: blue", 1), []string{`spec.to: "blue" is also spec.from`}},
		{"bad service name", strings.Replace(good, "service: web", "service: web.eu", 1), []string{`spec.service: "web.eu"`, "letters, digits"}},
		{"no strategy", strings.Replace(good, "strategy:\n  blueGreen: {}\n", "", 1), []string{"spec.strategy: required: one of blueGreen, canary"}},
		{"wrong version", strings.Replace(good, "version: v1", "version: v9", 1), []string{`spec.version: "v9" is not supported`}},
		{"not yaml", "name: [", []string{"spec: not valid YAML"}},
		{"empty", "", []string{"spec: empty document"}},
		{"two documents", good + "---\n" + canary, []string{"spec: the file holds more than one YAML document; want one spec per file (line 9)"}},
		{"a second empty document", good + "---\n", []string{"spec: the file holds more than one YAML document"}},
		{"strategy not a mapping", strings.Replace(good, "strategy:\n  blueGreen: {}", "strategy: fast", 1), []string{"spec.strategy: want a mapping"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// Counts are stored in 32 bits; a larger number is refused where it was
// written rather than wrapped (4294967297 windows would be 1).
func TestSpec_ParseRefusesCountsTooLargeToStore(t *testing.T) {
	cases := []struct{ field, yaml, want string }{
		{"breachWindows", good + "analysis:\n  breachWindows: 4294967297\n",
			"spec.analysis.breachWindows: 4294967297 is too large, want at most 4294967295 (line 10)"},
		{"minRequests", good + "analysis:\n  minRequests: 99999999999\n",
			"spec.analysis.minRequests: 99999999999 is too large, want at most 4294967295 (line 10)"},
		{"maxQueue", good + "analysis:\n  saturation: {maxQueue: 4294967306}\n",
			"spec.analysis.saturation.maxQueue: 4294967306 is too large, want at most 4294967295 (line 10)"},
		{"postPromotionWindows", strings.Replace(good, "blueGreen: {}", "blueGreen: {postPromotionWindows: 4294967296}", 1),
			"spec.strategy.blueGreen.postPromotionWindows: 4294967296 is too large, want at most 4294967295 (line 8)"},
		{"analysis step windows", canary + "      - analysis: {windows: 4294967298}\n",
			"spec.strategy.canary.steps[3].analysis.windows: 4294967298 is too large, want at most 4294967295 (line 13)"},
		{"negative windows", canary + "      - analysis: {windows: -1}\n",
			"spec.strategy.canary.steps[3].analysis.windows: -1 is negative (line 13)"},
	}
	for _, c := range cases {
		t.Run(c.field, func(t *testing.T) {
			sp, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatalf("accepted as %v", sp)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
		})
	}
	sp, err := Parse([]byte(good + "analysis:\n  breachWindows: 4294967295\n  minRequests: 4294967295\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := sp.GetAnalysis(); a.GetBreachWindows() != 4294967295 || a.GetMinRequests() != 4294967295 {
		t.Errorf("largest counts stored as %d and %d", a.GetBreachWindows(), a.GetMinRequests())
	}
}

// A value refused after decoding is shown with the line it is written on,
// as a field of the wrong type or an unknown field is.
func TestSpec_ParseRefusalsNameTheLine(t *testing.T) {
	for doc, want := range map[string]string{
		strings.Replace(good, "blueGreen: {}", "blueGreen: {ramp: [50, 140]}", 1): "spec.strategy.blueGreen.ramp[1]: 140 is out of range, want 1..100 (line 8)",
		good + "waves:\n  - {name: a}\n  - {name: a}\n":                           `spec.waves[1].name: "a" names two waves (line 11)`,
	} {
		if _, err := Parse([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}

func TestSpec_ReportsEveryProblem(t *testing.T) {
	_, err := Parse([]byte("version: v1\nname: x\n"))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("error %T is not Errors", err)
	}
	if len(errs) != 4 { // service, from, to, strategy
		t.Errorf("got %d problems, want 4: %v", len(errs), err)
	}
}

func FuzzSpec_Parse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("strategy: {blueGreen: [1]}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err == nil && Validate(s) != nil {
			t.Fatal("Parse accepted a spec Validate refuses")
		}
	})
}

// A spec that does not come from YAML (an intent signed by hand, in JSON)
// is checked for numbers too before the leader commits it; Validate, which
// the state machine runs on entries committed before, lets NaN by as it
// always did.
func TestCheckFinite_RefusesNaNAndInfinityWhereValidateCannot(t *testing.T) {
	sp := &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
		Analysis: &sv1.AnalysisSpec{ErrorRate: &sv1.ErrorRateGuardrail{Max: math.NaN()}, PassConfidence: math.Inf(1)}}
	Default(sp)
	err := CheckFinite(sp)
	if err == nil || !errors.Is(err, ErrInvalid) {
		t.Fatalf("CheckFinite: %v, want refused as invalid", err)
	}
	for _, want := range []string{"spec.analysis.errorRate.max: NaN", "spec.analysis.passConfidence: +Inf"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not name %q", err, want)
		}
	}
	sp.Analysis.PassConfidence = 0
	Default(sp)
	if err := Validate(sp); err != nil {
		t.Fatalf("Validate changed for committed entries: %v", err)
	}
}
