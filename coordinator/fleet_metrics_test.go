package coordinator

import (
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestFleetMetrics_CountLiveAndStaleNodesPerService(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFleet(15*time.Second, newMetrics(reg), slog.New(slog.DiscardHandler))
	if err := reg.Register(fleetCollector{f}); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	f.now = func() time.Time { return now }
	status := func(node string, services ...string) {
		st := &sv1.AgentStatus{Node: node}
		for _, s := range services {
			st.Services = append(st.Services, &sv1.ServiceStatus{Service: s})
		}
		b, err := proto.Marshal(st)
		if err != nil {
			t.Fatal(err)
		}
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(node), Data: b})
	}
	status("edge-1", "web", "api")
	status("edge-2", "web")
	now = now.Add(10 * time.Second)
	status("edge-3", "web")
	now = now.Add(10 * time.Second) // edge-1 and edge-2 silent for 20 s
	f.handleStatus(&nats.Msg{Subject: bus.StatusSubject("edge-1"), Data: []byte("garbage")})
	// edge-2's credentials speaking for edge-1: refused, edge-1 stays stale.
	forged, _ := proto.Marshal(&sv1.AgentStatus{Node: "edge-1", Services: []*sv1.ServiceStatus{{Service: "web"}, {Service: "api"}}})
	f.handleStatus(&nats.Msg{Subject: bus.StatusSubject("edge-2"), Data: forged})
	f.handleStatus(&nats.Msg{Subject: bus.StatusSubject("edge-10"), Data: forged})
	for reason, want := range map[string]float64{"malformed": 1, "wrong_subject": 2} {
		if got := testutil.ToFloat64(f.metrics.statusRejected.WithLabelValues(reason)); got != want {
			t.Errorf("switchyard_coordinator_agent_status_rejected_total{reason=%q} = %v, want %v", reason, got, want)
		}
	}

	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != "switchyard_coordinator_nodes" {
			continue
		}
		for _, m := range fam.GetMetric() {
			var service, state string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "service":
					service = l.GetValue()
				case "state":
					state = l.GetValue()
				}
			}
			got[service+"/"+state] = m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{"web/live": 1, "web/stale": 2, "api/live": 0, "api/stale": 1}
	if len(got) != len(want) {
		t.Fatalf("switchyard_coordinator_nodes = %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("switchyard_coordinator_nodes{%s} = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}
}
