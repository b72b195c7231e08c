package main

import (
	"bytes"
	"strings"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// fleet status and rollout status NAME say how long ago the same node was
// heard from in the same words: one must not round 1.9 s down to 1 s while
// the other, and the dashboard, say 2 s.
func TestCLI_FleetAndRolloutStatusSayTheSameNodeAge(t *testing.T) {
	for _, c := range []struct {
		secs           float64
		stale, stopped bool
		want           string
	}{
		{1.9, false, false, "2s ago"},
		{0.4, false, false, "0s ago"},
		{125.6, true, false, "126s ago (stale)"},
		// Its agent said it was shutting down: not a silence.
		{3.2, true, true, "3s ago (stopped)"},
	} {
		n := &sv1.NodeView{Node: "edge-1", SecondsSinceSeen: c.secs, Stale: c.stale, Stopped: c.stopped, Wave: "-"}
		var fleet, detail bytes.Buffer
		printFleet(&fleet, &sv1.FleetStatus{Services: []*sv1.ServiceFleet{{Service: "web",
			Waves: []*sv1.WaveNodes{{Wave: "-", Index: -1, Nodes: []*sv1.NodeView{n}}}}}})
		printRolloutDetail(&detail, &sv1.RolloutView{Rollout: &sv1.Rollout{Id: "web-1", Spec: &sv1.RolloutSpec{Service: "web"}},
			Nodes: []*sv1.NodeView{n}})
		for name, out := range map[string]string{"fleet status": fleet.String(), "rollout status": detail.String()} {
			if !strings.Contains(out, "  "+c.want) {
				t.Errorf("%s of a node heard %gs ago: want %q in\n%s", name, c.secs, c.want, out)
			}
		}
	}
}
