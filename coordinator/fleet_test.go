package coordinator

import (
	"testing"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestFleet_ConvergedOnlyWhenTheProxyIsSeenDoingIt(t *testing.T) {
	green := map[string]uint32{"blue": 0, "green": 100}
	blue := map[string]uint32{"blue": 100, "green": 0}
	cases := []struct {
		name string
		node *sv1.NodeView
		want bool
	}{
		{"applied and read back", &sv1.NodeView{AppliedGeneration: 7, Weights: green, ObservedWeights: green, ObservedMatches: true}, true},
		{"newer generation is diverged, not converged", &sv1.NodeView{AppliedGeneration: 9, Weights: green, ObservedWeights: green, ObservedMatches: true}, false},
		{"older generation", &sv1.NodeView{AppliedGeneration: 6, Weights: green, ObservedWeights: green, ObservedMatches: true}, false},
		{"proxy restarted from its config", &sv1.NodeView{AppliedGeneration: 7, Weights: green, ObservedWeights: blue, ObservedMatches: false, Drift: "proxy restarted"}, false},
		{"agent says match but weights differ", &sv1.NodeView{AppliedGeneration: 7, Weights: green, ObservedWeights: blue, ObservedMatches: true}, false},
		{"proxy unreadable", &sv1.NodeView{AppliedGeneration: 7, Weights: green, ObservedMatches: false}, false},
		{"agent that reads nothing back", &sv1.NodeView{AppliedGeneration: 7, Weights: green}, false},
		// A document whose waves do not take the node gives it no
		// weights: it keeps those it has, whatever the proxy holds.
		{"node outside the waves keeps its weights", &sv1.NodeView{AppliedGeneration: 7, ObservedWeights: blue, ObservedMatches: true}, true},
		{"stale node is not live", &sv1.NodeView{AppliedGeneration: 7, Weights: green, ObservedWeights: green, ObservedMatches: true, Stale: true}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			applied, live := converged([]*sv1.NodeView{c.node}, bus.Fence{Epoch: 1, Generation: 7})
			if got := applied == 1; got != c.want {
				t.Fatalf("converged = %v (applied %d of %d live), want %v", got, applied, live, c.want)
			}
		})
	}
}
