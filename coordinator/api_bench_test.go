package coordinator

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// BenchmarkSeries_SampleOneSecond is one sampler tick: one new second for
// each of 10 live rollouts, each with telemetry from 100 nodes.
func BenchmarkSeries_SampleOneSecond(b *testing.B) {
	t0 := time.Unix(1_800_000_000, 0)
	store := analysis.NewStore()
	var rollouts []*sv1.Rollout
	for r := range 10 {
		ro := seriesRollout(t0, t0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)
		ro.Id = fmt.Sprintf("web-%d", r)
		ro.Spec.Service = ro.Id
		rollouts = append(rollouts, ro)
	}
	add := func(sec int) {
		for _, ro := range rollouts {
			for n := range 100 {
				rep := seriesReport(fmt.Sprintf("edge-%d", n), t0.Add(time.Duration(sec)*time.Second), 90, 1, 10, 0, 20*time.Millisecond)
				rep.Service, rep.RolloutId = ro.GetSpec().GetService(), ro.GetId()
				if err := store.Add(rep); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	book := newSeriesBook()
	for sec := 1; sec <= 5; sec++ {
		add(sec)
	}
	book.sample(rollouts, store, t0.Add(3*time.Second+seriesLag))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		add(6 + i)
		b.StartTimer()
		book.sample(rollouts, store, t0.Add(time.Duration(4+i)*time.Second+seriesLag))
	}
}

// BenchmarkAPI_OverviewEvent renders one live-stream event: an overview of
// a 100-, 1,000- and 10,000-node service with one rollout and its full
// series (240 points per backend).
func BenchmarkAPI_OverviewEvent(b *testing.B) {
	for _, nodes := range []int{100, 1000, 10_000} {
		b.Run(fmt.Sprintf("nodes=%d", nodes), func(b *testing.B) {
			ov := syntheticOverview(nodes)
			var size int
			for b.Loop() {
				buf, err := protojson.Marshal(ov)
				if err != nil {
					b.Fatal(err)
				}
				_ = eventKey(ov)
				size = len(buf)
			}
			b.ReportMetric(float64(size)/1024, "KiB/event")
		})
	}
}

func syntheticOverview(nodes int) *sv1.Overview {
	r := seriesRollout(time.Unix(1_800_000_000, 0), time.Unix(1_800_000_100, 0), sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)
	w := &sv1.WaveNodes{Wave: "all"}
	view := &sv1.RolloutView{Rollout: r, Position: "wave 1/1 all, step 2/4 pause 8s, green at 20%"}
	for i := range nodes {
		n := &sv1.NodeView{Node: fmt.Sprintf("edge-%04d", i), AppliedGeneration: 12, AppliedEpoch: 1, Weights: map[string]uint32{"blue": 80, "green": 20},
			ObservedWeights: map[string]uint32{"blue": 80, "green": 20}, ObservedMatches: true, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK,
			Labels: map[string]string{"region": "eu"}, SecondsSinceSeen: 0.4, Wave: "all"}
		w.Nodes = append(w.Nodes, n)
	}
	// As Overview sends it: the rollouts as summaries, each wave's list
	// within overviewWaveNodes.
	trimWave(w, bus.Fence{Epoch: 1, Generation: 12}, overviewWaveNodes)
	series := &sv1.RolloutSeries{Rollout: r.GetId(), Service: "web", StepSeconds: 1}
	for _, role := range []string{"from", "to"} {
		bs := &sv1.BackendSeries{Backend: role, Role: role}
		for p := range seriesPoints {
			bs.Points = append(bs.Points, &sv1.SeriesPoint{At: timestamppb.New(time.Unix(1_800_000_000+int64(p), 0)), Requests: 900, Errors: 3,
				ErrorRate: 0.0033, P50Seconds: 0.012, P90Seconds: 0.031, P99Seconds: 0.090})
		}
		series.Backends = append(series.Backends, bs)
	}
	return &sv1.Overview{AnsweredBy: "c1", Leader: "c1", At: timestamppb.Now(),
		Fleet:    &sv1.FleetStatus{Services: []*sv1.ServiceFleet{{Service: "web", Rollout: r.GetId(), Generation: 12, Epoch: 1, Waves: []*sv1.WaveNodes{w}, Live: uint32(nodes), Converged: uint32(nodes)}}},
		Rollouts: &sv1.RolloutsAnswer{Rollouts: []*sv1.RolloutView{view}},
		Drills:   &sv1.DrillsAnswer{KillSwitch: &sv1.KillSwitch{}}, KillSwitch: &sv1.KillSwitch{},
		Series: []*sv1.RolloutSeries{series}}
}

// BenchmarkAPI_OverviewFleet is the fleet part of building an overview at
// 10,000 nodes, before its encoding (BenchmarkAPI_OverviewEvent): every
// node's view, its wave, the waves, each wave's list cut to the overview's.
func BenchmarkAPI_OverviewFleet(b *testing.B) {
	green := map[string]uint32{"blue": 0, "green": 100}
	f := fleetOfStatuses(b, 10_000, func(i int) *sv1.AgentStatus {
		return &sv1.AgentStatus{Node: fmt.Sprintf("edge-%05d", i), Labels: map[string]string{"region": []string{"eu", "us", "ap"}[i%3]},
			Services: []*sv1.ServiceStatus{{Service: "web", AppliedEpoch: 1, AppliedGeneration: 12, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK,
				Weights: green, ObservedWeights: green, ObservedMatches: true}}}
	})
	r := seriesRollout(time.Unix(1_800_000_000, 0), time.Unix(1_800_000_100, 0), sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)
	r.Spec.Waves = []*sv1.WaveSpec{{Name: "eu", Selector: map[string]string{"region": "eu"}}, {Name: "rest"}}
	b.ReportAllocs()
	for b.Loop() {
		nodes := f.nodesFor("web")
		labelWaves(r, nodes)
		for _, w := range groupWaves(r, nodes) {
			trimWave(w, bus.Fence{Epoch: 1, Generation: 12}, overviewWaveNodes)
		}
	}
}
