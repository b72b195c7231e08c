package spec

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const canaryHead = `
version: v1
name: web-canary-1
service: web
from: blue
to: green
strategy:
  canary:
    steps:
`

// Specs Validate lets by whose plan cannot run as the operator wrote it:
// Parse refuses them naming the field and what would be accepted.
func TestSpec_ParseRefusesPlansThatCannotRun(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"pause of no time", canaryHead + "      - setWeight: 10\n      - pause: {duration: 0s}\n",
			[]string{"spec.strategy.canary.steps[1].pause.duration: 0s", "pause: {}", "(line 11)"}},
		{"analysis before any weight", canaryHead + "      - analysis: {windows: 3}\n      - setWeight: 50\n",
			[]string{"spec.strategy.canary.steps[0].analysis", "weight 0", "(line 10)"}},
		{"analysis after setWeight 0", canaryHead + "      - setWeight: 0\n      - analysis: {windows: 3}\n",
			[]string{"spec.strategy.canary.steps[1].analysis", "weight 0"}},
		{"wave's own analysis before any weight", strings.Replace(good, "blueGreen: {}", "canary: {steps: [{setWeight: 10}]}", 1) +
			"waves:\n  - name: eu\n    steps:\n      - analysis: {windows: 2}\n",
			[]string{"spec.waves[0].steps[0].analysis", "weight 0"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sp, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatalf("accepted as %v", sp)
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
	// What stays accepted: a weight held or raised, an analysis once
	// the weight is above 0, a pause that waits for approval.
	for _, ok := range []string{
		canaryHead + "      - setWeight: 10\n      - analysis: {windows: 3}\n      - setWeight: 10\n      - pause: {}\n      - setWeight: 100\n",
		strings.Replace(good, "blueGreen: {}", "blueGreen: {ramp: [10, 100], rampInterval: 1m, postPromotionWindows: 2}", 1),
	} {
		if _, err := Parse([]byte(ok)); err != nil {
			t.Errorf("refused %q: %v", ok, err)
		}
	}
}

// A spec that comes as JSON in an intent is held to the same rules before
// the leader commits it; Validate, which the state machine runs on entries
// already committed, is left as it was so they replay alike.
func TestCheckPlan_RefusesProtobufSpecsAlike(t *testing.T) {
	steps := func(st ...*sv1.Step) *sv1.RolloutSpec {
		return &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green",
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: st}}}}
	}
	weight := func(w uint32) *sv1.Step { return &sv1.Step{Kind: &sv1.Step_SetWeight{SetWeight: w}} }
	pause := func(d *durationpb.Duration) *sv1.Step {
		return &sv1.Step{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{Duration: d}}}
	}
	analysis := &sv1.Step{Kind: &sv1.Step_Analysis{Analysis: &sv1.AnalysisStep{Windows: 2}}}
	for name, c := range map[string]struct {
		sp   *sv1.RolloutSpec
		want string
	}{
		"pause of no time":           {steps(weight(10), pause(durationpb.New(0))), "spec.strategy.canary.steps[1].pause.duration: 0s"},
		"analysis before any weight": {steps(analysis, weight(10)), "spec.strategy.canary.steps[0].analysis"},
	} {
		t.Run(name, func(t *testing.T) {
			Default(c.sp)
			if err := Validate(c.sp); err != nil {
				t.Fatalf("Validate changed for committed entries: %v", err)
			}
			err := CheckPlan(c.sp)
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("CheckPlan: %v, want refused naming %q", err, c.want)
			}
		})
	}
	ok := steps(weight(10), pause(nil), analysis, weight(100))
	Default(ok)
	if err := CheckPlan(ok); err != nil {
		t.Fatal(err)
	}
}

// Every wave hashes nodes the same way (rollout name, node id), and the
// first wave that takes a node wins: a later wave whose nodes an earlier
// one takes at the same or a larger share would move no node at all.
func TestSpec_ParseRefusesAWaveThatCanSelectNoNode(t *testing.T) {
	cases := []struct{ name, waves, want string }{
		{"narrower selector, same share", "  - {name: canary, percent: 10}\n  - {name: eu, selector: {region: eu}, percent: 10}\n",
			`spec.waves[1]: selects no node: every node it matches is in spec.waves[0] "canary"`},
		{"same selector, smaller share", "  - {name: eu-20, selector: {region: eu}, percent: 20}\n  - {name: eu-5, selector: {region: eu}, percent: 5}\n",
			`spec.waves[1]: selects no node: every node it matches is in spec.waves[0] "eu-20"`},
		{"after a wave of every node", "  - {name: all}\n  - {name: eu, selector: {region: eu, tier: edge}}\n",
			`spec.waves[1]: selects no node: every node it matches is in spec.waves[0] "all"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sp, err := Parse([]byte(good + "waves:\n" + c.waves))
			if err == nil {
				t.Fatalf("accepted as %v", sp)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not say %q", err, c.want)
			}
		})
	}
	for _, ok := range []string{
		"  - {name: eu, selector: {region: eu}, percent: 10}\n  - {name: canary, percent: 10}\n",
		"  - {name: canary, percent: 10}\n  - {name: half, percent: 50}\n  - {name: rest}\n",
		"  - {name: eu, selector: {region: eu}}\n  - {name: us, selector: {region: us}}\n",
		"  - {name: eu, selector: {region: eu}, percent: 10}\n  - {name: eu-edge, selector: {region: eu, tier: edge}, percent: 30}\n",
	} {
		if _, err := Parse([]byte(good + "waves:\n" + ok)); err != nil {
			t.Errorf("refused %q: %v", ok, err)
		}
	}
}
