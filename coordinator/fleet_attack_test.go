package coordinator

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// One node's credentials may say anything in its own status, but what the
// coordinator keeps of it is what its newest status says: a stolen node
// naming new services in every status (a few thousand statuses of a
// thousand made-up names each) leaves the coordinator the counts of its
// newest services, not of every name it ever sent.
func TestFleet_ANodesMadeUpServicesAreNotKeptPastItsNextStatus(t *testing.T) {
	b := startSecuredBus(t)
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	coord := b.connect(t, bus.RoleCoordinator, "c1")
	if _, err := coord.Subscribe(bus.StatusAll(), f.handleStatus); err != nil {
		t.Fatal(err)
	}
	if err := coord.Flush(); err != nil {
		t.Fatal(err)
	}
	thief := b.connect(t, bus.RoleAgent, "edge-1")
	const statuses, perStatus = 50, 200
	for i := range statuses {
		st := &sv1.AgentStatus{Node: "edge-1"}
		for j := range perStatus {
			st.Services = append(st.Services, &sv1.ServiceStatus{Service: fmt.Sprintf("fake-%d-%d", i, j), AppliedGeneration: 1})
		}
		data, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if err := thief.Publish(bus.StatusSubject("edge-1"), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := thief.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every status taken", 10*time.Second, func() bool { return testutil.ToFloat64(f.metrics.statuses) == statuses })
	f.mu.RLock()
	kept := len(f.tallies)
	f.mu.RUnlock()
	if kept > perStatus {
		t.Fatalf("the coordinator keeps counts of %d services after %d statuses of %d services each from one node, want at most %d: every name a node ever sent stays in memory",
			kept, statuses, perStatus, perStatus)
	}
	if _, live := f.Convergence(fmt.Sprintf("fake-%d-0", statuses-1), 1); live != 1 {
		t.Fatalf("the newest status's service has %d live nodes, want 1", live)
	}
}

// A drill's report takes from the fleet when each target first reported
// its fault. A node's status may name any drill: what the coordinator
// keeps is the faults of drills that node is a target of, not one entry
// for every name a stolen node's credentials send.
func TestFleet_FaultsOfDrillsANodeIsNoTargetOfAreNotKept(t *testing.T) {
	b := startSecuredBus(t)
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	start := time.Now().Add(-time.Minute)
	f.drillTarget = func(drill, node string) (time.Time, bool) { return start, drill == "d1" && node == "edge-1" }
	coord := b.connect(t, bus.RoleCoordinator, "c1")
	if _, err := coord.Subscribe(bus.StatusAll(), f.handleStatus); err != nil {
		t.Fatal(err)
	}
	if err := coord.Flush(); err != nil {
		t.Fatal(err)
	}
	thief := b.connect(t, bus.RoleAgent, "edge-1")
	const statuses, perStatus = 20, 500
	for i := range statuses {
		// Dated a day before the drill was to start.
		st := &sv1.AgentStatus{Node: "edge-1", Faults: []*sv1.ActiveFault{{Drill: "d1", Since: timestamppb.New(start.Add(-24 * time.Hour))}}}
		for j := range perStatus {
			st.Faults = append(st.Faults, &sv1.ActiveFault{Drill: fmt.Sprintf("fake-%d-%d", i, j)})
		}
		data, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		if err := thief.Publish(bus.StatusSubject("edge-1"), data); err != nil {
			t.Fatal(err)
		}
	}
	if err := thief.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every status taken", 10*time.Second, func() bool { return testutil.ToFloat64(f.metrics.statuses) == statuses })
	f.mu.RLock()
	kept := len(f.faultSeen)
	f.mu.RUnlock()
	if kept != 1 {
		t.Fatalf("the coordinator keeps %d (node, drill) faults after %d statuses naming %d made-up drills each, want 1 (edge-1 in d1)", kept, statuses, perStatus)
	}
	at, ok := f.FaultSeen("edge-1", "d1")
	if !ok {
		t.Fatal("the fault of the drill edge-1 is a target of was not kept")
	}
	if !at.Equal(start) {
		t.Fatalf("the fault is taken as injected at %s, want the drill's start %s: a node's backdated since moves the report's first injection", at, start)
	}
}
