package coordinator

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// healthyView is a live node seen doing generation 12 of epoch 1.
func healthyView(name string) *sv1.NodeView {
	w := map[string]uint32{"blue": 0, "green": 100}
	return &sv1.NodeView{Node: name, AppliedEpoch: 1, AppliedGeneration: 12, Weights: w, ObservedWeights: w, ObservedMatches: true,
		Driver: sv1.DriverHealth_DRIVER_HEALTH_OK}
}

// A wave past the overview's limit lists the nodes that need a look first,
// then healthy ones, each in name order, and counts those left out; a
// wave within the limit is left whole.
func TestOverview_LargeWaveListsTheNodesThatNeedALookFirst(t *testing.T) {
	current := bus.Fence{Epoch: 1, Generation: 12}
	var nodes []*sv1.NodeView
	look := map[int]func(*sv1.NodeView){
		7:   func(n *sv1.NodeView) { n.Stale = true },
		40:  func(n *sv1.NodeView) { n.AppliedGeneration = 11 },
		41:  func(n *sv1.NodeView) { n.ObservedWeights = map[string]uint32{"blue": 100, "green": 0} },
		90:  func(n *sv1.NodeView) { n.Driver = sv1.DriverHealth_DRIVER_HEALTH_DEGRADED },
		130: func(n *sv1.NodeView) { n.Drift = "proxy restarted from its config" },
		200: func(n *sv1.NodeView) { n.Diverged, n.AppliedGeneration = true, 40 },
		201: func(n *sv1.NodeView) { n.LocalRollback = &sv1.LocalRollback{Generation: 12} },
		248: func(n *sv1.NodeView) {
			n.HookRuns = []*sv1.HookRun{{Point: hookPointPreTraffic, State: hookStateFailed, Generation: 12}}
		},
		249: func(n *sv1.NodeView) { n.DocumentExpired = true },
	}
	var wantLook []string
	for i := range 250 {
		n := healthyView(fmt.Sprintf("edge-%03d", i))
		if f := look[i]; f != nil {
			f(n)
			wantLook = append(wantLook, n.GetNode())
		}
		nodes = append(nodes, n)
	}
	w := &sv1.WaveNodes{Wave: "main", Nodes: nodes}
	trimWave(w, current, 100)
	if len(w.GetNodes()) != 100 || w.GetOmittedNodes() != 150 {
		t.Fatalf("listed %d, omitted %d; want 100 and 150", len(w.GetNodes()), w.GetOmittedNodes())
	}
	var got []string
	for _, n := range w.GetNodes() {
		got = append(got, n.GetNode())
	}
	if !slices.Equal(got[:len(wantLook)], wantLook) {
		t.Fatalf("listed first %v, want the nodes that need a look %v", got[:len(wantLook)], wantLook)
	}
	if got[len(wantLook)] != "edge-000" || got[99] != "edge-094" || !slices.IsSorted(got[len(wantLook):]) {
		t.Fatalf("then %v, want healthy nodes from edge-000 in name order", got[len(wantLook):])
	}

	// More nodes needing a look than the limit: only they are listed.
	for _, n := range nodes {
		n.Stale = true
	}
	w = &sv1.WaveNodes{Wave: "main", Nodes: nodes}
	trimWave(w, current, 100)
	if len(w.GetNodes()) != 100 || w.GetOmittedNodes() != 150 || w.GetNodes()[99].GetNode() != "edge-099" {
		t.Fatalf("all stale: listed %d up to %s, omitted %d", len(w.GetNodes()), w.GetNodes()[len(w.GetNodes())-1].GetNode(), w.GetOmittedNodes())
	}

	small := &sv1.WaveNodes{Wave: "canary", Nodes: nodes[:100]}
	trimWave(small, current, 100)
	if len(small.GetNodes()) != 100 || small.GetOmittedNodes() != 0 {
		t.Fatalf("a wave of 100 nodes: listed %d, omitted %d", len(small.GetNodes()), small.GetOmittedNodes())
	}
}

// The overview the dashboard is sent lists at most overviewWaveNodes nodes
// of a wave, those that need a look first, and names at most
// overviewStaleNodes stale nodes; the fleet status lists every node.
func TestOverview_ListsAtMostALimitOfEachWave(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	base := "http://" + c.srv.HTTPAddr()
	gen := applyAPICanary(t, nc, "i-overview-nodes")
	blue := map[string]uint32{"blue": 100, "green": 0}
	total := overviewWaveNodes + 20
	for i := range total {
		g := gen
		if i == total-1 {
			g = gen - 1 // behind: needs a look
		}
		publishLabelled(t, nc, fmt.Sprintf("edge-%03d", i), "us", g, blue)
	}
	// Agents that said they stopped: stale at once.
	const gone = overviewStaleNodes + 5
	for i := range gone {
		node := fmt.Sprintf("gone-%02d", i)
		b, err := proto.Marshal(&sv1.AgentStatus{Node: node, Labels: map[string]string{"region": "us"}, Stopping: true,
			Services: []*sv1.ServiceStatus{{Service: "web", AppliedGeneration: gen, AppliedEpoch: 1, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(bus.StatusSubject(node), b); err != nil {
			t.Fatal(err)
		}
	}
	var fleet sv1.FleetStatus
	waitFor(t, "every node in /v1/fleet", 10*time.Second, func() bool {
		fleet.Reset()
		code, _ := getAPI(t, base+"/v1/fleet", &fleet)
		return code == http.StatusOK && len(fleet.GetServices()) == 1 && fleet.GetServices()[0].GetLive() == uint32(total) &&
			len(fleet.GetServices()[0].GetStaleNodes()) == gone
	})
	var ov sv1.Overview
	if code, body := getAPI(t, base+"/v1/overview", &ov); code != http.StatusOK {
		t.Fatalf("overview: %d %s", code, body)
	}
	var everyone *sv1.WaveNodes
	for _, w := range ov.GetFleet().GetServices()[0].GetWaves() {
		if w.GetWave() == "everyone" {
			everyone = w
		}
	}
	// The one behind, then the stopped ones: each needs a look.
	behind := fmt.Sprintf("edge-%03d", total-1)
	omitted := uint32(total + gone - overviewWaveNodes)
	if everyone == nil || len(everyone.GetNodes()) != overviewWaveNodes || everyone.GetOmittedNodes() != omitted ||
		everyone.GetNodes()[0].GetNode() != behind || everyone.GetNodes()[1].GetNode() != "gone-00" {
		t.Fatalf("overview's wave everyone: %d nodes listed from %v, %d omitted; want %d from %s then gone-00, %d omitted",
			len(everyone.GetNodes()), everyone.GetNodes()[0].GetNode(), everyone.GetOmittedNodes(), overviewWaveNodes, behind, omitted)
	}
	if sf := ov.GetFleet().GetServices()[0]; len(sf.GetStaleNodes()) != overviewStaleNodes || sf.GetOmittedStaleNodes() != 5 {
		t.Fatalf("overview names %d stale nodes and omits %d; want %d and 5", len(sf.GetStaleNodes()), sf.GetOmittedStaleNodes(), overviewStaleNodes)
	}
	for _, w := range fleet.GetServices()[0].GetWaves() {
		if w.GetWave() == "everyone" && (len(w.GetNodes()) != total+gone || w.GetOmittedNodes() != 0) {
			t.Fatalf("fleet status lists %d of %d nodes (omitted %d)", len(w.GetNodes()), total+gone, w.GetOmittedNodes())
		}
	}
}
