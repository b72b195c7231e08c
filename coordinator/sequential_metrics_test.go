package coordinator

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The sequential judge's statistic and threshold are exported per rollout,
// and test, with the values the judge decides on.
func TestMetrics_SequentialStatisticAndThreshold(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green"}
	spec.Default(sp)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0), StepStartedAt: timestamppb.New(t0)}
	store := analysis.NewStore()
	lat := func(n int) *sv1.LatencySketch {
		sk := sketch.New()
		for range n {
			sk.Add(0.02)
		}
		return sk.ToProto()
	}
	// Green fails 3 of 10 requests, blue 1 of 90, on two nodes for 3 s.
	for sec := 1; sec <= 3; sec++ {
		for _, node := range []string{"a", "b"} {
			end := t0.Add(time.Duration(sec) * time.Second)
			if err := store.Add(&sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 2,
				WindowStart: timestamppb.New(end.Add(-time.Second)), WindowEnd: timestamppb.New(end),
				Backends: []*sv1.BackendHealth{
					{Backend: "green", Requests: 10, Errors: 3, Latency: lat(10)},
					{Backend: "blue", Requests: 90, Errors: 1, Latency: lat(90)},
				}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	store.Assess(r, t0.Add(3*time.Second))
	readings := store.SequentialReadings()
	if len(readings) != 4 {
		t.Fatalf("%d readings, want 4 (errors and latency at p50, p90, p99): %v", len(readings), readings)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(sequentialCollector{store})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["rollout"] != "r1" {
				t.Errorf("rollout label %q", labels["rollout"])
			}
			key := labels["test"]
			if got[key] == nil {
				got[key] = map[string]float64{}
			}
			got[key][mf.GetName()] = m.GetGauge().GetValue()
		}
	}
	for _, r := range readings {
		key := r.Test
		if v := got[key]["switchyard_rollout_sequential_statistic"]; v != r.Statistic {
			t.Errorf("%s statistic %g, want %g", key, v, r.Statistic)
		}
		if v := got[key]["switchyard_rollout_sequential_threshold"]; v != r.Threshold {
			t.Errorf("%s threshold %g, want %g", key, v, r.Threshold)
		}
	}
	e := got["errors"]
	if e["switchyard_rollout_sequential_statistic"] <= 0 {
		t.Errorf("green at 30%% against 1%%: the error statistic is %g", e["switchyard_rollout_sequential_statistic"])
	}
	// A one-minute horizon (the plan has no timed steps), half of 0.005.
	if want := analysis.MixtureThreshold(0.005, 0.5, 60); e["switchyard_rollout_sequential_threshold"] != want {
		t.Errorf("error threshold %g, want %g", e["switchyard_rollout_sequential_threshold"], want)
	}
	if _, ok := got["latency_p99"]; !ok {
		t.Errorf("no latency_p99 detector in %v", got)
	}
}
