package agent

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"

	"github.com/switchyard/switchyard/agent/driver/envoy"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// startGRPCBackend is a real gRPC server naming itself in the x-backend
// header of its answers.
func startGRPCBackend(t *testing.T, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := grpc.SetHeader(ctx, metadata.Pairs("x-backend", name)); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// rpcSample makes n RPCs through cc and counts failures by code.
func rpcSample(cc *grpc.ClientConn, n int) (failed int, byCode map[codes.Code]int) {
	byCode = map[codes.Code]int{}
	hc := healthpb.NewHealthClient(cc)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		byCode[status.Code(err)]++
		if err != nil {
			failed++
		}
	}
	return failed, byCode
}

// TestEnvoyDrill_FaultFilterOnTheWireGoneAfterItsTTLWithoutTheBus runs an
// agent whose service is on the Envoy driver, with a real grpc-go xDS
// client: a drill's HTTP fault reaches the client as a fault filter, fails
// its share of real RPCs, and is removed at the drill's end by the agent
// alone, with NATS stopped.
func TestEnvoyDrill_FaultFilterOnTheWireGoneAfterItsTTLWithoutTheBus(t *testing.T) {
	b := startBus(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := ln.Addr().String()
	ln.Close()
	cfg := testConfig(t, b.url)
	cfg.Services["web"] = ServiceConfig{Proxy: &envoy.Section{
		XDS:       xdsAddr,
		Endpoints: map[string][]string{"blue": {startGRPCBackend(t, "blue")}, "green": {startGRPCBackend(t, "green")}},
		Weights:   map[string]uint32{"blue": 0, "green": 100},
	}}
	ra, err := runAgentWith(t, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ra.stop(t)

	rb, err := xds.NewXDSResolverWithConfigForTesting(fmt.Appendf(nil,
		`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":"client-1"}}`, xdsAddr))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///web", grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	waitFor(t, 10*time.Second, "RPCs through the xDS client", func() error {
		if failed, codes := rpcSample(cc, 10); failed > 0 {
			return fmt.Errorf("codes %v", codes)
		}
		return nil
	})

	const d = 8 * time.Second
	start := time.Now()
	b.putDrill(t, drillDoc("green-errors", 1, httpFault(&sv1.HTTPFault{Backend: "green", ErrorPercent: 50}), start, d))
	ra.waitFault(t, 10*time.Second, "green-errors", true)
	// From here on the agent is alone: the fault must end on its own.
	b.srv.Shutdown()
	b.srv.WaitForShutdown()

	var failed int
	var byCode map[codes.Code]int
	waitFor(t, 5*time.Second, "the fault on the wire", func() error {
		failed, byCode = rpcSample(cc, 400)
		if failed < 400*35/100 {
			return fmt.Errorf("%d of 400 failed (%v)", failed, byCode)
		}
		return nil
	})
	if time.Since(start) > d {
		t.Fatalf("the measurement ended %s after the fault's end; lengthen the drill", time.Since(start)-d)
	}
	t.Logf("50%% abort over xDS: %d of 400 RPCs failed %v", failed, byCode)
	if failed > 400*65/100 || byCode[codes.Unavailable] != failed {
		t.Fatalf("%d of 400 failed %v, want 50%% ± 15 points, all UNAVAILABLE (HTTP 503)", failed, byCode)
	}
	if ra.metric(t, "switchyard_agent_bus_connected") != 0 {
		t.Fatal("the bus is still connected")
	}
	ra.waitFault(t, d+10*time.Second, "green-errors", false)
	waitFor(t, 5*time.Second, "no fault on the wire", func() error {
		if failed, codes := rpcSample(cc, 200); failed > 0 {
			return fmt.Errorf("%d of 200 failed %v", failed, codes)
		}
		return nil
	})
	if faults := ra.Status().GetFaults(); len(faults) != 0 {
		t.Fatalf("status still lists faults %v", faults)
	}
}
