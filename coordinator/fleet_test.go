package coordinator

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

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
			applied, live, _ := converged([]*sv1.NodeView{c.node}, bus.Fence{Epoch: 1, Generation: 7})
			if got := applied == 1; got != c.want {
				t.Fatalf("converged = %v (applied %d of %d live), want %v", got, applied, live, c.want)
			}
		})
	}
}

// clockedFleet is a fleet with a stale period of 15 s in epoch 1, whose
// clock reads *now.
func clockedFleet(now *time.Time) *fleet {
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	f.now = func() time.Time { return *now }
	f.epoch = func() uint64 { return 1 }
	return f
}

// hear hands f a node's status for service web as it arrives on the bus.
func hear(t *testing.T, f *fleet, st *sv1.AgentStatus) {
	t.Helper()
	for _, ss := range st.GetServices() {
		ss.Service, ss.AppliedEpoch = "web", 1
	}
	b, err := proto.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(st.GetNode()), Data: b})
}

// A node whose local guard moved it back to the old backend keeps the
// applied generation (so it does not bounce back when the bus returns with
// the same document), and its proxy does what the guard set: it serves the
// old backend, not the document's weights, and must not be counted as
// converged, neither by the rollout controller's tallies nor by the views.
func TestFleet_LocalGuardOverrideIsNotConverged(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f := clockedFleet(&now)
	canary := map[string]uint32{"blue": 80, "green": 20}
	blue := map[string]uint32{"blue": 100, "green": 0}
	report := func(node string, ss *sv1.ServiceStatus) {
		t.Helper()
		hear(t, f, &sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{ss}})
	}
	report("edge-1", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: canary, ObservedWeights: canary, ObservedMatches: true})
	report("edge-2", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: blue, ObservedWeights: blue, ObservedMatches: true,
		LocalRollback: &sv1.LocalRollback{Generation: 7, RolloutId: "web-1", From: "green", To: "blue", Reason: "green error rate 40%"}})
	// A node in no wave of generation 7 keeps its weights, the guard's of
	// an earlier generation: that is what the document asks of it.
	report("edge-3", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: blue, ObservedWeights: blue, ObservedMatches: true,
		LocalRollback: &sv1.LocalRollback{Generation: 5, RolloutId: "web-0", From: "green", To: "blue"}})
	if applied, live := f.Convergence("web", 7); applied != 2 || live != 3 {
		t.Errorf("Convergence = %d of %d live, want 2 of 3: the node its guard moved back serves blue, not generation 7", applied, live)
	}
	if applied, live, _ := converged(f.nodesFor("web"), bus.Fence{Epoch: 1, Generation: 7}); applied != 2 || live != 3 {
		t.Errorf("views count %d of %d live converged, want 2 of 3", applied, live)
	}
}

// A node a failed pre-traffic hook keeps on the old backend applied the
// generation (with the new backend at 0): the rollout controller counts it,
// so the rollout goes on without it as documented, but the views do not
// count it converged and name it, and Held names it for the completion.
// A hook that failed at an earlier generation holds nothing now.
func TestFleet_NodeHeldByAFailedPreTrafficHookIsNamedNotConverged(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f := clockedFleet(&now)
	green := map[string]uint32{"blue": 0, "green": 100}
	blue := map[string]uint32{"blue": 100, "green": 0}
	failed := func(gen uint64) []*sv1.HookRun {
		return []*sv1.HookRun{
			{Hook: "warm-ok", Point: "preTraffic", RolloutId: "web-1", Generation: gen, State: "succeeded"},
			{Hook: "warm-green", Point: "preTraffic", RolloutId: "web-1", Generation: gen, State: "failed", ExitCode: 7},
		}
	}
	report := func(node string, ss *sv1.ServiceStatus) {
		t.Helper()
		ss.RolloutId = "web-1"
		hear(t, f, &sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{ss}})
	}
	report("edge-1", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: green, ObservedWeights: green, ObservedMatches: true})
	report("edge-3", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: blue, ObservedWeights: blue, ObservedMatches: true, HookRuns: failed(7)})
	report("edge-2", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: blue, ObservedWeights: blue, ObservedMatches: true, HookRuns: failed(7)})
	// Held at generation 6, then given weight by 7 after the hook ran
	// again and passed: it serves green.
	report("edge-4", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: green, ObservedWeights: green, ObservedMatches: true,
		HookRuns: []*sv1.HookRun{{Hook: "warm-green", Point: "preTraffic", RolloutId: "web-1", Generation: 6, State: "failed"}}})
	if applied, live := f.Convergence("web", 7); applied != 4 || live != 4 {
		t.Errorf("controller's Convergence = %d of %d live, want 4 of 4: held nodes took the generation", applied, live)
	}
	applied, live, held := converged(f.nodesFor("web"), bus.Fence{Epoch: 1, Generation: 7})
	if applied != 2 || live != 4 || !slices.Equal(held, []string{"edge-2", "edge-3"}) {
		t.Errorf("views: %d of %d converged, held %v; want 2 of 4, held [edge-2 edge-3]", applied, live, held)
	}
	if got := f.Held("web", 7); !slices.Equal(got, []string{"edge-2", "edge-3"}) {
		t.Errorf("Held = %v, want [edge-2 edge-3]", got)
	}
	if got := f.Held("web", 6); len(got) != 0 {
		t.Errorf("Held at another generation = %v, want none", got)
	}
	// A held node that goes silent is not named: it is stale.
	now = now.Add(10 * time.Second)
	report("edge-1", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: green, ObservedWeights: green, ObservedMatches: true})
	report("edge-3", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: blue, ObservedWeights: blue, ObservedMatches: true, HookRuns: failed(7)})
	report("edge-4", &sv1.ServiceStatus{AppliedGeneration: 7, Weights: green, ObservedWeights: green, ObservedMatches: true})
	now = now.Add(10 * time.Second)
	if got := f.Held("web", 7); !slices.Equal(got, []string{"edge-3"}) {
		t.Errorf("Held once edge-2 went stale = %v, want [edge-3]", got)
	}
}

// A node whose agent said it is stopping is stale at once (not after the
// stale period): not counted live, named among the stale nodes, shown
// stopped; heard from again, it is live again.
func TestFleet_AStoppingAgentsNodeIsStaleAtOnce(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f := clockedFleet(&now)
	green := map[string]uint32{"blue": 0, "green": 100}
	report := func(node string, stopping bool) {
		t.Helper()
		hear(t, f, &sv1.AgentStatus{Node: node, Stopping: stopping, Services: []*sv1.ServiceStatus{{
			AppliedGeneration: 7, Weights: green, ObservedWeights: green, ObservedMatches: true}}})
	}
	report("edge-1", false)
	report("edge-2", false)
	now = now.Add(time.Second)
	report("edge-2", true)
	if applied, live := f.Convergence("web", 7); applied != 1 || live != 1 {
		t.Errorf("Convergence = %d of %d live, want 1 of 1: edge-2 stopped", applied, live)
	}
	if got := f.Stale("web"); !slices.Equal(got, []string{"edge-2"}) {
		t.Errorf("Stale = %v, want [edge-2]", got)
	}
	views := f.nodesFor("web")
	if len(views) != 2 || views[1].GetNode() != "edge-2" || !views[1].GetStale() || !views[1].GetStopped() || views[0].GetStale() {
		t.Fatalf("views %v, want edge-2 stale and stopped, edge-1 live", views)
	}
	if live := f.Live("web"); len(live) != 1 || live[0].ID != "edge-1" {
		t.Errorf("Live = %v, want edge-1 only", live)
	}
	// Past the stale period the sweep finds nothing more to do for it.
	now = now.Add(20 * time.Second)
	report("edge-1", false)
	if got := f.Stale("web"); !slices.Equal(got, []string{"edge-2"}) {
		t.Errorf("Stale after the period = %v, want [edge-2]", got)
	}
	report("edge-2", false)
	if applied, live := f.Convergence("web", 7); applied != 2 || live != 2 {
		t.Errorf("Convergence once edge-2 is back = %d of %d live, want 2 of 2", applied, live)
	}
	if got := f.Stale("web"); len(got) != 0 {
		t.Errorf("Stale once edge-2 is back = %v", got)
	}
	if v := f.nodesFor("web")[1]; v.GetStale() || v.GetStopped() {
		t.Errorf("edge-2 back: %v", v)
	}
	// Forgotten as a silent node is, a day after it stopped.
	report("edge-2", true)
	now = now.Add(DefaultForgetAfter + time.Minute)
	report("edge-1", false)
	if views := f.nodesFor("web"); len(views) != 1 {
		t.Errorf("a day after edge-2 stopped the views list %d nodes, want edge-1 alone", len(views))
	}
}

// A status naming a service twice would count its node twice in that
// service's tallies: one converged node could stand for two. It is refused
// as malformed, logged, and the node's earlier status stays what counts.
func TestFleet_AStatusNamingAServiceTwiceIsRefused(t *testing.T) {
	var logs lockedBuffer
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(&logs, nil)))
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return now }
	green := map[string]uint32{"blue": 0, "green": 100}
	report := func(node string, gens ...uint64) {
		t.Helper()
		st := &sv1.AgentStatus{Node: node}
		for _, g := range gens {
			st.Services = append(st.Services, &sv1.ServiceStatus{Service: "web", AppliedEpoch: 1, AppliedGeneration: g,
				Weights: green, ObservedWeights: green, ObservedMatches: true})
		}
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(node), Data: b})
	}
	report("edge-1", 6)
	report("edge-2", 6)
	report("edge-1", 7, 7)
	if got := testutil.ToFloat64(f.metrics.statusRejected.WithLabelValues("malformed")); got != 1 {
		t.Errorf("malformed statuses refused = %v, want 1", got)
	}
	if applied, live := f.Convergence("web", 7); applied != 0 || live != 2 {
		t.Errorf("Convergence = %d of %d live, want 0 of 2: edge-1's status naming web twice must not count", applied, live)
	}
	if n := len(f.nodesFor("web")); n != 2 {
		t.Errorf("views show %d rows for web, want 2, one per node", n)
	}
	if out := logs.String(); !strings.Contains(out, `service=web`) || !strings.Contains(out, "names a service twice") {
		t.Errorf("log %q does not say which status was refused and why", out)
	}
}
