package spec

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func setW(w uint32) *sv1.Step { return &sv1.Step{Kind: &sv1.Step_SetWeight{SetWeight: w}} }
func pause(d time.Duration) *sv1.Step {
	return &sv1.Step{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{Duration: durationpb.New(d)}}}
}

func TestPlan_CompileBlueGreenRamp(t *testing.T) {
	s := &sv1.RolloutSpec{Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{
		Ramp: []uint32{25, 100}, RampInterval: durationpb.New(10 * time.Second), PostPromotionWindows: 3,
	}}}}
	p := Compile(s)
	if len(p) != 1 {
		t.Fatalf("%d waves", len(p))
	}
	var got []string
	for _, st := range p[0].Steps {
		got = append(got, DescribeStep(st))
	}
	want := []string{"setWeight 25", "pause 10s", "setWeight 100", "analysis 3 windows"}
	if len(got) != len(want) {
		t.Fatalf("steps %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("steps %v, want %v", got, want)
		}
	}
}

func TestPlan_WeightAt(t *testing.T) {
	steps := []*sv1.Step{setW(10), pause(time.Second), setW(50), pause(0)}
	cases := []struct {
		step int
		want uint32
	}{{0, 10}, {1, 10}, {2, 50}, {3, 50}, {4, 100}, {9, 100}}
	for _, c := range cases {
		if got := WeightAt(steps, c.step); got != c.want {
			t.Errorf("WeightAt(step %d) = %d, want %d", c.step, got, c.want)
		}
	}
	if got := WeightAt([]*sv1.Step{pause(time.Second), setW(5)}, 0); got != 0 {
		t.Errorf("before any setWeight: %d, want 0", got)
	}
}

func TestPlan_Next(t *testing.T) {
	plan := []PlannedWave{{Steps: []*sv1.Step{setW(10), setW(100)}}, {Steps: []*sv1.Step{setW(100)}}}
	type pos struct {
		w, s    int
		promote bool
	}
	cases := []struct{ from, want pos }{
		{pos{0, 0, false}, pos{0, 1, false}},
		{pos{0, 1, false}, pos{0, 2, false}}, // end of wave 0: the next wave's gate waits here
		{pos{0, 2, false}, pos{1, 0, false}},
		{pos{1, 0, false}, pos{1, 1, false}},
		{pos{1, 1, false}, pos{1, 1, true}},
	}
	for _, c := range cases {
		w, s, p := Next(plan, c.from.w, c.from.s)
		if (pos{w, s, p}) != c.want {
			t.Errorf("Next(%d,%d) = %d,%d,%v, want %v", c.from.w, c.from.s, w, s, p, c.want)
		}
	}
}
