package coordinator

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Nodes come and go under new names (autoscaling). A node that stopped
// for good used to stay counted stale, listed in every fleet view and
// every rollback's "not heard from" line, and keep the stale gauge (and
// the SwitchyardNodeStale alert) up until the coordinator restarted. It
// is forgotten once silent for DefaultForgetAfter; a node silent for less
// stays listed as stale.
func TestFleet_ForgetsANodeSilentForADay(t *testing.T) {
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	now := time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return now }
	// Every node is a target of drill-1 (faults of others are not kept).
	f.drillTarget = func(drill, _ string) (time.Time, bool) { return time.Time{}, drill == "drill-1" }
	status := func(node string, drill string) {
		t.Helper()
		w := map[string]uint32{"blue": 100, "green": 0}
		st := &sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{{Service: "web", AppliedGeneration: 7, AppliedEpoch: 1,
			Weights: w, ObservedWeights: w, ObservedMatches: true}}}
		if drill != "" {
			st.Faults = []*sv1.ActiveFault{{Drill: drill, Since: timestamppb.New(now)}}
		}
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(node), Data: b})
	}
	// A day of autoscaling: every hour ten nodes leave and ten new ones
	// come; edge-keep reports all along.
	for h := range 30 {
		for i := range 10 {
			status(fmt.Sprintf("edge-%d-%d", h, i), "drill-1")
		}
		for s := 0; s < 3600; s += 5 {
			status("edge-keep", "")
			now = now.Add(5 * time.Second)
		}
	}
	stale := f.Stale("web")
	if len(stale) != 240 {
		t.Fatalf("%d nodes listed stale; want the 240 of the last 24 hours, not the 300 ever seen", len(stale))
	}
	if !slices.Contains(stale, "edge-6-0") || slices.Contains(stale, "edge-5-9") {
		t.Fatalf("listed stale: %v; want edge-6-0 (silent for a day) and not edge-5-9 (for longer)", stale)
	}
	if n := f.nodeCounts()["web"]; n.live != 1 || n.stale != 240 {
		t.Fatalf("gauge: %d live, %d stale; want 1 and 240", n.live, n.stale)
	}
	if got := len(f.nodesFor("web")); got != 241 {
		t.Fatalf("fleet view lists %d nodes; want 241", got)
	}
	f.mu.RLock()
	nodes, faults := len(f.nodes), len(f.faultSeen)
	f.mu.RUnlock()
	if nodes != 241 || faults != 240 {
		t.Fatalf("the fleet holds %d nodes and %d fault sightings; want 241 and 240", nodes, faults)
	}
	// The last node goes silent too: after a day nothing is left.
	now = now.Add(DefaultForgetAfter + time.Minute)
	if got := f.Stale("web"); len(got) != 0 {
		t.Fatalf("a day later %d nodes still listed stale", len(got))
	}
	if _, ok := f.nodeCounts()["web"]; ok {
		t.Fatal("a service whose nodes were all forgotten still has a gauge")
	}
}

func TestCoordinator_ForgetNodesAfterIsCheckedAgainstTheStalePeriod(t *testing.T) {
	for _, tc := range []struct {
		forget time.Duration
		want   string
	}{
		{-time.Hour, "--forget-nodes-after: -1h0m0s is negative"},
		{time.Second, "--forget-nodes-after: 1s is shorter than the stale period 15s"},
	} {
		c := &Config{NodeID: "c1", DataDir: t.TempDir(), BootstrapExpect: 1, ForgetAfter: tc.forget}
		err := c.setDefaults()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("forget after %s: %v; want an error saying %q", tc.forget, err, tc.want)
		}
	}
	c := &Config{NodeID: "c1", DataDir: t.TempDir(), BootstrapExpect: 1}
	if err := c.setDefaults(); err != nil || c.ForgetAfter != DefaultForgetAfter {
		t.Fatalf("default: %v, %s", err, c.ForgetAfter)
	}
}
