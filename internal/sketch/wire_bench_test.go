package sketch

import (
	"math"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// oneSecond is one backend's sketch of one second on one node.
type oneSecond struct {
	name     string
	requests int
	latency  func(r *rand.Rand) float64
}

var secondsOfTraffic = []oneSecond{
	// The ingest benchmark's reports (integration/reportgen).
	{"ingest-bench", 40, func(r *rand.Rand) float64 { return 0.015 + r.ExpFloat64()*0.004 }},
	// A wide, heavy-tailed spread: log-normal around 30 ms (σ 1.2, so
	// p99 near half a second) and one request in a hundred stuck 0.5-10 s
	// behind a retry or a cold cache; few requests leave long runs of
	// empty bins between the ones they fill.
	{"wide-50", 50, wide},
	{"wide-1000", 1000, wide},
	{"wide-20000", 20000, wide},
}

func wide(r *rand.Rand) float64 {
	if r.IntN(100) == 0 {
		return 0.5 * math.Pow(20, r.Float64())
	}
	return 0.030 * math.Exp(1.2*r.NormFloat64())
}

// sparseSize is the size a sparse form of the bins would take: each
// non-empty bin as a varint gap from the previous one and a varint count,
// packed in one field. It is the alternative weighed for sketches with long
// runs of empty bins.
func sparseSize(p *sv1.LatencySketch) int {
	var body []byte
	gap := uint64(0)
	for _, c := range p.GetWholeCounts() {
		if c == 0 {
			gap++
			continue
		}
		body = protowire.AppendVarint(protowire.AppendVarint(body, gap), c)
		gap = 0
	}
	head := &sv1.LatencySketch{RelativeAccuracy: p.GetRelativeAccuracy(), ZeroCount: p.GetZeroCount(), IndexOffset: p.GetIndexOffset()}
	return proto.Size(head) + protowire.SizeTag(6) + protowire.SizeBytes(len(body))
}

// BenchmarkSketch_WireBytes reports the encoded size of one backend's
// sketch of one second of traffic in the double form (counts), the whole
// form ToProto sends (whole_counts) and a sparse form that was considered
// and not built (sparse-B); bins and filled-bins say how sparse the sketch
// is. The timing is of ToProto and proto.Marshal.
func BenchmarkSketch_WireBytes(b *testing.B) {
	for _, sec := range secondsOfTraffic {
		b.Run(sec.name, func(b *testing.B) {
			r := rand.New(rand.NewPCG(21, 22))
			var doubles, whole, sparse, bins, filled float64
			const samples = 200
			sketches := make([]*Sketch, samples)
			for i := range sketches {
				s := New()
				for range sec.requests {
					s.Add(sec.latency(r))
				}
				sketches[i] = s
				p := s.ToProto()
				whole += float64(proto.Size(p))
				sparse += float64(sparseSize(p))
				bins += float64(len(p.GetWholeCounts()))
				old := &sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, ZeroCount: p.GetZeroCount(), IndexOffset: p.GetIndexOffset()}
				for _, c := range p.GetWholeCounts() {
					old.Counts = append(old.Counts, float64(c))
					if c > 0 {
						filled++
					}
				}
				doubles += float64(proto.Size(old))
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := proto.Marshal(sketches[i%samples].ToProto()); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(doubles/samples, "counts-B")
			b.ReportMetric(whole/samples, "whole-B")
			b.ReportMetric(sparse/samples, "sparse-B")
			b.ReportMetric(bins/samples, "bins")
			b.ReportMetric(filled/samples, "filled-bins")
		})
	}
}
