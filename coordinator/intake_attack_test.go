package coordinator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// One node's credentials may publish its health for any service, tagged
// with any rollout and dated in the past. The store keeps each rollout's
// reports until the sequential tests read them and each service's seconds
// for the windows: reports of rollouts no coordinator follows (made up, or
// long finished) and services nobody reports any more are let go once
// they are older than anything read, instead of staying for good, one
// entry for every name the stolen credentials sent.
func TestIntake_ReportsOfMadeUpRolloutsAndServicesAreLetGo(t *testing.T) {
	b := startSecuredBus(t)
	store := analysis.NewStore()
	in, m, _ := testIntake(t, store, time.Now)
	runIntake(t, in)
	coord := b.connect(t, bus.RoleCoordinator, "c1")
	if _, err := coord.Subscribe(bus.TelemetryAll(), in.handle); err != nil {
		t.Fatal(err)
	}
	if err := coord.Flush(); err != nil {
		t.Fatal(err)
	}
	thief := b.connect(t, bus.RoleAgent, "edge-1")
	send := func(service, rollout string, end time.Time) {
		t.Helper()
		data, err := proto.Marshal(&sv1.HealthReport{Node: "edge-1", Service: service, RolloutId: rollout, Generation: 7,
			WindowEnd: timestamppb.New(end), Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 10}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := thief.Publish(bus.TelemetrySubject(service, "edge-1"), data); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().Truncate(time.Second)
	const made = 2000
	for i := range made {
		// An hour ago and after, one second and one name each.
		send(fmt.Sprintf("svc-%d", i), fmt.Sprintf("r-%d", i), now.Add(-time.Hour+time.Duration(i)*time.Second))
	}
	if err := thief.Flush(); err != nil {
		t.Fatal(err)
	}
	waitMerged(t, m, made, m.telemetry, made, "merged")
	// Then its own service, now: the newest report the store holds.
	send("web", "r-web", now)
	if err := thief.Flush(); err != nil {
		t.Fatal(err)
	}
	waitMerged(t, m, made+1, m.telemetry, made+1, "merged")
	size := store.Size()
	if size.Reports > 1 || size.Seconds > 2 {
		t.Fatalf("after %d reports of made-up rollouts and services dated up to %v ago and one report now, the store keeps %d reports and %d (service, second) series; want those of the newest report alone (1 and 2)",
			made, time.Hour-made*time.Second, size.Reports, size.Seconds)
	}
	if svcs := store.Services(); len(svcs) != 1 || svcs[0] != "web" {
		t.Fatalf("the store follows %d services, want web alone", len(svcs))
	}
}
