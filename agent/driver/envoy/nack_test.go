package envoy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/switchyard/switchyard/agent/driver"
)

// adsClient is a raw ADS stream standing in for an Envoy or a grpc-go
// client whose every step the test chooses. One goroutine reads the stream
// into responses.
type adsClient struct {
	t         *testing.T
	node      *core.Node
	stream    discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	responses chan *discovery.DiscoveryResponse
	// close ends the stream, as a client process that exits.
	close func()
}

func newADSClient(t *testing.T, addr, node string) *adsClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &adsClient{t: t, node: &core.Node{Id: node}, stream: stream, responses: make(chan *discovery.DiscoveryResponse, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			c.responses <- resp
		}
	}()
	var once sync.Once
	c.close = func() { once.Do(func() { cancel(); <-done; conn.Close() }) }
	t.Cleanup(c.close)
	return c
}

func (c *adsClient) send(req *discovery.DiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatal(err)
	}
}

// recv is the next response, or nil when none comes within d.
func (c *adsClient) recv(d time.Duration) *discovery.DiscoveryResponse {
	select {
	case r := <-c.responses:
		return r
	case <-time.After(d):
		return nil
	}
}

// nack refuses resp.
func (c *adsClient) nack(resp *discovery.DiscoveryResponse, names []string, accepted, why string) {
	c.t.Helper()
	c.send(&discovery.DiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResourceNames: names, VersionInfo: accepted,
		ResponseNonce: resp.GetNonce(), ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: why}})
}

// TestEnvoy_ANACKedConfigIsNotSentAgainUntilItChanges: a client that
// refuses a config refuses it again each time it gets it. The server must
// not answer a NACK with the same config (a NACK storm: both sides busy,
// the agent's log and nacks counter flooded); the next config that
// changes something is sent at once.
func TestEnvoy_ANACKedConfigIsNotSentAgainUntilItChanges(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	c := newADSClient(t, f.sec.XDS, "refuser")
	c.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"web"}})
	first := c.recv(5 * time.Second)
	if first == nil {
		t.Fatal("no listener response")
	}
	// The client refuses every response it gets, as Envoy and grpc-go do
	// with a config they cannot take.
	c.nack(first, []string{"web"}, "", "listener web: test refusal")
	sent := 1
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		resp := c.recv(time.Until(deadline))
		if resp == nil {
			break
		}
		sent++
		if resp.GetVersionInfo() == first.GetVersionInfo() {
			c.nack(resp, []string{"web"}, "", "listener web: test refusal")
		}
	}
	if sent > 1 {
		t.Errorf("the refused listener config was sent %d times within a second, want once", sent)
	}
	if got := testutil.ToFloat64(d.m.nacks.WithLabelValues("listener")); got > 1 {
		t.Errorf("switchyard_agent_xds_nacks_total{type=listener} = %v after one refusal of one config, want 1", got)
	}
	if h := d.Health(); h.OK || !strings.Contains(h.Reason, "refuser refused the listener config") {
		t.Errorf("health %+v, want the refusal", h)
	}
	// A request that only renews the subscription, carrying the version
	// the client still has, does not clear the refusal.
	c.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"web"}, ResponseNonce: first.GetNonce()})
	// The server answers it (after taking it in) with what it serves.
	resp := c.recv(5 * time.Second)
	if resp == nil || resp.GetVersionInfo() != first.GetVersionInfo() {
		t.Fatalf("answer to the renewal: %v, want version %s again", resp, first.GetVersionInfo())
	}
	c.nack(resp, []string{"web"}, "", "listener web: test refusal")
	if h := d.Health(); h.OK || !strings.Contains(h.Reason, "refuser refused the listener config") {
		t.Errorf("health %+v after a renewal without accepting, want the refusal still", h)
	}
	// A new config is offered at once.
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	next := c.recv(5 * time.Second)
	for next != nil && next.GetVersionInfo() == first.GetVersionInfo() {
		next = c.recv(5 * time.Second)
	}
	if next == nil {
		t.Fatal("the changed config was not sent after the refusal")
	}
	c.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"web"},
		VersionInfo: next.GetVersionInfo(), ResponseNonce: next.GetNonce()})
	waitFor(t, 5*time.Second, "the refusal cleared by accepting the next config", func() error {
		if h := d.Health(); strings.Contains(h.Reason, "refused") {
			return errorString(h.Reason)
		}
		return nil
	})
	if got := testutil.ToFloat64(d.m.nacks.WithLabelValues("listener")); got != 1 {
		t.Errorf("switchyard_agent_xds_nacks_total{type=listener} = %v, want 1: one config refused", got)
	}
}

type errorString string

func (e errorString) Error() string { return string(e) }

// TestEnvoy_AnEnvoyIsNoClientOfTheServicesItDoesNotRoute: an Envoy asks
// for every listener (a wildcard) but routes only the services whose
// listener has an address (envoyListen); a gRPC service on the same xDS
// address must not count it as a client that accepted its routing.
func TestEnvoy_AnEnvoyIsNoClientOfTheServicesItDoesNotRoute(t *testing.T) {
	f := newFixture(t)
	f.sec.EnvoyListen = freeAddr(t)
	web := f.open(t)
	shopSec := &Section{XDS: f.sec.XDS, Endpoints: f.sec.Endpoints}
	shopDrv, err := shopSec.Open(driver.Env{Service: "shop", Node: "n1", StateDir: t.TempDir(), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	shop := shopDrv.(*Driver)
	t.Cleanup(func() { shop.Close() })
	for _, d := range []*Driver{web, shop} {
		if err := d.Apply(context.Background(), map[string]uint32{"blue": 100, "green": 0}); err != nil {
			t.Fatal(err)
		}
	}
	envoy := newADSClient(t, f.sec.XDS, "edge-1-envoy")
	envoy.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType})
	lds := envoy.recv(5 * time.Second)
	if lds == nil || len(lds.GetResources()) != 2 {
		t.Fatalf("wildcard listener response %v, want both listeners", lds)
	}
	envoy.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, VersionInfo: lds.GetVersionInfo(), ResponseNonce: lds.GetNonce()})
	envoy.send(&discovery.DiscoveryRequest{TypeUrl: resource.RouteType, ResourceNames: []string{"web-route"}})
	rds := envoy.recv(5 * time.Second)
	if rds == nil {
		t.Fatal("no route response")
	}
	envoy.send(&discovery.DiscoveryRequest{TypeUrl: resource.RouteType, ResourceNames: []string{"web-route"}, VersionInfo: rds.GetVersionInfo(), ResponseNonce: rds.GetNonce()})
	waitObserved(t, web, map[string]uint32{"blue": 100, "green": 0})
	if h := shop.Health(); h.OK || !strings.Contains(h.Reason, `no xDS client has asked for listener "shop"`) {
		t.Errorf("shop health %+v with only an Envoy routing web, want no client", h)
	}
	if obs, err := shop.Observe(context.Background()); err == nil {
		t.Errorf("shop observed %v from an Envoy that never asked for its routes", obs.Weights)
	}
}

// TestEnvoy_ANewStreamOfANodeHasAcceptedNothingYet: an Envoy restarted
// (hot, or before the server saw its old connection end) opens a new
// stream under the same node id. When the old stream ends, what it
// accepted goes with it: the new process has not accepted the routing
// until it says so.
func TestEnvoy_ANewStreamOfANodeHasAcceptedNothingYet(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	old := newADSClient(t, f.sec.XDS, "edge-1-envoy")
	for _, sub := range []struct{ typ, name string }{{resource.ListenerType, "web"}, {resource.RouteType, "web-route"}} {
		old.send(&discovery.DiscoveryRequest{TypeUrl: sub.typ, ResourceNames: []string{sub.name}})
		resp := old.recv(5 * time.Second)
		if resp == nil {
			t.Fatalf("no %s response", sub.typ)
		}
		old.send(&discovery.DiscoveryRequest{TypeUrl: sub.typ, ResourceNames: []string{sub.name}, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	}
	waitObserved(t, d, map[string]uint32{"blue": 100, "green": 0})

	restarted := newADSClient(t, f.sec.XDS, "edge-1-envoy")
	restarted.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"web"}})
	if restarted.recv(5*time.Second) == nil {
		t.Fatal("no listener response on the new stream")
	}
	old.close()
	waitFor(t, 5*time.Second, "the old stream's acceptance gone with it", func() error {
		if obs, err := d.Observe(context.Background()); err == nil {
			return fmt.Errorf("observed %v: only the closed stream accepted routes", obs.Weights)
		}
		return nil
	})
}

// TestEnvoy_AClientsWordsAreKeptShort: a client's node id and refusal text
// reach the service's health, the agent's status on the bus and its log; a
// client sending megabytes must not make the status too big to publish.
func TestEnvoy_AClientsWordsAreKeptShort(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	c := newADSClient(t, f.sec.XDS, strings.Repeat("n", 100_000))
	c.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{"web"}})
	first := c.recv(5 * time.Second)
	if first == nil {
		t.Fatal("no listener response")
	}
	c.nack(first, []string{"web"}, "", strings.Repeat("é", 500_000))
	waitFor(t, 5*time.Second, "the refusal", func() error {
		if h := d.Health(); !strings.Contains(h.Reason, "refused the listener config") {
			return errorString(h.Reason)
		}
		return nil
	})
	if h := d.Health(); len(h.Reason) > 1024 || !utf8.ValidString(h.Reason) {
		t.Errorf("health reason of %d bytes (valid UTF-8: %v), want at most 1 KiB", len(h.Reason), utf8.ValidString(h.Reason))
	}
}
