package coordinator

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/state"
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

// A rollout whose webhook names, by address, where the leader does not
// connect (cloud instance metadata by default; anything outside
// --webhook-networks when given) is refused when applied, naming the
// field, and nothing of it is committed.
func TestIntents_WebhookAtARefusedAddressIsRefusedNamingTheField(t *testing.T) {
	nc, url := startNATS(t)
	startCoordinatorWith(t, url, t.TempDir(), func(c *Config) {
		c.WebhookNetworks = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("169.254.0.0/16")}
	})
	hooked := func(id, name, url string) *sv1.Intent {
		in := applyIntent(id, name)
		in.GetApplyRollout().GetSpec().Hooks = &sv1.HooksSpec{Webhooks: []*sv1.Webhook{
			{Name: "ok", Point: sv1.HookPoint_HOOK_POINT_POST_ROLLOUT, Url: "https://hooks.example.com/done"},
			{Name: "steal", Point: sv1.HookPoint_HOOK_POINT_ROLLBACK, Url: url},
		}}
		return in
	}
	res := send(t, nc, hooked("i-1", "web-1", "http://192.168.1.1/"))
	if res.GetAccepted() || res.GetCode() != state.CodeInvalid ||
		!strings.Contains(res.GetError(), "spec.hooks.webhooks[1].url: destination 192.168.1.1 refused (outside the webhook networks)") {
		t.Fatalf("webhook outside the networks: %v", res)
	}
	// What the networks allow passes, link-local included when named.
	if res := send(t, nc, hooked("i-2", "web-2", "http://169.254.10.1/")); !res.GetAccepted() {
		t.Fatalf("webhook inside the networks: %v", res)
	}

	// The default refuses instance metadata only.
	nc, url = startNATS(t)
	startCoordinator(t, url, t.TempDir())
	for i, u := range []string{"http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://[fd00:ec2::254]/latest/api/token"} {
		res := send(t, nc, hooked(fmt.Sprintf("m-%d", i), fmt.Sprintf("web-m%d", i), u))
		if res.GetAccepted() || !strings.Contains(res.GetError(), "spec.hooks.webhooks[1].url: destination") {
			t.Fatalf("%s: %v", u, res)
		}
	}
	if res := send(t, nc, hooked("i-3", "web-3", "http://10.0.0.5:8080/page")); !res.GetAccepted() {
		t.Fatalf("webhook at a private address: %v", res)
	}
}
