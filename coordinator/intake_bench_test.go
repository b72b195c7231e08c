package coordinator

import (
	"fmt"
	"math/rand/v2"
	"syscall"
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

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchMsgs is one second of 10-backend reports with sketches from nodes
// nodes, as the NATS client hands them over.
func benchMsgs(b *testing.B, nodes int) []*nats.Msg {
	r := rand.New(rand.NewPCG(1, 2))
	base := time.Now().Truncate(time.Second).Add(-time.Hour)
	var bodies []*sv1.HealthReport
	for range 256 {
		rep := &sv1.HealthReport{Service: "web", RolloutId: "web-1", Generation: 9}
		for i := range 10 {
			sk := sketch.New()
			n := 20 + r.IntN(40)
			for range n {
				sk.Add(0.015 + r.ExpFloat64()*0.004)
			}
			rep.Backends = append(rep.Backends, &sv1.BackendHealth{Backend: fmt.Sprintf("pool-%d", i), Requests: uint64(n), Latency: sk.ToProto()})
		}
		bodies = append(bodies, rep)
	}
	msgs := make([]*nats.Msg, nodes)
	for i := range msgs {
		rep := proto.Clone(bodies[i%len(bodies)]).(*sv1.HealthReport)
		rep.Node = fmt.Sprintf("sim-%06d", i)
		rep.WindowEnd = timestamppb.New(base)
		wire, err := proto.Marshal(rep)
		if err != nil {
			b.Fatal(err)
		}
		msgs[i] = &nats.Msg{Subject: bus.TelemetrySubject("web", rep.Node), Data: wire}
	}
	return msgs
}

// BenchmarkIntake_MergeCapacity is the intake's own ceiling, without the
// bus: 10-backend reports with sketches from 100,000 nodes (all for one
// second), handed to the queue as fast as the workers take them (one per
// core), each decoded and merged into the store. Reported: reports
// merged per second of wall time and per CPU-second of the process.
func BenchmarkIntake_MergeCapacity(b *testing.B) {
	const nodes = 100_000
	msgs := benchMsgs(b, nodes)
	in, m, _ := testIntake(b, analysis.NewStore(), time.Now)
	runIntake(b, in)
	b.ResetTimer()
	cpu0, start := processCPU(b), time.Now()
	for i := 0; i < b.N; i++ {
		// As fast as the workers take them: the queue never drops one.
		for in.queue.len() >= intakeQueue/2 {
			time.Sleep(100 * time.Microsecond)
		}
		in.handle(msgs[i%nodes])
	}
	for testutil.ToFloat64(m.telemetry) < float64(b.N) {
		time.Sleep(time.Millisecond)
	}
	wall, cpu := time.Since(start), processCPU(b)-cpu0
	b.StopTimer()
	b.ReportMetric(float64(b.N)/wall.Seconds(), "merged/s")
	b.ReportMetric(float64(b.N)/cpu.Seconds(), "reports/cpu-s")
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cores")
}
