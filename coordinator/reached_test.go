package coordinator

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A client waiting for the fleet (--wait) asks for counts, not nodes: the
// answer counts the nodes that reached a generation as counting every
// node's view does, names the held ones, echoes the generation and carries
// no node list, whatever the fleet's size.
func TestQuery_FleetStatusCountsTheNodesThatReachedAGeneration(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	gen := applyAPICanary(t, nc, "i-reached")
	canary := map[string]uint32{"blue": 80, "green": 20}
	blue := map[string]uint32{"blue": 100, "green": 0}
	status := func(node string, ss *sv1.ServiceStatus) {
		t.Helper()
		ss.Service, ss.AppliedEpoch, ss.ObservedMatches = "web", 1, true
		if ss.ObservedWeights == nil {
			ss.ObservedWeights = ss.Weights
		}
		b, err := proto.Marshal(&sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{ss}})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(bus.StatusSubject(node), b); err != nil {
			t.Fatal(err)
		}
	}
	status("edge-1", &sv1.ServiceStatus{AppliedGeneration: gen, Weights: canary})
	status("edge-2", &sv1.ServiceStatus{AppliedGeneration: gen - 1, Weights: blue}) // behind
	status("edge-3", &sv1.ServiceStatus{AppliedGeneration: gen, Weights: blue,      // held by its hook
		HookRuns: []*sv1.HookRun{{Hook: "warm", Point: hookPointPreTraffic, Generation: gen, State: hookStateFailed}}})
	status("edge-4", &sv1.ServiceStatus{AppliedGeneration: gen + 5, Weights: canary})                    // another lineage's
	status("edge-5", &sv1.ServiceStatus{AppliedGeneration: gen, Weights: canary, ObservedWeights: blue}) // proxy restarted
	status("edge-6", &sv1.ServiceStatus{AppliedGeneration: gen, Weights: canary})

	query := func(q *sv1.FleetStatusQuery) (*sv1.FleetStatus, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var ans sv1.FleetStatus
		return &ans, bus.Query(ctx, nc, bus.QueryFleetStatus, q, &ans)
	}
	var views []*sv1.NodeView
	waitFor(t, "six nodes in the fleet status", 5*time.Second, func() bool {
		full, err := query(&sv1.FleetStatusQuery{Service: "web"})
		if err != nil || len(full.GetServices()) != 1 {
			return false
		}
		views = views[:0]
		for _, w := range full.GetServices()[0].GetWaves() {
			views = append(views, w.GetNodes()...)
		}
		return len(views) == 6
	})
	want := bus.Fence{Epoch: 1, Generation: gen}
	wr, wl, wh := reachedByViews(views, want)
	if wr != 3 || wl != 6 || !slices.Equal(wh, []string{"edge-3"}) {
		t.Fatalf("counting every node: %d of %d reached, held %v; want 3 of 6, held [edge-3]", wr, wl, wh)
	}
	ans, err := query(&sv1.FleetStatusQuery{Service: "web", ReachedGeneration: gen})
	if err != nil {
		t.Fatal(err)
	}
	sf := ans.GetServices()[0]
	if len(ans.GetServices()) != 1 || sf.GetReachedGeneration() != gen || sf.GetReached() != uint32(wr) || sf.GetLive() != uint32(wl) ||
		!slices.Equal(sf.GetReachedHeld(), wh) || sf.GetGeneration() != gen || sf.GetEpoch() != 1 {
		t.Fatalf("counts answer %v; counting every node: %d of %d reached, held %v", sf, wr, wl, wh)
	}
	if len(sf.GetWaves()) != 0 || len(sf.GetStaleNodes()) != 0 {
		t.Fatalf("a counts answer carries nodes: %v", sf)
	}

	// Counts are of one service.
	if _, err := query(&sv1.FleetStatusQuery{ReachedGeneration: gen}); err == nil || !strings.Contains(err.Error(), "reached_generation") {
		t.Fatalf("counts without a service: %v", err)
	}

	// The read API answers the same counts to ?reached=.
	base := "http://" + c.srv.HTTPAddr()
	var byHTTP sv1.FleetStatus
	if code, body := getAPI(t, fmt.Sprintf("%s/v1/fleet?service=web&reached=%d", base, gen), &byHTTP); code != http.StatusOK ||
		!proto.Equal(byHTTP.GetServices()[0], sf) {
		t.Fatalf("GET /v1/fleet?service=web&reached=%d: %d %s; want %v", gen, code, body, sf)
	}
	for path, want := range map[string]string{
		"/v1/fleet?service=web&reached=x": `reached="x": want a generation`,
		"/v1/fleet?service=web&reached=0": `reached="0": want a generation`,
		"/v1/fleet?reached=3":             "name it with service=",
	} {
		if code, body := getAPI(t, base+path, nil); code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Errorf("GET %s: %d %s; want 400 saying %q", path, code, body, want)
		}
	}
}

// BenchmarkFleet_WaitPoll is one --wait poll's work on the answering
// coordinator at 10,000 nodes: the whole fleet's views counted and encoded
// (what the poll asked for before reached_generation) against the counts.
func BenchmarkFleet_WaitPoll(b *testing.B) {
	green := map[string]uint32{"blue": 0, "green": 100}
	f := fleetOfStatuses(b, 10_000, func(i int) *sv1.AgentStatus {
		return &sv1.AgentStatus{Node: fmt.Sprintf("edge-%05d", i), Labels: map[string]string{"region": "eu", "tier": "main"},
			Services: []*sv1.ServiceStatus{{Service: "web", AppliedEpoch: 1, AppliedGeneration: 11 + uint64(i%2),
				Weights: green, ObservedWeights: green, ObservedMatches: true}}}
	})
	want := bus.Fence{Epoch: 1, Generation: 12}
	b.Run("views", func(b *testing.B) {
		b.ReportAllocs()
		var size int
		for b.Loop() {
			views := f.nodesFor("web")
			if r, _, _ := reachedByViews(views, want); r != 5000 {
				b.Fatalf("reached %d", r)
			}
			data, err := proto.Marshal(&sv1.FleetStatus{Services: []*sv1.ServiceFleet{{Service: "web", Waves: []*sv1.WaveNodes{{Wave: "-", Index: -1, Nodes: views}}}}})
			if err != nil {
				b.Fatal(err)
			}
			size = len(data)
		}
		b.ReportMetric(float64(size)/1024, "answer_KiB")
	})
	b.Run("counts", func(b *testing.B) {
		b.ReportAllocs()
		var size int
		for b.Loop() {
			r, live, held := f.Reached("web", want)
			if r != 5000 {
				b.Fatalf("reached %d", r)
			}
			data, err := proto.Marshal(&sv1.FleetStatus{Services: []*sv1.ServiceFleet{{Service: "web", ReachedGeneration: 12, Reached: uint32(r), Live: uint32(live), ReachedHeld: held}}})
			if err != nil {
				b.Fatal(err)
			}
			size = len(data)
		}
		b.ReportMetric(float64(size), "answer_bytes")
	})
}

// fleetOfStatuses is a fleet whose service web is at generation 12 of
// epoch 1, that heard status(i) from each of n nodes.
func fleetOfStatuses(b *testing.B, n int, status func(i int) *sv1.AgentStatus) *fleet {
	b.Helper()
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f := clockedFleet(&now)
	f.current = func(string) (bus.Fence, bool) { return bus.Fence{Epoch: 1, Generation: 12}, true }
	for i := range n {
		st := status(i)
		data, err := proto.Marshal(st)
		if err != nil {
			b.Fatal(err)
		}
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(st.GetNode()), Data: data})
	}
	return f
}

// BenchmarkFleet_RolloutCounts is the fleet part of a summary rollouts read
// at 10,000 nodes with 100 finished rollouts of the service: each rollout's
// converged, live and held counts, from the nodes' views (read once, as the
// summary did before) against the tallies.
func BenchmarkFleet_RolloutCounts(b *testing.B) {
	green := map[string]uint32{"blue": 0, "green": 100}
	f := fleetOfStatuses(b, 10_000, func(i int) *sv1.AgentStatus {
		return &sv1.AgentStatus{Node: fmt.Sprintf("edge-%05d", i), Labels: map[string]string{"region": "eu"},
			Services: []*sv1.ServiceStatus{{Service: "web", AppliedEpoch: 1, AppliedGeneration: 12,
				Weights: green, ObservedWeights: green, ObservedMatches: true}}}
	})
	const rollouts = 100
	b.Run("views", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			nodes := f.nodesFor("web")
			for g := range uint64(rollouts) {
				if a, _, _ := f.convergedService("web", nodes, bus.Fence{Epoch: 1, Generation: 12 - g}); g == 0 && a != 10_000 {
					b.Fatalf("converged %d", a)
				}
			}
		}
	})
	b.Run("tallies", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			for g := range uint64(rollouts) {
				if a, _, _ := f.ConvergedAt("web", bus.Fence{Epoch: 1, Generation: 12 - g}); g == 0 && a != 10_000 {
					b.Fatalf("converged %d", a)
				}
			}
		}
	})
}
