package envoy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/switchyard/switchyard/agent/driver/envoy/accesslog"
	"github.com/switchyard/switchyard/internal/sketch"
)

// atLeast counts a sketch's entries of at least seconds.
func atLeast(s *sketch.Sketch, seconds float64) float64 {
	var n float64
	for _, b := range s.Bins() {
		if sketch.Value(b.Index) >= seconds {
			n += b.Count
		}
	}
	return n
}

// TestEnvoy_AccessLogsGiveTheWindowItsLatency runs real RPCs through a
// grpc-go xDS client: without access logs a window's latency is no data;
// with the client's access log reporter every RPC is in its backend's
// sketch, and a green that answers a quarter of its RPCs 300 ms late shows
// it there while blue does not.
func TestEnvoy_AccessLogsGiveTheWindowItsLatency(t *testing.T) {
	f := newFixture(t)
	f.sec.LoadReportInterval = 200 * time.Millisecond
	f.green.slowBy = 300 * time.Millisecond
	f.green.slowEvery.Store(4)
	d := f.open(t)
	if err := d.Apply(context.Background(), map[string]uint32{"blue": 50, "green": 50}); err != nil {
		t.Fatal(err)
	}

	// A client that sends no access log: load but no latency.
	plain := dialXDS(t, f.sec.XDS, "plain")
	if _, err := call(context.Background(), plain); err != nil {
		t.Fatalf("first RPC: %v", err)
	}
	waitFor(t, 10*time.Second, "a load report", func() error {
		w, ok := d.TakeWindow()
		if !ok || w["blue"].Requests+w["green"].Requests == 0 {
			return errors.New("no report with a request yet")
		}
		for b, bw := range w {
			if bw.Latency != nil {
				t.Fatalf("%s latency without any access log: %v entries, want nil (no data)", b, bw.Latency.Count())
			}
		}
		return nil
	})

	rb, err := xds.NewXDSResolverWithConfigForTesting(bootstrap(f.sec.XDS, "reporting"))
	if err != nil {
		t.Fatal(err)
	}
	rep := accesslog.New(f.sec.XDS, "web", "reporting", nil)
	defer rep.Close()
	cc, err := grpc.NewClient("xds:///web", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(rb), grpc.WithUnaryInterceptor(rep.UnaryClientInterceptor()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	waitObserved(t, d, map[string]uint32{"blue": 50, "green": 50})
	d.TakeWindow() // what came before the reporter

	const n = 200
	var (
		mu  sync.Mutex
		got = map[string]int{}
		wg  sync.WaitGroup
	)
	for range 8 {
		wg.Go(func() {
			for range n / 8 {
				name, err := call(context.Background(), cc)
				if err != nil {
					t.Errorf("RPC: %v", err)
					return
				}
				mu.Lock()
				got[name]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// Entries ride with the next load report, as traffic that goes on
	// would send: the plain client keeps it coming and adds no entry.
	lat := map[string]*sketch.Sketch{"blue": sketch.New(), "green": sketch.New()}
	waitFor(t, 10*time.Second, "every RPC's access log entry", func() error {
		if _, err := call(context.Background(), plain); err != nil {
			return err
		}
		if w, ok := d.TakeWindow(); ok {
			for b, bw := range w {
				if bw.Latency != nil {
					lat[b].Merge(bw.Latency)
				}
			}
		}
		if c := lat["blue"].Count() + lat["green"].Count(); c < n {
			return fmt.Errorf("%v of %d RPCs timed", c, n)
		}
		return nil
	})
	t.Logf("RPCs %v; blue p50 %.1f ms p99 %.1f ms; green p50 %.1f ms p90 %.1f ms, %v of %v at >= 290 ms",
		got, 1000*lat["blue"].Quantile(0.5), 1000*lat["blue"].Quantile(0.99),
		1000*lat["green"].Quantile(0.5), 1000*lat["green"].Quantile(0.9), atLeast(lat["green"], 0.29), lat["green"].Count())
	for _, b := range []string{"blue", "green"} {
		if lat[b].Count() != float64(got[b]) {
			t.Errorf("%s sketch has %v entries, the wire had %d RPCs", b, lat[b].Count(), got[b])
		}
	}
	// Every fourth green RPC was held 300 ms; the sketch's relative error
	// is 1%, so 290 ms separates them from the rest.
	if slow, want := atLeast(lat["green"], 0.29), float64(got["green"]/4); slow < want {
		t.Errorf("green: %v entries >= 290 ms, want at least %v", slow, want)
	}
	if slow := atLeast(lat["blue"], 0.29); slow > 0 {
		t.Errorf("blue: %v entries >= 290 ms, want none", slow)
	}
	if v := testutil.ToFloat64(d.m.accessLogs.WithLabelValues(resultTimed)); v < n {
		t.Errorf("switchyard_agent_xds_access_log_entries_total{result=timed} = %v, want >= %d", v, n)
	}
	if rep.Dropped() != 0 {
		t.Errorf("reporter dropped %d entries", rep.Dropped())
	}
}

// TestEnvoy_AccessLogBadInputIsCountedNeverTimed sends what an Envoy's
// http_grpc logger could: a stream naming no service is refused naming the
// field; entries of another cluster or without a duration are counted and
// leave the window alone.
func TestEnvoy_AccessLogBadInputIsCountedNeverTimed(t *testing.T) {
	f := newFixture(t)
	d := f.open(t)
	cc, err := grpc.NewClient(f.sec.XDS, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	client := als.NewAccessLogServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	entry := func(cluster string, took *durationpb.Duration) *alsdata.HTTPAccessLogEntry {
		return &alsdata.HTTPAccessLogEntry{CommonProperties: &alsdata.AccessLogCommon{UpstreamCluster: cluster, Duration: took}}
	}
	send := func(logName string, es ...*alsdata.HTTPAccessLogEntry) error {
		s, err := client.StreamAccessLogs(ctx, grpc.WaitForReady(true))
		if err != nil {
			return err
		}
		if err := s.Send(&als.StreamAccessLogsMessage{
			Identifier: &als.StreamAccessLogsMessage_Identifier{Node: &core.Node{Id: "edge-1-envoy"}, LogName: logName},
			LogEntries: &als.StreamAccessLogsMessage_HttpLogs{HttpLogs: &als.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: es}},
		}); err != nil {
			_, err = s.CloseAndRecv()
			return err
		}
		_, err = s.CloseAndRecv()
		return err
	}

	err = send("shop", entry("web-green", durationpb.New(time.Millisecond)))
	if grpcstatus.Code(err) != codes.NotFound || !strings.Contains(err.Error(), `identifier.log_name "shop"`) {
		t.Fatalf("stream naming log shop: %v, want NotFound naming identifier.log_name", err)
	}
	if v := testutil.ToFloat64(d.m.accessLogs.WithLabelValues(resultUnknownLog)); v != 1 {
		t.Errorf("unknown_log = %v, want 1", v)
	}
	if err := send("web",
		entry("shop-green", durationpb.New(time.Millisecond)), // another service's cluster
		entry("web-purple", durationpb.New(time.Millisecond)), // no such backend
		entry("web-green", nil),                               // no duration
		entry("web-green", &durationpb.Duration{Seconds: -1}), // negative
		entry("web-blue", durationpb.New(7*time.Millisecond)), // an Envoy's good entry
	); err != nil {
		t.Fatal(err)
	}
	for result, want := range map[string]float64{resultUnattributed: 2, resultMalformed: 2, resultTimed: 1} {
		if v := testutil.ToFloat64(d.m.accessLogs.WithLabelValues(result)); v != want {
			t.Errorf("access log entries %s = %v, want %v", result, v, want)
		}
	}
	// The one good entry waits for a load report: a window needs one.
	d.addLoad("web-blue", 1, 0)
	w, ok := d.TakeWindow()
	if !ok || w["blue"].Latency.Count() != 1 || w["green"].Latency != nil {
		t.Fatalf("window %+v: want blue's one 7 ms entry and no green latency", w)
	}
}
