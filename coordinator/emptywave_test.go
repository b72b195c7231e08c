package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
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

// A node whose local guard moved it back to the old backend at the
// rollout's generation is not counted converged, and only a newer
// generation moves it: the rollout waits for it until someone acts, and
// its status says which node and what to do instead of only a count.
func TestRolloutStatus_WaitingForANodeItsGuardMovedBackSaysSo(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	sp, err := spec.Parse([]byte(`version: v1
name: web-guard
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 10
      - setWeight: 100
`))
	if err != nil {
		t.Fatal(err)
	}
	if res := send(t, nc, &sv1.Intent{Id: "i-guard", Operator: "test", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}); !res.GetAccepted() {
		t.Fatalf("apply: %v", res)
	}
	canary := map[string]uint32{"blue": 90, "green": 10}
	blue := map[string]uint32{"blue": 100, "green": 0}
	var waiting string
	waitFor(t, "the rollout to wait for the guarded node", 15*time.Second, func() bool {
		gen := c.srv.fsm.State().Rollout("web-guard").GetGeneration()
		publishLabelled(t, nc, "edge-1", "eu", gen, canary)
		publishLabelled(t, nc, "edge-2", "eu", gen, canary)
		b, _ := proto.Marshal(&sv1.AgentStatus{Node: "edge-3", Services: []*sv1.ServiceStatus{{
			Service: "web", AppliedGeneration: gen, AppliedEpoch: 1, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK,
			Weights: blue, ObservedWeights: blue, ObservedMatches: true,
			LocalRollback: &sv1.LocalRollback{Generation: gen, RolloutId: "web-guard", From: "green", To: "blue", Reason: "green error rate 40%"},
		}}})
		if err := nc.Publish(bus.StatusSubject("edge-3"), b); err != nil {
			t.Fatal(err)
		}
		ans, err := c.srv.Rollouts(&sv1.RolloutsQuery{Rollout: "web-guard"})
		if err != nil {
			t.Fatal(err)
		}
		waiting = ans.GetRollouts()[0].GetWaiting()
		return strings.HasPrefix(waiting, "2 of 3 live nodes applied generation")
	})
	want := "; edge-3: local guard moved back to blue at this generation, and only a newer one moves them (rollout abort web-guard, or rollout promote web-guard for the next step)"
	if !strings.HasSuffix(waiting, want) {
		t.Fatalf("waiting %q, want it to end with %q", waiting, want)
	}

	// The leader wrote the move into the rollout's history, as the node's
	// agent's act, once however many statuses said it; the abort that
	// follows moves the node on, and the line stays.
	gen := c.srv.fsm.State().Rollout("web-guard").GetGeneration()
	if res := send(t, nc, &sv1.Intent{Id: "i-guard-abort", Operator: "test", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-guard"}}}); !res.GetAccepted() {
		t.Fatalf("abort: %v", res)
	}
	line := fmt.Sprintf("local guard on edge-3 moved it back to blue at generation %d: green error rate 40%%", gen)
	var found []string
	waitFor(t, "the local rollback in the history", 15*time.Second, func() bool {
		found = nil
		for _, h := range c.srv.fsm.State().Rollout("web-guard").GetHistory() {
			if strings.HasPrefix(h.GetMessage(), "local guard on ") {
				found = append(found, h.GetMessage()+" ("+h.GetOperator()+")")
			}
		}
		return len(found) > 0
	})
	if len(found) != 1 || found[0] != line+" (agent edge-3)" {
		t.Fatalf("history lines %q, want one: %q", found, line)
	}
}
