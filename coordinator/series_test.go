package coordinator

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func seriesReport(node string, end time.Time, blueReq, blueErr, greenReq, greenErr uint64, latency time.Duration) *sv1.HealthReport {
	b := func(name string, req, errs uint64) *sv1.BackendHealth {
		s := sketch.New()
		s.AddWithCount(latency.Seconds(), float64(req))
		return &sv1.BackendHealth{Backend: name, Requests: req, Errors: errs, Latency: s.ToProto()}
	}
	return &sv1.HealthReport{Node: node, Service: "web", RolloutId: "web-1", Generation: 7,
		WindowStart: timestamppb.New(end.Add(-time.Second)), WindowEnd: timestamppb.New(end),
		Backends: []*sv1.BackendHealth{b("blue", blueReq, blueErr), b("green", greenReq, greenErr)}}
}

func seriesRollout(created, updated time.Time, phase sv1.RolloutPhase) *sv1.Rollout {
	return &sv1.Rollout{Id: "web-1", Phase: phase, CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated),
		Spec: &sv1.RolloutSpec{Name: "web-1", Service: "web", From: "blue", To: "green"}}
}

// Reports of two nodes merge into one point per second per backend, with
// the error rate and latency quantiles of the merged traffic.
func TestSeries_MergesNodesPerSecondAndBackend(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	store := analysis.NewStore()
	for i := 1; i <= 10; i++ {
		end := t0.Add(time.Duration(i) * time.Second)
		for _, n := range []string{"edge-1", "edge-2"} {
			if err := store.Add(seriesReport(n, end, 90, 0, 10, 5, 20*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
		}
	}
	b := newSeriesBook()
	r := seriesRollout(t0, t0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)
	b.sample([]*sv1.Rollout{r}, store, t0.Add(5*time.Second+seriesLag))
	b.sample([]*sv1.Rollout{r}, store, t0.Add(10*time.Second+seriesLag))
	b.sample([]*sv1.Rollout{r}, store, t0.Add(10*time.Second+seriesLag)) // nothing new: no point twice
	s := b.series("web-1")
	if s == nil || len(s.GetBackends()) != 2 {
		t.Fatalf("series %v", s)
	}
	blue, green := s.GetBackends()[0], s.GetBackends()[1]
	if blue.GetBackend() != "blue" || blue.GetRole() != "from" || green.GetBackend() != "green" || green.GetRole() != "to" {
		t.Fatalf("backends %v / %v", blue, green)
	}
	if len(green.GetPoints()) != 10 || s.GetStepSeconds() != 1 {
		t.Fatalf("%d points, step %d; want 10, 1", len(green.GetPoints()), s.GetStepSeconds())
	}
	p := green.GetPoints()[3]
	if p.GetRequests() != 20 || p.GetErrors() != 10 || p.GetErrorRate() != 0.5 {
		t.Fatalf("green point %v, want 20 requests, 10 errors", p)
	}
	if q := p.GetP99Seconds(); q < 0.019 || q > 0.021 {
		t.Fatalf("p99 %v, want about 20ms", q)
	}
	if bp := blue.GetPoints()[3]; bp.GetRequests() != 180 || bp.GetErrorRate() != 0 {
		t.Fatalf("blue point %v", bp)
	}
	if !p.GetAt().AsTime().Equal(t0.Add(4 * time.Second)) {
		t.Fatalf("point 3 at %v", p.GetAt().AsTime())
	}
}

// A long rollout keeps at most seriesPoints points: neighbours merge and
// the step doubles, and no request is lost in the merging.
func TestSeries_BoundedOverALongRollout(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	store := analysis.NewStore()
	const seconds = 800 // within analysis.Retention
	for i := 1; i <= seconds; i++ {
		if err := store.Add(seriesReport("edge-1", t0.Add(time.Duration(i)*time.Second), 10, 1, 2, 0, 5*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	b := newSeriesBook()
	r := seriesRollout(t0, t0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)
	for i := 0; i <= seconds; i += 37 {
		b.sample([]*sv1.Rollout{r}, store, t0.Add(time.Duration(i)*time.Second+seriesLag))
	}
	b.sample([]*sv1.Rollout{r}, store, t0.Add(seconds*time.Second+seriesLag))
	s := b.series("web-1")
	blue := s.GetBackends()[0]
	if n := len(blue.GetPoints()); n > seriesPoints || n < seriesPoints/2 {
		t.Fatalf("%d points, want between %d and %d", n, seriesPoints/2, seriesPoints)
	}
	if s.GetStepSeconds() != 4 {
		t.Fatalf("step %d, want 4 for %d seconds in %d points", s.GetStepSeconds(), seconds, seriesPoints)
	}
	var req, errs uint64
	for _, p := range blue.GetPoints() {
		req += p.GetRequests()
		errs += p.GetErrors()
	}
	if req != 10*seconds || errs != seconds {
		t.Fatalf("blue sums %d requests %d errors, want %d, %d", req, errs, 10*seconds, seconds)
	}
}

// A rollout that ended long ago is not sampled; only seriesRollouts
// rollouts keep a series.
func TestSeries_EndedRolloutsStopAndOldestGo(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	store := analysis.NewStore()
	b := newSeriesBook()
	old := seriesRollout(t0, t0, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)
	b.sample([]*sv1.Rollout{old}, store, t0.Add(seriesTail+time.Minute))
	if b.series("web-1") != nil {
		t.Fatal("an ended rollout got a series")
	}
	for i := range seriesRollouts + 3 {
		r := seriesRollout(t0, t0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)
		r.Id = "r-" + string(rune('a'+i))
		b.sample([]*sv1.Rollout{r}, store, t0.Add(time.Minute))
	}
	if k := b.known(); len(k) != seriesRollouts || k[0] != "r-d" {
		t.Fatalf("known %v", k)
	}
}
