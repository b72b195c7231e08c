package analysis

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/spec"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// benchWire is n nodes' reports for one second, 10 backends each, encoded.
func benchWire(tb testing.TB, nodes int, end int64) [][]byte {
	r := rand.New(rand.NewPCG(1, 2))
	wire := make([][]byte, nodes)
	for i := range wire {
		w, err := proto.Marshal(testReport(fmt.Sprintf("edge-%d", i), end, 10, r))
		if err != nil {
			tb.Fatal(err)
		}
		wire[i] = w
	}
	return wire
}

// benchCanary is the rollout of benchWire's reports, from b0 to b1, made
// the second before base.
func benchCanary(base int64) *sv1.Rollout {
	sp := &sv1.RolloutSpec{Name: "web-1", Service: "web", From: "b0", To: "b1"}
	spec.Default(sp)
	created := time.Unix(base-1, 0)
	return &sv1.Rollout{Id: "web-1", Generation: 7, Spec: sp, CreatedAt: timestamppb.New(created), StepStartedAt: timestamppb.New(created)}
}

// BenchmarkStore_DecodeAndMerge is the intake's work per report on one
// core: decode a 10-backend report with its sketches and merge it into the
// windows and the sequential tests' queue, 256 reports per lock. Each
// second has 10,000 nodes, so the store prunes as it would in a fleet.
func BenchmarkStore_DecodeAndMerge(b *testing.B) {
	const nodes = 10_000
	base := int64(1_700_000_000)
	wire := benchWire(b, nodes, base)
	var d Decoder
	s := NewStore()
	batch := make([]*Report, 0, 256)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := 0; i < b.N; i++ {
		r, err := d.Decode(wire[i%nodes])
		if err != nil {
			b.Fatal(err)
		}
		r.End = base + int64(i/nodes) // the next second's reports
		batch = append(batch, r)
		if len(batch) == cap(batch) {
			s.AddReports(batch)
			d.Reuse() // as an intake worker does
			batch = batch[:0]
		}
	}
	s.AddReports(batch)
	b.StopTimer()
	reportCPU(b, cpu0)
	reportWireBytes(b, wire)
}

// BenchmarkStore_DecodeMergeAndJudge is the intake's work per report as a
// coordinator does it with a canary under the sequential judge: decode and
// merge as BenchmarkStore_DecodeAndMerge, and once per second of reports
// the judge reads that second (Assess), so the store holds a second of
// node reports, not the whole run. Reported per report: the CPU of all of
// it, the judge's share included.
func BenchmarkStore_DecodeMergeAndJudge(b *testing.B) {
	const nodes = 10_000
	base := int64(1_700_000_000)
	wire := benchWire(b, nodes, base)
	rollout := benchCanary(base)
	var d Decoder
	s := NewStore()
	batch := make([]*Report, 0, 256)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := 0; i < b.N; i++ {
		r, err := d.Decode(wire[i%nodes])
		if err != nil {
			b.Fatal(err)
		}
		sec := base + int64(i/nodes)
		r.End = sec
		batch = append(batch, r)
		if len(batch) == cap(batch) || (i+1)%nodes == 0 {
			s.AddReports(batch)
			d.Reuse() // as an intake worker does
			batch = batch[:0]
		}
		if (i+1)%nodes == 0 {
			s.Assess(rollout, time.Unix(sec, 0).Add(Grace))
		}
	}
	s.AddReports(batch)
	b.StopTimer()
	if sz := s.Size(); sz.Reports > nodes {
		b.Fatalf("store holds %d node reports after the judge read them, want at most a second's %d", sz.Reports, nodes)
	}
	reportCPU(b, cpu0)
	reportWireBytes(b, wire)
}

// BenchmarkDecoder_Decode is the decoder alone on the reports of
// BenchmarkStore_DecodeAndMerge: the intake's share before the store.
func BenchmarkDecoder_Decode(b *testing.B) {
	const nodes = 10_000
	wire := benchWire(b, nodes, 1_700_000_000)
	var d Decoder
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := 0; i < b.N; i++ {
		if _, err := d.Decode(wire[i%nodes]); err != nil {
			b.Fatal(err)
		}
		if i%256 == 255 {
			d.Reuse()
		}
	}
	b.StopTimer()
	reportCPU(b, cpu0)
	reportWireBytes(b, wire)
}

// BenchmarkStore_ProtoUnmarshalAndAdd is the same through proto.Unmarshal
// and Add, one report per lock: the intake before the wire decoder.
func BenchmarkStore_ProtoUnmarshalAndAdd(b *testing.B) {
	const nodes = 10_000
	base := int64(1_700_000_000)
	wire := benchWire(b, nodes, base)
	s := NewStore()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime(b)
	for i := 0; i < b.N; i++ {
		var hr sv1.HealthReport
		if err := proto.Unmarshal(wire[i%nodes], &hr); err != nil {
			b.Fatal(err)
		}
		hr.WindowEnd.Seconds = base + int64(i/nodes)
		if err := s.Add(&hr); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu0)
}

// cpuTime is the process's CPU time (garbage collection included): on a
// shared machine the CPU per report says more than the wall time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportWireBytes reports the mean size of the reports decoded.
func reportWireBytes(b *testing.B, wire [][]byte) {
	n := 0
	for _, w := range wire {
		n += len(w)
	}
	b.ReportMetric(float64(n)/float64(len(wire)), "wire-B/report")
}

func reportCPU(b *testing.B, from time.Duration) {
	per := (cpuTime(b) - from) / time.Duration(b.N)
	b.ReportMetric(float64(per.Nanoseconds()), "cpu-ns/report")
	b.ReportMetric(float64(time.Second)/float64(per), "reports/cpu-s")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
}
