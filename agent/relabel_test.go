package agent

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A node's labels are read at start. A node restarted with new labels while
// its service's document stays the same (a finished rollout, or one waiting
// at a step) takes the wave its new labels put it in at once, not at the
// next document: after a rollout completed there is none, and the node
// would keep the weights of the wave it left for good.
func TestAgent_RestartWithNewLabelsTakesTheirWave(t *testing.T) {
	b := startBus(t)
	blue := map[string]uint32{"blue": 100, "green": 0}
	green := map[string]uint32{"blue": 0, "green": 100}
	cfg := testConfig(t, b.url) // region eu
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	b.put(t, defaults(1, blue))
	ra.waitApplied(t, "web", 1)
	b.put(t, &sv1.DesiredState{Service: "web", Generation: 2, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED,
		FromBackend: "blue", ToBackend: "green", Waves: []*sv1.WaveWeights{{
			Index: 0, Name: "us", Selector: map[string]string{"region": "us"},
			BasisPoints: desired.FullBasisPoints, Weights: green,
		}}})

	if got := ra.waitApplied(t, "web", 2); !maps.Equal(got, blue) {
		t.Fatalf("in no wave the node has %v, want its weights kept: %v", got, blue)
	}
	ra.stop(t)

	cfg.Labels = map[string]string{"region": "us"}
	ra = startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	defer ra.stop(t)
	waitFor(t, 10*time.Second, "the us wave's weights on the relabelled node", func() error {
		gen, got := ra.Applied("web")
		if gen != 2 || !maps.Equal(got, green) {
			return fmt.Errorf("generation %d weights %v, want 2 and %v", gen, got, green)
		}
		return nil
	})
	if applies, _ := drv.recorded(); len(applies) == 0 || !maps.Equal(applies[len(applies)-1], green) {
		t.Fatalf("the proxy was last set to %v, want %v", applies, green)
	}
}
