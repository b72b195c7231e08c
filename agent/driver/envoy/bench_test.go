package envoy

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/xds"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/driver/envoy/accesslog"
)

// BenchmarkEnvoy_SnapshotToFirstRPC measures a switch over xDS: from Apply
// (a new snapshot) moving all traffic to the other backend to the first RPC
// of a real grpc-go xDS client that lands there. Reported as p50 and p99
// over b.N switches; compare BenchmarkHAProxy_ApplyToFirstRequest.
func BenchmarkEnvoy_SnapshotToFirstRPC(b *testing.B) {
	blue, green := startBackend(b, "blue"), startBackend(b, "green")
	sec := &Section{XDS: freeAddr(b), Endpoints: map[string][]string{"blue": {blue.addr}, "green": {green.addr}},
		Weights: map[string]uint32{"blue": 100, "green": 0}}
	dr, err := sec.Open(driver.Env{Service: "web", Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	defer dr.Close()
	d := dr.(*Driver)
	cc := dialXDS(b, sec.XDS, "bench-client")
	ctx := context.Background()
	waitFor(b, 10*time.Second, "first RPC", func() error { _, err := call(ctx, cc); return err })
	to := []string{"green", "blue"}
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		want := to[i%2]
		w := map[string]uint32{"blue": 0, "green": 0}
		w[want] = 100
		start := time.Now()
		if err := d.Apply(ctx, w); err != nil {
			b.Fatal(err)
		}
		for {
			got, err := call(ctx, cc)
			if err != nil {
				b.Fatal(err)
			}
			if got == want {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
	}
	b.ReportMetric(q(0.50), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkEnvoy_RPCWithAccessLog measures what the access log reporter
// adds to a real RPC through a grpc-go xDS client: the same RPC loop with
// and without the interceptor.
func BenchmarkEnvoy_RPCWithAccessLog(b *testing.B) {
	blue, green := startBackend(b, "blue"), startBackend(b, "green")
	sec := &Section{XDS: freeAddr(b), Endpoints: map[string][]string{"blue": {blue.addr}, "green": {green.addr}},
		Weights: map[string]uint32{"blue": 100, "green": 0}}
	dr, err := sec.Open(driver.Env{Service: "web", Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	defer dr.Close()
	for _, withLog := range []bool{false, true} {
		name := "plain"
		if withLog {
			name = "accesslog"
		}
		b.Run(name, func(b *testing.B) {
			rb, err := xds.NewXDSResolverWithConfigForTesting(bootstrap(sec.XDS, "bench-"+name))
			if err != nil {
				b.Fatal(err)
			}
			opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithResolvers(rb)}
			var rep *accesslog.Reporter
			if withLog {
				rep = accesslog.New(sec.XDS, "web", "bench-"+name, nil)
				defer rep.Close()
				opts = append(opts, grpc.WithUnaryInterceptor(rep.UnaryClientInterceptor()))
			}
			cc, err := grpc.NewClient("xds:///web", opts...)
			if err != nil {
				b.Fatal(err)
			}
			defer cc.Close()
			ctx := context.Background()
			waitFor(b, 10*time.Second, "first RPC", func() error { _, err := call(ctx, cc); return err })
			b.ResetTimer()
			for range b.N {
				if _, err := call(ctx, cc); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if rep != nil {
				b.ReportMetric(float64(rep.Dropped()), "dropped")
			}
		})
	}
}
