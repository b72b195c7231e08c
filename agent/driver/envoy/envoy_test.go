package envoy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/switchyard/switchyard/agent/driver"
)

// backend is a real gRPC server that names itself in a response header and
// can be told to fail.
type backend struct {
	name string
	addr string
	fail atomic.Bool
	// slowEvery > 0 delays every slowEvery-th RPC by slowBy.
	slowEvery, calls atomic.Int64
	slowBy           time.Duration
	srv              *grpc.Server
}

func startBackend(t testing.TB, name string) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{name: name, addr: ln.Addr().String()}
	b.srv = grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := grpc.SetHeader(ctx, metadata.Pairs("x-backend", b.name)); err != nil {
			return nil, err
		}
		if every := b.slowEvery.Load(); every > 0 && b.calls.Add(1)%every == 0 {
			time.Sleep(b.slowBy)
		}
		if b.fail.Load() {
			return nil, grpcstatus.Error(codes.Internal, b.name+" fails")
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(b.srv, health.NewServer())
	go b.srv.Serve(ln)
	t.Cleanup(b.srv.Stop)
	return b
}

// freeAddr is a loopback address with a port free now.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

type fixture struct {
	sec      *Section
	env      driver.Env
	reg      *prometheus.Registry
	blue     *backend
	green    *backend
	stateDir string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{blue: startBackend(t, "blue"), green: startBackend(t, "green"), stateDir: t.TempDir()}
	f.sec = &Section{
		XDS:       freeAddr(t),
		Endpoints: map[string][]string{"blue": {f.blue.addr}, "green": {f.green.addr}},
	}
	if errs := f.sec.Validate(); len(errs) > 0 {
		t.Fatal(errs)
	}
	f.reg = prometheus.NewRegistry()
	f.env = driver.Env{Service: "web", Node: "n1", StateDir: f.stateDir,
		Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"service": "web"}, f.reg)}
	return f
}

func (f *fixture) open(t *testing.T) *Driver {
	t.Helper()
	d, err := f.sec.Open(f.env)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.(*Driver)
}

// bootstrap is a grpc-go xDS bootstrap pointing at the driver's server.
func bootstrap(xdsAddr, node string) []byte {
	return fmt.Appendf(nil, `{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":%q}}`, xdsAddr, node)
}

// dialXDS is a proxyless gRPC client of the service, resolving it through
// the driver's xDS server.
func dialXDS(t testing.TB, xdsAddr, node string) *grpc.ClientConn {
	t.Helper()
	rb, err := xds.NewXDSResolverWithConfigForTesting(bootstrap(xdsAddr, node))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///web", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// call makes one RPC and says which backend answered.
func call(ctx context.Context, cc *grpc.ClientConn) (string, error) {
	var md metadata.MD
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
	name := ""
	if v := md.Get("x-backend"); len(v) > 0 {
		name = v[0]
	}
	return name, err
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitObserved polls Observe until every client accepted want.
func waitObserved(t *testing.T, d *Driver, want map[string]uint32) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("clients accept %v", want), func() error {
		obs, err := d.Observe(context.Background())
		if err != nil {
			return err
		}
		for b, w := range want {
			if obs.Weights[b] != w {
				return fmt.Errorf("observed %v", obs.Weights)
			}
		}
		return nil
	})
}

func count(t *testing.T, cc *grpc.ClientConn, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		name, err := call(context.Background(), cc)
		if err != nil {
			t.Fatalf("RPC failed: %v", err)
		}
		got[name]++
	}
	return got
}

func TestEnvoy_CanarySplitOnTheWireAndLoadReports(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if h := d.Health(); h.OK || !strings.Contains(h.Reason, "no xDS client") {
		t.Fatalf("health with no client = %+v, want not OK naming the missing client", h)
	}
	if got := testutil.ToFloat64(d.m.healthy); got != 0 {
		t.Errorf("switchyard_agent_xds_healthy with no client = %v, want 0", got)
	}
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 90, "green": 10}); err != nil {
		t.Fatal(err)
	}
	cc := dialXDS(t, f.sec.XDS, "client-1")
	if _, err := call(context.Background(), cc); err != nil {
		t.Fatalf("first RPC: %v", err)
	}
	waitObserved(t, d, map[string]uint32{"blue": 90, "green": 10})
	if h := d.Health(); !h.OK {
		t.Fatalf("health = %+v after the client accepted", h)
	}
	// The first RPC's load report starts the count from here.
	waitFor(t, 10*time.Second, "the first RPC's load report", func() error {
		if w, ok := d.TakeWindow(); ok && w["blue"].Requests+w["green"].Requests > 0 {
			return nil
		}
		return errors.New("no report with a request yet")
	})
	const n = 1000
	got := count(t, cc, n)
	share := float64(got["green"]) / n
	t.Logf("90/10 split: %v (green %.1f%%)", got, 100*share)
	if got["blue"]+got["green"] != n || share < 0.07 || share > 0.13 {
		t.Fatalf("split %v: want green 10%% ± 3%%", got)
	}
	// The client reports its load each second: the window counts the RPCs
	// per backend.
	var total, green uint64
	waitFor(t, 10*time.Second, "load reports of every RPC", func() error {
		if w, ok := d.TakeWindow(); ok {
			total += w["blue"].Requests + w["green"].Requests
			green += w["green"].Requests
		}
		if total < n {
			return fmt.Errorf("load reports counted %d of %d RPCs", total, n)
		}
		return nil
	})
	if total != n || green != uint64(got["green"]) {
		t.Errorf("load reports: %d requests, %d to green; the wire had %d, %d", total, green, n, got["green"])
	}
	if _, ok := d.TakeWindow(); ok {
		// A report with zero requests is a report; only no report at all
		// is no data.
		t.Log("a report arrived in the last window")
	}
}

func TestEnvoy_SwitchesUnderLoadLoseNoRPC(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	cc := dialXDS(t, f.sec.XDS, "client-1")
	waitFor(t, 10*time.Second, "first RPC", func() error { _, err := call(context.Background(), cc); return err })
	waitObserved(t, d, map[string]uint32{"blue": 100, "green": 0})

	ctx, cancel := context.WithCancel(context.Background())
	var (
		wg       sync.WaitGroup
		ok, fail atomic.Int64
		firstErr atomic.Value
	)
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if _, err := call(context.Background(), cc); err != nil {
					fail.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				} else {
					ok.Add(1)
				}
			}
		})
	}
	splits := []map[string]uint32{{"blue": 0, "green": 100}, {"blue": 100, "green": 0}}
	for i := range 100 {
		want := splits[i%2]
		if err := d.Apply(context.Background(), want); err != nil {
			t.Fatal(err)
		}
		waitObserved(t, d, want)
	}
	cancel()
	wg.Wait()
	t.Logf("100 switches: %d RPCs ok, %d failed", ok.Load(), fail.Load())
	if fail.Load() != 0 {
		t.Fatalf("%d RPCs failed across 100 switches (first: %v)", fail.Load(), firstErr.Load())
	}
	if ok.Load() < 100 {
		t.Fatalf("only %d RPCs ran during the switches", ok.Load())
	}
}

func TestEnvoy_FaultFilterAbortsAndIsRemovedLive(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	cc := dialXDS(t, f.sec.XDS, "client-1")
	waitFor(t, 10*time.Second, "first RPC", func() error { _, err := call(context.Background(), cc); return err })
	if err := d.SetFault(context.Background(), "green", &Fault{AbortPercent: 50, AbortStatus: 503}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "clients accept the fault", func() error {
		_, err := d.Observe(context.Background())
		if err != nil {
			return err
		}
		cs := d.srv.clientsOf(d.listener, d.res.routeName())
		if st, _ := d.routingAt(cs[0].routesAcked); st == nil || len(st.Faults) == 0 {
			return errors.New("fault not accepted yet")
		}
		return nil
	})
	const n = 600
	failed := 0
	for range n {
		if _, err := call(context.Background(), cc); err != nil {
			if grpcstatus.Code(err) != codes.Unavailable {
				t.Fatalf("fault abort gave %v, want Unavailable (HTTP 503)", err)
			}
			failed++
		}
	}
	t.Logf("50%% abort fault: %d of %d RPCs failed", failed, n)
	if failed < n*40/100 || failed > n*60/100 {
		t.Fatalf("%d of %d failed, want 50%% ± 10%%", failed, n)
	}
	if err := d.SetFault(context.Background(), "green", nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "fault removed on the wire", func() error {
		for range 50 {
			if _, err := call(context.Background(), cc); err != nil {
				return err
			}
		}
		return nil
	})
}

func TestEnvoy_NACKAndNoClientAreTheDriversHealth(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Observe(context.Background()); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Observe with no client = %v, want ErrUnavailable", err)
	}
	// A raw ADS client asks for the listener, then refuses it.
	conn, err := grpc.NewClient(f.sec.XDS, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "refuser"}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"web"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResources()) != 1 {
		t.Fatalf("listener response has %d resources, want 1", len(resp.GetResources()))
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"web"},
		ResponseNonce: resp.GetNonce(), ErrorDetail: &status.Status{Code: int32(codes.InvalidArgument), Message: "listener web: test refusal"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the NACK in health", func() error {
		h := d.Health()
		if h.OK || !strings.Contains(h.Reason, "refuser refused the listener config: listener web: test refusal") {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	if got := testutil.ToFloat64(d.m.nacks.WithLabelValues("listener")); got != 1 {
		t.Errorf("switchyard_agent_xds_nacks_total{type=listener} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(d.m.healthy); got != 0 {
		t.Errorf("switchyard_agent_xds_healthy = %v, want 0 while a client refuses", got)
	}
	// Accepting the same version clears the refusal.
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: resource.ListenerType, ResourceNames: []string{"web"},
		ResponseNonce: resp.GetNonce(), VersionInfo: resp.GetVersionInfo()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the NACK cleared", func() error {
		if h := d.Health(); strings.Contains(h.Reason, "refused") {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	cancel()
	waitFor(t, 5*time.Second, "the client gone", func() error {
		if h := d.Health(); !strings.Contains(h.Reason, "no xDS client") {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
}

func TestEnvoy_RestartServesTheLastRoutingAndClientsReconnect(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	cc := dialXDS(t, f.sec.XDS, "client-1")
	waitFor(t, 10*time.Second, "first RPC", func() error { _, err := call(context.Background(), cc); return err })
	waitObserved(t, d, map[string]uint32{"blue": 0, "green": 100})
	// The agent stops: the xDS server is gone, the client keeps its routing.
	d.Close()
	if got := count(t, cc, 50); got["green"] != 50 {
		t.Fatalf("with the xDS server down the client went to %v, want all green", got)
	}
	// A new agent with the same state directory serves the last routing
	// before anything applies it; the client reconnects and accepts it.
	d2 := f.open(t)
	if w, _ := d2.Weights(context.Background()); w["green"] != 100 || w["blue"] != 0 {
		t.Fatalf("restarted driver serves %v, want the saved blue 0 green 100", w)
	}
	waitObserved(t, d2, map[string]uint32{"blue": 0, "green": 100})
	if err := d2.Apply(context.Background(), map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	waitObserved(t, d2, map[string]uint32{"blue": 100, "green": 0})
	if got := count(t, cc, 50); got["blue"] != 50 {
		t.Fatalf("after the restart and a switch the client went to %v, want all blue", got)
	}
}

func TestEnvoy_BadSectionsAreRefusedByKey(t *testing.T) {
	for _, tc := range []struct {
		name string
		sec  Section
		want string
	}{
		{"no xds", Section{Endpoints: map[string][]string{"blue": {"127.0.0.1:1"}, "green": {"127.0.0.1:2"}}}, "xds: required"},
		{"public xds", Section{XDS: "10.0.0.1:18000", Endpoints: map[string][]string{"blue": {"127.0.0.1:1"}, "green": {"127.0.0.1:2"}}}, "want a loopback address"},
		{"one backend", Section{XDS: "127.0.0.1:18000", Endpoints: map[string][]string{"blue": {"127.0.0.1:1"}}}, "endpoints: required"},
		{"host name", Section{XDS: "127.0.0.1:18000", Endpoints: map[string][]string{"blue": {"localhost:1"}, "green": {"127.0.0.1:2"}}}, "endpoints.blue[0]: \"localhost:1\": want an IP address"},
		{"no port", Section{XDS: "127.0.0.1:18000", Endpoints: map[string][]string{"blue": {"127.0.0.1"}, "green": {"127.0.0.1:2"}}}, "endpoints.blue[0]"},
		{"bad listener", Section{XDS: "127.0.0.1:18000", Listener: "a b", Endpoints: map[string][]string{"blue": {"127.0.0.1:1"}, "green": {"127.0.0.1:2"}}}, "listener:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.sec.Validate()
			var all []string
			for _, e := range errs {
				all = append(all, e.Error())
			}
			if !strings.Contains(strings.Join(all, "\n"), tc.want) {
				t.Fatalf("errors %q do not contain %q", all, tc.want)
			}
			if _, err := tc.sec.Open(driver.Env{Service: "web"}); err == nil {
				t.Fatal("Open of a bad section: want an error")
			}
		})
	}
	f := newFixture(t)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"purple": 1}); !errors.Is(err, driver.ErrUnknownBackend) {
		t.Errorf("Apply of an unknown backend = %v, want ErrUnknownBackend", err)
	}
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 101}); err == nil {
		t.Error("Apply of weight 101: want an error")
	}
	if w, _ := d.Weights(context.Background()); len(w) != 0 {
		t.Errorf("refused applies left weights %v", w)
	}
}
