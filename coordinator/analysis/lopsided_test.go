package analysis

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// lopsidedFleet draws the telemetry of lopsided.
type lopsidedFleet struct{ rng *rand.Rand }

func (n *lopsidedFleet) poisson(mean float64) uint64 {
	if mean > 50 {
		return uint64(max(0, math.Round(mean+math.Sqrt(mean)*n.rng.NormFloat64())))
	}
	l, k, p := math.Exp(-mean), uint64(0), 1.0
	for {
		p *= n.rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

func (n *lopsidedFleet) binom(k uint64, p float64) uint64 {
	c := uint64(0)
	for range k {
		if n.rng.Float64() < p {
			c++
		}
	}
	return c
}

func (n *lopsidedFleet) lat(k uint64, mul float64) *sketch.Sketch {
	s := sketch.New()
	for range k {
		v := 0.02 * mul * math.Exp(0.35*n.rng.NormFloat64())
		if n.rng.Float64() < 0.005 {
			v += 0.03 * math.Pow(1-n.rng.Float64(), -1/1.5)
		}
		s.Add(math.Round(v*1000) / 1000)
	}
	return s
}

// TestStore_SequentialHoldsItsClaimsOnALopsidedLateFleet checks the
// sequential judge's two promises through the store, on the fleet an edge
// canary meets: 16 nodes, one with 100 times the traffic of the others,
// green at 1% (a fraction of a request a second on most nodes), one sick
// node failing 30% and five times slower on both backends, error rates
// overdispersed per node and second, a heavy latency tail, a 20 s
// fleet-wide incident, reports delivered late and out of order, and now
// and then two reports of one node for one second (an agent restart).
// A release no worse than blue is rolled back in at most 1.5 × falseAlarm
// of runs of two horizons (the second horizon's starts weigh half; 0.2
// here, so that a few dozen runs can tell), and errors ten times blue's
// are caught in seconds at the default falseAlarm.
func TestStore_SequentialHoldsItsClaimsOnALopsidedLateFleet(t *testing.T) {
	const runs, alpha = 40, 0.2
	alarms := 0
	for run := range runs {
		if breach, _ := lopsided(t, uint64(run), alpha, 0); breach != nil {
			alarms++
			t.Logf("A/A run %d rolled back: %s", run, breach.GetSummary())
		}
	}
	if alarms > int(1.5*alpha*runs) {
		t.Errorf("%d of %d A/A runs rolled back, more than falseAlarm %g allows over two horizons", alarms, runs, alpha)
	}
	for run := range 10 {
		breach, after := lopsided(t, uint64(run), 0, 20)
		if breach == nil || after < 0 || after > 30*time.Second {
			t.Errorf("errors ×10 from 20 s: run %d rolled back %v after the onset (%v)", run, after, breach)
		}
	}
}

// lopsided runs one 2-minute canary of that fleet, its telemetry drawn
// from seed; from onset (seconds; 0: never) green fails ten times as
// often as blue. It returns the breach and when it came after the onset.
func lopsided(t *testing.T, seed uint64, falseAlarm float64, onset int) (*sv1.Evidence, time.Duration) {
	n := &lopsidedFleet{rng: rand.New(rand.NewPCG(seed, 99))}
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green",
		Analysis: &sv1.AnalysisSpec{FalseAlarm: falseAlarm, Horizon: durationpb.New(time.Minute)}}
	spec.Default(sp)
	sp.Analysis.Latency.Max = durationpb.New(300 * time.Millisecond)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0), StepStartedAt: timestamppb.New(t0)}
	s := NewStore()
	type pending struct {
		at  time.Time
		rep *sv1.HealthReport
	}
	var queue []pending
	nodes := 16
	for tick := 1; tick <= 4*120; tick++ {
		now := t0.Add(time.Duration(tick) * 250 * time.Millisecond)
		if tick%4 == 0 {
			sec := tick / 4
			end := t0.Add(time.Duration(sec) * time.Second)
			incident := sec > 30 && sec < 50
			for i := range nodes {
				rate := 20.0
				if i == 0 {
					rate = 2000
				}
				errp, mul := 0.005*(0.5+float64(i)/float64(nodes)), 1.0+float64(i%4)/4
				if i == 3 {
					errp, mul = 0.3, 5
				}
				if incident {
					errp += 0.02
					mul *= 2
				}
				errp = min(errp*math.Exp(0.5*n.rng.NormFloat64()-0.125), 1)
				gerr := errp
				if onset > 0 && sec > onset {
					gerr = min(1, 10*errp)
				}
				total := n.poisson(rate)
				g := n.binom(total, 0.01)
				b := total - g
				parts := uint64(1)
				if n.rng.Float64() < 0.02 {
					parts = 2 // an agent restart: two reports for one second
				}
				for p := range parts {
					gp, bp := g/parts, b/parts
					if p == parts-1 {
						gp, bp = g-gp*(parts-1), b-bp*(parts-1)
					}
					rep := &sv1.HealthReport{Node: fmt.Sprintf("edge-%02d", i), Service: "web", RolloutId: "r1", Generation: 3,
						WindowStart: timestamppb.New(end.Add(-time.Second)), WindowEnd: timestamppb.New(end),
						Backends: []*sv1.BackendHealth{
							{Backend: "green", Requests: gp, Errors: n.binom(gp, gerr), Latency: n.lat(gp, mul).ToProto()},
							{Backend: "blue", Requests: bp, Errors: n.binom(bp, errp), Latency: n.lat(bp, mul).ToProto()},
						}}
					delay := time.Duration(n.rng.ExpFloat64() * float64(400*time.Millisecond))
					queue = append(queue, pending{now.Add(delay), rep})
				}
			}
		}
		var keep []pending
		n.rng.Shuffle(len(queue), func(i, j int) { queue[i], queue[j] = queue[j], queue[i] })
		for _, p := range queue {
			if p.at.After(now) {
				keep = append(keep, p)
				continue
			}
			if err := s.Add(p.rep); err != nil {
				t.Fatal(err)
			}
		}
		queue = keep
		if a := s.Assess(r, now); a.Breach != nil {
			return a.Breach, now.Sub(t0) - time.Duration(onset)*time.Second
		}
	}
	return nil, 0
}
