package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// answerQuery answers every query of one kind with ans, as a coordinator
// would.
func answerQuery(t *testing.T, nc *nats.Conn, name string, ans proto.Message) {
	t.Helper()
	body, err := proto.Marshal(ans)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(bus.QuerySubject(name), func(m *nats.Msg) { _ = m.Respond(body) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// --wait says the fleet converged only when every live node's proxy does
// the committed generation, or a newer one, of the cluster's current
// lineage: a node holding another lineage's document (diverged, or left
// behind by a raised epoch) has a generation number above the committed
// one and does not follow this cluster; a node its local guard moved back
// serves the old backend whatever generation it holds.
func TestCLI_WaitCountsOnlyNodesDoingTheCommittedDocument(t *testing.T) {
	green := map[string]uint32{"blue": 0, "green": 100}
	blue := map[string]uint32{"blue": 100, "green": 0}
	doing := func(node string, epoch, gen uint64) *sv1.NodeView {
		return &sv1.NodeView{Node: node, AppliedEpoch: epoch, AppliedGeneration: gen, Weights: green, ObservedWeights: green, ObservedMatches: true}
	}
	cases := []struct {
		name  string
		epoch uint64 // the cluster's current epoch
		other *sv1.NodeView
		want  bool
	}{
		{"a node of the rollout's next generation", 2, doing("edge-2", 2, 14), true},
		{"a diverged node", 1, func() *sv1.NodeView { n := doing("edge-2", 1, 500); n.Diverged = true; return n }(), false},
		{"a node of the lineage before the epoch was raised", 2, doing("edge-2", 1, 500), false},
		{"a node its local guard moved back", 2, &sv1.NodeView{Node: "edge-2", AppliedEpoch: 2, AppliedGeneration: 12, Weights: blue, ObservedWeights: blue, ObservedMatches: true,
			LocalRollback: &sv1.LocalRollback{Generation: 12, From: "green", To: "blue"}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, nc := runNATS(t)
			first := doing("edge-1", c.epoch, 12)
			nodes := []*sv1.NodeView{first, c.other}
			answerQuery(t, nc, bus.QueryRollouts, &sv1.RolloutsAnswer{Rollouts: []*sv1.RolloutView{{
				Rollout: &sv1.Rollout{Id: "r", Spec: &sv1.RolloutSpec{Service: "web"}, Generation: 12}, Nodes: nodes, Live: 2}}})
			answerQuery(t, nc, bus.QueryFleetStatus, &sv1.FleetStatus{Services: []*sv1.ServiceFleet{{
				Service: "web", Epoch: c.epoch, Generation: 12, Rollout: "r", Live: 2,
				Waves: []*sv1.WaveNodes{{Wave: "-", Index: -1, Nodes: nodes}}}}})
			var out strings.Builder
			err := awaitConverged(context.Background(), clientFlags{timeout: time.Second}, nc,
				&sv1.IntentResult{Accepted: true, RolloutId: "r", Service: "web", Generation: 12}, &out)
			if got := err == nil; got != c.want {
				t.Errorf("converged = %v (err %v, stdout %q), want %v", got, err, out.String(), c.want)
			}
		})
	}
}

// A node its failed pre-traffic hook keeps on blue took the generation, so
// --wait does not wait for it (waiting longer would change nothing), but it
// is not counted converged and is named.
func TestCLI_WaitNamesANodeHeldByItsPreTrafficHook(t *testing.T) {
	green := map[string]uint32{"blue": 0, "green": 100}
	blue := map[string]uint32{"blue": 100, "green": 0}
	nodes := []*sv1.NodeView{
		{Node: "edge-1", AppliedEpoch: 1, AppliedGeneration: 12, Weights: green, ObservedWeights: green, ObservedMatches: true},
		{Node: "edge-2", AppliedEpoch: 1, AppliedGeneration: 12, Weights: blue, ObservedWeights: blue, ObservedMatches: true,
			HookRuns: []*sv1.HookRun{{Hook: "warm-green", Point: "preTraffic", Generation: 12, State: "failed", ExitCode: 7}}},
	}
	_, nc := runNATS(t)
	answerQuery(t, nc, bus.QueryFleetStatus, &sv1.FleetStatus{Services: []*sv1.ServiceFleet{{
		Service: "web", Epoch: 1, Generation: 12, Rollout: "r", Live: 2,
		Waves: []*sv1.WaveNodes{{Wave: "-", Index: -1, Nodes: nodes}}}}})
	var out strings.Builder
	if err := awaitConverged(context.Background(), clientFlags{timeout: 5 * time.Second}, nc,
		&sv1.IntentResult{Accepted: true, RolloutId: "r", Service: "web", Generation: 12}, &out); err != nil {
		t.Fatalf("--wait: %v (stdout %q)", err, out.String())
	}
	want := "converged: 1/2 live nodes' proxies do generation 12 or newer\n" +
		"held: edge-2 applied it on the old backend: a pre-traffic hook failed (rollout status says why)\n"
	if out.String() != want {
		t.Fatalf("stdout %q, want %q", out.String(), want)
	}
}

// --wait asks the coordinators for counts (reached_generation) and goes by
// them when the answer echoes the generation: the poll carries no node
// list however large the fleet.
func TestCLI_WaitGoesByTheCoordinatorsCounts(t *testing.T) {
	for _, c := range []struct {
		name    string
		reached uint32
		held    []string
		want    string // stdout, or the error's end
	}{
		{"some nodes still behind", 2, nil, "2/3 live nodes' proxies seen doing generation 12 of epoch 1 or newer"},
		{"every node, one held", 3, []string{"edge-2"}, "converged: 2/3 live nodes' proxies do generation 12 or newer\n" +
			"held: edge-2 applied it on the old backend: a pre-traffic hook failed (rollout status says why)\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, nc := runNATS(t)
			sub, err := nc.Subscribe(bus.QuerySubject(bus.QueryFleetStatus), func(m *nats.Msg) {
				var q sv1.FleetStatusQuery
				if err := proto.Unmarshal(m.Data, &q); err != nil || q.GetReachedGeneration() != 12 || q.GetService() != "web" {
					return // no answer: the wait times out saying so
				}
				body, _ := proto.Marshal(&sv1.FleetStatus{Services: []*sv1.ServiceFleet{{Service: "web", Epoch: 1, Generation: 12,
					Live: 3, ReachedGeneration: 12, Reached: c.reached, ReachedHeld: c.held}}})
				_ = m.Respond(body)
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sub.Unsubscribe() })
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			err = awaitConverged(context.Background(), clientFlags{timeout: 3 * time.Second}, nc,
				&sv1.IntentResult{Accepted: true, RolloutId: "r", Service: "web", Generation: 12}, &out)
			switch {
			case err != nil && !strings.HasSuffix(err.Error(), c.want):
				t.Fatalf("--wait: %v (stdout %q), want it to end %q", err, out.String(), c.want)
			case err == nil && out.String() != c.want:
				t.Fatalf("stdout %q, want %q", out.String(), c.want)
			}
		})
	}
}
