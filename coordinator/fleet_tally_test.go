package coordinator

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The fleet's running tallies must say what counting every node's view
// says, whatever order statuses, silences and returns come in.
func TestFleet_TalliesAgreeWithCountingEveryNode(t *testing.T) {
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return now }
	f.epoch = func() uint64 { return 2 }
	// Generation 8 is newer than the current document: a node that holds
	// it is diverged.
	f.current = func(string) (bus.Fence, bool) { return bus.Fence{Epoch: 2, Generation: 7}, true }
	rng := rand.New(rand.NewPCG(13, 80))
	green := map[string]uint32{"blue": 0, "green": 100}
	blue := map[string]uint32{"blue": 100, "green": 0}
	for step := range 5000 {
		switch rng.IntN(10) {
		case 0:
			now = now.Add(time.Duration(rng.IntN(8000)) * time.Millisecond)
		case 1:
			// The bucket holds another document of a fence, then not.
			if rng.IntN(2) == 0 {
				f.setConflict("web", bus.Fence{Epoch: 2, Generation: uint64(5 + rng.IntN(3))})
			} else {
				f.clearConflict("web")
			}
		default:
			st := &sv1.AgentStatus{Node: fmt.Sprintf("edge-%d", rng.IntN(40))}
			for _, svc := range []string{"web", "api"} {
				if rng.IntN(3) == 0 {
					continue
				}
				ss := &sv1.ServiceStatus{Service: svc, AppliedGeneration: uint64(5 + rng.IntN(3)), AppliedEpoch: uint64(rng.IntN(3)),
					Weights: green, ObservedWeights: green, ObservedMatches: rng.IntN(4) > 0}
				if rng.IntN(5) == 0 {
					ss.ObservedWeights = blue // restarted from its config
				}
				if rng.IntN(6) == 0 { // a failed pre-traffic hook, at this generation or an earlier one
					ss.HookRuns = []*sv1.HookRun{{Point: hookPointPreTraffic, State: hookStateFailed, Generation: ss.GetAppliedGeneration() - uint64(rng.IntN(2))}}
				}
				if rng.IntN(8) == 0 { // the local guard moved it back
					ss.LocalRollback = &sv1.LocalRollback{Generation: ss.GetAppliedGeneration()}
				}
				st.Services = append(st.Services, ss)
			}
			b, err := proto.Marshal(st)
			if err != nil {
				t.Fatal(err)
			}
			f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(st.GetNode()), Data: b})
		}
		for _, svc := range []string{"web", "api"} {
			views := f.nodesFor(svc)
			var wantStale []string
			for _, v := range views {
				if v.GetStale() {
					wantStale = append(wantStale, v.GetNode())
				}
			}
			if got := f.Stale(svc); !slices.Equal(got, wantStale) {
				t.Fatalf("step %d: Stale(%s) = %v, counting every node: %v", step, svc, got, wantStale)
			}
			for gen := uint64(4); gen <= 8; gen++ {
				// The controller counts the nodes a failed hook holds (the
				// rollout goes on without them); the views do not.
				wa, wl, wh := f.convergedService(svc, views, bus.Fence{Epoch: 2, Generation: gen})
				wa += len(wh)
				if a, l := f.Convergence(svc, gen); a != wa || l != wl {
					t.Fatalf("step %d: Convergence(%s, %d) = %d of %d live, counting every node: %d of %d", step, svc, gen, a, l, wa, wl)
				}
				for epoch := uint64(1); epoch <= 2; epoch++ {
					want := bus.Fence{Epoch: epoch, Generation: gen}
					wa, wl, wh := f.convergedService(svc, views, want)
					if a, l, h := f.ConvergedAt(svc, want); a != wa || l != wl || !slices.Equal(h, wh) {
						t.Fatalf("step %d: ConvergedAt(%s, %v) = %d of %d live, held %v; counting every node: %d of %d, held %v", step, svc, want, a, l, h, wa, wl, wh)
					}
					wr, wl, wh := reachedByViews(views, want)
					if r, l, h := f.Reached(svc, want); r != wr || l != wl || !slices.Equal(h, wh) {
						t.Fatalf("step %d: Reached(%s, %v) = %d of %d live, held %v; counting every node: %d of %d, held %v", step, svc, want, r, l, h, wr, wl, wh)
					}
				}
			}
		}
	}
	if f.heardHead > 1024 && f.heardHead*2 > len(f.heard) {
		t.Errorf("the arrivals already looked at are kept: %d of %d", f.heardHead, len(f.heard))
	}
}

// reachedByViews is the rule a client of the nodes' views counts by
// (cmd/switchyard: --wait): live nodes not diverged whose proxies do want
// or a newer document, and those of them held by a failed hook, sorted.
func reachedByViews(views []*sv1.NodeView, want bus.Fence) (reached, live int, held []string) {
	for _, n := range views {
		if n.GetStale() {
			continue
		}
		live++
		if !n.GetDiverged() && nodeFence(n).Compare(want) >= 0 && NodeDoes(n) {
			reached++
			if NodeHeld(n) {
				held = append(held, n.GetNode())
			}
		}
	}
	slices.Sort(held)
	return reached, live, held
}

// The diverged gauge follows nodes joining and leaving the diverged set at
// once, and diverged nodes going stale within a second of statuses; between
// those a status does not walk the set.
func TestFleet_DivergedCountFollowsChangesWithoutWalkingTheSetOnEveryStatus(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	f := newFleet(15*time.Second, m, slog.New(slog.DiscardHandler))
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return now }
	f.epoch = func() uint64 { return 1 }
	f.current = func(string) (bus.Fence, bool) { return bus.Fence{Epoch: 1, Generation: 10}, true }
	report := func(node string, gen uint64) {
		t.Helper()
		st := &sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{{Service: "web", AppliedEpoch: 1, AppliedGeneration: gen}}}
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(node), Data: b})
	}
	gauge := func() float64 {
		t.Helper()
		var d dto.Metric
		if err := m.diverged.WithLabelValues("web").Write(&d); err != nil {
			t.Fatal(err)
		}
		return d.GetGauge().GetValue()
	}
	for i := range 3 {
		report(fmt.Sprintf("ahead-%d", i), 12) // a newer lineage's document
	}
	report("current", 10)
	if g := gauge(); g != 3 {
		t.Fatalf("diverged = %v, want 3", g)
	}
	counted := f.divergedCountedAt
	now = now.Add(100 * time.Millisecond)
	report("current", 10)
	if f.divergedCountedAt != counted {
		t.Errorf("a status that changed nothing within a second recounted the diverged nodes")
	}
	report("ahead-0", 10) // caught up: leaves the set at once
	if g := gauge(); g != 2 {
		t.Fatalf("diverged = %v after a node caught up, want 2", g)
	}
	// ahead-1 and ahead-2 fall silent: stale after 15 s, and the next
	// status a second after the last count says so.
	for range 20 {
		now = now.Add(time.Second)
		report("current", 10)
		report("ahead-0", 10)
	}
	if g := gauge(); g != 0 {
		t.Fatalf("diverged = %v once the diverged nodes went stale, want 0", g)
	}
}

// A service's diverged nodes going stale bring its gauge down even when the
// statuses still heard are other services' nodes'.
func TestFleet_DivergedCountFallsWhenOnlyOtherServicesReport(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	f := newFleet(15*time.Second, m, slog.New(slog.DiscardHandler))
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return now }
	f.current = func(string) (bus.Fence, bool) { return bus.Fence{Epoch: 1, Generation: 10}, true }
	report := func(node, service string, gen uint64) {
		t.Helper()
		b, err := proto.Marshal(&sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{{Service: service, AppliedEpoch: 1, AppliedGeneration: gen}}})
		if err != nil {
			t.Fatal(err)
		}
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(node), Data: b})
	}
	report("web-ahead", "web", 12)
	if g := testutil.ToFloat64(m.diverged.WithLabelValues("web")); g != 1 {
		t.Fatalf("diverged{web} = %v, want 1", g)
	}
	for range 20 {
		now = now.Add(time.Second)
		report("api-1", "api", 10)
	}
	if g := testutil.ToFloat64(m.diverged.WithLabelValues("web")); g != 0 {
		t.Fatalf("diverged{web} = %v once its diverged node went stale, heard only api's nodes since, want 0", g)
	}
}

// A coordinator that has taken status for less than the stale period cannot
// tell a service no node runs from one it has not heard from yet.
func TestFleet_SettledAfterListeningForTheStalePeriod(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	f.now = func() time.Time { return now }
	if f.Settled() {
		t.Fatal("settled before listening")
	}
	f.listening()
	now = now.Add(14 * time.Second)
	if f.Settled() {
		t.Fatal("settled 14 s after it began to listen")
	}
	now = now.Add(time.Second)
	if !f.Settled() {
		t.Fatal("not settled after the stale period")
	}
}

// A coordinator that asked every agent for its status takes the nodes it
// has heard from for the fleet once the agents had time to answer, not
// before.
func TestFleet_SettledSoonAfterAskingTheFleet(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	f.now = func() time.Time { return now }
	f.listening()
	f.asked()
	if f.Settled() {
		t.Fatal("settled the moment it asked")
	}
	now = now.Add(statusAskGrace - time.Millisecond)
	if f.Settled() {
		t.Fatal("settled before the agents had the grace to answer")
	}
	now = now.Add(time.Millisecond)
	if !f.Settled() {
		t.Fatalf("not settled %s after asking", statusAskGrace)
	}
}

// A diverged node that stops running the service (its config dropped it,
// or renamed it) no longer holds that service's document: the gauge must
// not count it for good while the node keeps reporting its other services.
func TestFleet_DivergedNodeThatDropsTheServiceLeavesItsCount(t *testing.T) {
	m := newMetrics(prometheus.NewRegistry())
	f := newFleet(15*time.Second, m, slog.New(slog.DiscardHandler))
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return now }
	f.current = func(string) (bus.Fence, bool) { return bus.Fence{Epoch: 1, Generation: 10}, true }
	report := func(node string, services map[string]uint64) {
		t.Helper()
		st := &sv1.AgentStatus{Node: node}
		for svc, gen := range services {
			st.Services = append(st.Services, &sv1.ServiceStatus{Service: svc, AppliedEpoch: 1, AppliedGeneration: gen})
		}
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(node), Data: b})
	}
	report("edge-1", map[string]uint64{"web": 12, "api": 10})
	if g := testutil.ToFloat64(m.diverged.WithLabelValues("web")); g != 1 {
		t.Fatalf("diverged{web} = %v, want 1", g)
	}
	report("edge-1", map[string]uint64{"api": 10}) // web left its config
	for range 3 {
		now = now.Add(time.Second)
		report("edge-1", map[string]uint64{"api": 10})
	}
	if g := testutil.ToFloat64(m.diverged.WithLabelValues("web")); g != 0 {
		t.Errorf("diverged{web} = %v after the node stopped running web, want 0", g)
	}
}
