package coordinator

import (
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

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
