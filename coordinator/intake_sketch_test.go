package coordinator

import (
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Agents from before whole_counts send their latency bins as doubles,
// newer ones as whole counts: the intake merges both alike. A sketch with
// bins in both forms, or a whole count no double holds, is refused and
// counted as malformed, and nothing of its report reaches the store.
func TestIntake_ReadsBothSketchFormsAndRefusesBothAtOnce(t *testing.T) {
	store := analysis.NewStore()
	now := time.Date(2026, 3, 1, 10, 0, 30, 200e6, time.UTC)
	in, m, _ := testIntake(t, store, func() time.Time { return now })
	sec := now.Truncate(time.Second)

	sk := sketch.New()
	for i := range 40 {
		sk.Add(0.010 + 0.001*float64(i%7))
	}
	sk.Add(0.250)
	compact := sk.ToProto()
	if len(compact.GetWholeCounts()) == 0 || len(compact.GetCounts()) != 0 {
		t.Fatalf("ToProto sent %d whole and %d double bins, want the whole form", len(compact.GetWholeCounts()), len(compact.GetCounts()))
	}
	old := &sv1.LatencySketch{RelativeAccuracy: sketch.RelativeAccuracy, IndexOffset: compact.GetIndexOffset()}
	for _, c := range compact.GetWholeCounts() {
		old.Counts = append(old.Counts, float64(c))
	}
	both := proto.Clone(compact).(*sv1.LatencySketch)
	both.Counts = old.Counts
	huge := proto.Clone(compact).(*sv1.LatencySketch)
	huge.WholeCounts[0] = 1 << 53

	msg := func(node string, lat *sv1.LatencySketch) *nats.Msg {
		wire, err := proto.Marshal(&sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 3,
			WindowEnd: timestamppb.New(sec),
			Backends: []*sv1.BackendHealth{
				{Backend: "blue", Requests: 41, Latency: compact},
				{Backend: "green", Requests: 41, Errors: 1, Latency: lat},
			}})
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Subject: bus.TelemetrySubject("web", node), Data: wire}
	}
	in.handle(msg("edge-new", compact))
	in.handle(msg("edge-old", old))
	in.handle(msg("edge-both", both))
	in.handle(msg("edge-huge", huge))

	runIntake(t, in)
	waitMerged(t, m, 2, m.telemetryRefused.WithLabelValues("malformed"), 2, "refused as malformed")
	if got := testutil.ToFloat64(m.telemetry); got != 2 {
		t.Fatalf("merged %v reports, want the two well-formed ones", got)
	}
	req, errs, nodes := store.NodeHealth("web", nil, sec.Add(-time.Second), sec)
	if nodes != 2 || req != 2*82 || errs != 2 {
		t.Fatalf("store holds %d requests, %d errors from %d nodes; want 164, 2, 2 (edge-new and edge-old only)", req, errs, nodes)
	}
	want := sketch.New()
	want.Merge(sk)
	want.Merge(sk)
	green := store.Window("web", "r1", "green", analysis.AnyWave, sec.Add(-time.Second), sec)
	if !reflect.DeepEqual(green.Latency.Bins(), want.Bins()) || green.Latency.Quantile(0.99) != want.Quantile(0.99) {
		t.Fatalf("green latency: bins %v, p99 %v; want %v, p99 %v: the sketch of both forms, twice", green.Latency.Bins(),
			green.Latency.Quantile(0.99), want.Bins(), want.Quantile(0.99))
	}
}
