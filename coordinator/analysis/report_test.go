package analysis

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// testReport is a report as an agent sends it: backends each with a latency
// sketch of one second's requests.
func testReport(node string, end int64, backends int, r *rand.Rand) *sv1.HealthReport {
	rep := &sv1.HealthReport{Node: node, Service: "web", RolloutId: "web-1", Generation: 7,
		WindowStart: timestamppb.New(time.Unix(end-1, 0)), WindowEnd: timestamppb.New(time.Unix(end, 0))}
	for b := range backends {
		sk := sketch.New()
		n := 20 + r.IntN(20)
		for range n {
			sk.Add(0.020 + r.ExpFloat64()*0.002)
		}
		rep.Backends = append(rep.Backends, &sv1.BackendHealth{Backend: fmt.Sprintf("b%d", b), Requests: uint64(n), Errors: uint64(r.IntN(3)), Latency: sk.ToProto()})
	}
	return rep
}

// decodeBoth decodes wire bytes the generic way and the Decoder's way.
func decodeBoth(d *Decoder, wire []byte) (slow, fast *Report, slowErr, fastErr error) {
	var hr sv1.HealthReport
	if slowErr = proto.Unmarshal(wire, &hr); slowErr == nil {
		slow, slowErr = ReportOf(&hr)
	}
	fast, fastErr = d.Decode(wire)
	return slow, fast, slowErr, fastErr
}

func sameReport(a, b *Report) bool {
	if a.Node != b.Node || a.Service != b.Service || a.Rollout != b.Rollout || a.Generation != b.Generation || a.Wave != b.Wave ||
		a.End != b.End || len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		x, y := a.Backends[i], b.Backends[i]
		if x.Backend != y.Backend || x.Requests != y.Requests || x.Errors != y.Errors || x.Queued != y.Queued ||
			!reflect.DeepEqual(x.Latency.Bins(), y.Latency.Bins()) || x.Latency.Count() != y.Latency.Count() {
			return false
		}
	}
	return true
}

func checkDecoders(t *testing.T, d *Decoder, wire []byte) {
	t.Helper()
	slow, fast, slowErr, fastErr := decodeBoth(d, wire)
	if (slowErr == nil) != (fastErr == nil) {
		t.Fatalf("proto.Unmarshal+ReportOf: %v; Decoder: %v (input %x)", slowErr, fastErr, wire)
	}
	if fastErr != nil {
		if !errors.Is(fastErr, ErrBadReport) {
			t.Fatalf("Decoder error %v does not wrap ErrBadReport", fastErr)
		}
		return
	}
	if !sameReport(slow, fast) {
		t.Fatalf("reports differ:\n proto   %+v\n decoder %+v (input %x)", slow, fast, wire)
	}
}

func TestDecoder_MatchesProtoUnmarshal(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	var d Decoder
	cases := []*sv1.HealthReport{
		testReport("edge-1", 1_700_000_000, 10, r),
		testReport("edge-2", 1_700_000_001, 0, r),
		{Node: "n", Service: "web"}, // no window_end
		{Node: "n", Service: "web", WindowEnd: timestamppb.New(time.Unix(5, -1))},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{}, Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 1, Errors: 2}}},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{}, Backends: []*sv1.BackendHealth{{Backend: "green", Latency: &sv1.LatencySketch{}}}},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{}, Backends: []*sv1.BackendHealth{{Backend: "green",
			Latency: &sv1.LatencySketch{RelativeAccuracy: sketch.RelativeAccuracy, Counts: []float64{1, math.NaN()}}}}},
		{Node: "n", Service: "web", WindowEnd: &timestamppb.Timestamp{Seconds: 9, Nanos: 5}, DrillId: "d1",
			Probes: []*sv1.ProbeResult{{Backend: "green", Ok: true, Latency: durationpb.New(time.Millisecond)}}},
	}
	for i, c := range cases {
		wire, err := proto.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprint(i), func(t *testing.T) { checkDecoders(t, &d, wire) })
	}
}

func FuzzDecoder_MatchesProtoUnmarshal(f *testing.F) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, n := range []int{0, 1, 3} {
		wire, _ := proto.Marshal(testReport("edge-1", 1_700_000_000, n, r))
		f.Add(wire)
	}
	f.Add([]byte{0x22, 0x00, 0x0a, 0x01, 'n', 0x12, 0x01, 's'})
	var d Decoder
	f.Fuzz(func(t *testing.T, wire []byte) {
		checkDecoders(t, &d, wire)
		// Every other input decodes into the memory of the ones before,
		// as an intake worker's batches do.
		if len(wire)%2 == 0 {
			d.Reuse()
		}
	})
}
