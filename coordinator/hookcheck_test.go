package coordinator

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestCoordinator_AgentHookCheckNamesFieldAndNodes(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	f.now = func() time.Time { return now }
	s := &Server{fleet: f}
	apply := func(hooks ...string) *sv1.Intent {
		return &sv1.Intent{Id: "i", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
			Name: "r", Service: "web", Hooks: &sv1.HooksSpec{Agent: &sv1.AgentHooks{PreTraffic: hooks}}}}}}
	}
	status := func(node string, hooks ...string) {
		b, _ := proto.Marshal(&sv1.AgentStatus{Node: node, Hooks: hooks, Services: []*sv1.ServiceStatus{{Service: "web"}}})
		f.handleStatus(&nats.Msg{Subject: bus.StatusSubject(node), Data: b})
	}

	err := s.checkAgentHooks(apply("warm"))
	if !errors.Is(err, spec.ErrInvalid) || !strings.Contains(err.Error(), `spec.hooks.agent.preTraffic[0]: "warm" cannot be checked: no live node runs service "web"`) {
		t.Fatalf("no live node: %v", err)
	}
	status("edge-1", "warm")
	status("edge-2")
	status("edge-3", "flush")
	err = s.checkAgentHooks(apply("warm"))
	if err == nil || !strings.Contains(err.Error(), `spec.hooks.agent.preTraffic[0]: hook "warm" is not in the agent config of node(s) edge-2, edge-3`) {
		t.Fatalf("missing on two nodes: %v", err)
	}
	if err := s.checkAgentHooks(apply()); err != nil {
		t.Fatalf("a spec naming no agent hook: %v", err)
	}
	// A silent node is not asked.
	now = now.Add(time.Minute)
	status("edge-1", "warm")
	if err := s.checkAgentHooks(apply("warm")); err != nil {
		t.Fatalf("stale nodes counted: %v", err)
	}
}
