package desired

import (
	"fmt"
	"maps"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestDesired_BucketIsStableAndSpread(t *testing.T) {
	// Pinned values: a change here reshuffles every fleet's waves.
	for _, c := range []struct {
		rollout, node string
		want          uint32
	}{
		{"r1", "edge-1", 9015},
		{"web", "edge-2", 4673},
	} {
		if got := Bucket(c.rollout, c.node); got != c.want {
			t.Errorf("Bucket(%q,%q) = %d, want %d", c.rollout, c.node, got, c.want)
		}
	}
	// 10% of 10,000 nodes should land within a few tenths of a percent.
	in := 0
	for i := range 10000 {
		if Bucket("web-42", fmt.Sprintf("edge-%05d", i)) < 1000 {
			in++
		}
	}
	if in < 900 || in > 1100 {
		t.Errorf("10%% wave took %d of 10000 nodes, want 900..1100", in)
	}
}

func TestDesired_Selects(t *testing.T) {
	cases := []struct {
		name     string
		selector map[string]string
		labels   map[string]string
		want     bool
	}{
		{"empty selector matches all", nil, map[string]string{"region": "eu"}, true},
		{"empty selector matches unlabelled", nil, nil, true},
		{"match", map[string]string{"region": "eu"}, map[string]string{"region": "eu", "tier": "edge"}, true},
		{"value differs", map[string]string{"region": "eu"}, map[string]string{"region": "us"}, false},
		{"label missing", map[string]string{"region": "eu"}, nil, false},
		{"all keys needed", map[string]string{"region": "eu", "tier": "edge"}, map[string]string{"region": "eu"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Selects(c.selector, c.labels); got != c.want {
				t.Errorf("Selects(%v, %v) = %v, want %v", c.selector, c.labels, got, c.want)
			}
		})
	}
}

func TestDesired_Evaluate(t *testing.T) {
	green := map[string]uint32{"blue": 0, "green": 100}
	blue := map[string]uint32{"blue": 100, "green": 0}
	canary := map[string]uint32{"blue": 80, "green": 20}
	all := &sv1.WaveWeights{Index: 0, BasisPoints: FullBasisPoints, Weights: green}

	cases := []struct {
		name     string
		ds       *sv1.DesiredState
		labels   map[string]string
		want     map[string]uint32
		wantWave int32
		wantOK   bool
	}{
		{"whole fleet wave", &sv1.DesiredState{RolloutId: "r", Waves: []*sv1.WaveWeights{all}}, nil, green, 0, true},
		{"no wave, defaults", &sv1.DesiredState{RolloutId: "r", DefaultWeights: blue}, nil, blue, NoWave, true},
		{"no wave, no defaults keeps weights", &sv1.DesiredState{RolloutId: "r"}, nil, nil, NoWave, false},
		{"selector misses, defaults", &sv1.DesiredState{
			RolloutId:      "r",
			Waves:          []*sv1.WaveWeights{{Index: 0, Selector: map[string]string{"region": "us"}, BasisPoints: FullBasisPoints, Weights: green}},
			DefaultWeights: blue,
		}, map[string]string{"region": "eu"}, blue, NoWave, true},
		{"first matching wave wins", &sv1.DesiredState{
			RolloutId: "r",
			Waves: []*sv1.WaveWeights{
				{Index: 0, Selector: map[string]string{"region": "eu"}, BasisPoints: FullBasisPoints, Weights: canary},
				{Index: 1, BasisPoints: FullBasisPoints, Weights: green},
			},
		}, map[string]string{"region": "eu"}, canary, 0, true},
		{"zero percent wave takes nobody", &sv1.DesiredState{
			RolloutId:      "r",
			Waves:          []*sv1.WaveWeights{{Index: 0, BasisPoints: 0, Weights: green}},
			DefaultWeights: blue,
		}, nil, blue, NoWave, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, wave, ok := Evaluate(c.ds, "edge-1", c.labels)
			if ok != c.wantOK || wave != c.wantWave || !maps.Equal(got, c.want) {
				t.Errorf("Evaluate = %v, wave %d, ok %v; want %v, wave %d, ok %v", got, wave, ok, c.want, c.wantWave, c.wantOK)
			}
		})
	}
}

func TestDesired_EvaluateDoesNotAlias(t *testing.T) {
	ds := &sv1.DesiredState{DefaultWeights: map[string]uint32{"blue": 100}}
	got, _, _ := Evaluate(ds, "n", nil)
	got["blue"] = 0
	if ds.DefaultWeights["blue"] != 100 {
		t.Fatal("Evaluate returned the document's own map")
	}
}
