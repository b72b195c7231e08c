package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A wave that takes no live node has no traffic of its own: its analysis
// step waits, and the rollout's status says the wave is empty and how to
// go on, rather than only that no window passed.
func TestRolloutStatus_AnalysisInAWaveWithNoNodeSaysSo(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	sp, err := spec.Parse([]byte(`version: v1
name: web-empty
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 10
      - analysis: {windows: 2}
      - setWeight: 100
waves:
  - name: eu
    selector: {region: eu}
  - name: everyone
`))
	if err != nil {
		t.Fatal(err)
	}
	if res := send(t, nc, &sv1.Intent{Id: "i-empty", Operator: "test", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}); !res.GetAccepted() {
		t.Fatalf("apply: %v", res)
	}
	var waiting string
	waitFor(t, "the analysis step to wait", 15*time.Second, func() bool {
		gen := c.srv.fsm.State().Rollout("web-empty").GetGeneration()
		for _, n := range []string{"edge-us-1", "edge-us-2", "edge-us-3"} {
			publishLabelled(t, nc, n, "us", gen, map[string]uint32{"blue": 100, "green": 0})
		}
		ans, err := c.srv.Rollouts(&sv1.RolloutsQuery{Rollout: "web-empty"})
		if err != nil {
			t.Fatal(err)
		}
		waiting = ans.GetRollouts()[0].GetWaiting()
		return strings.HasPrefix(waiting, "analysis:")
	})
	want := "wave eu takes none of the 3 live nodes: no traffic of its own to judge (rollout promote skips this step)"
	if !strings.Contains(waiting, want) {
		t.Fatalf("waiting %q, want it to contain %q", waiting, want)
	}
	// The summary (rollout list) says the same.
	ans, err := c.srv.Rollouts(&sv1.RolloutsQuery{Rollout: "web-empty", Summary: true})
	if err != nil {
		t.Fatal(err)
	}
	if w := ans.GetRollouts()[0].GetWaiting(); !strings.Contains(w, want) {
		t.Fatalf("summary waiting %q", w)
	}
}
