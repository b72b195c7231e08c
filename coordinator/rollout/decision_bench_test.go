package rollout

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The decision-quality study behind the figures in the docs: how fast a bad
// green is rolled back, and how often a good one is, by Switchyard's judge
// and by a fixed-threshold judge with the defaults common canary tools ship
// (one check a minute on the last minute; success rate under 99% or p99 over
// 500 ms fails; roll back at the first failed check).

const benchSpec = `
version: v1
name: web-bench
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 10
      - pause: {duration: 1h}
`

// fixedJudge is the comparison judge.
type fixedJudge struct {
	store    *analysis.Store
	interval time.Duration
	maxErr   float64
	maxP99   time.Duration
}

func (f *fixedJudge) Assess(r *sv1.Rollout, now time.Time) analysis.Assessment {
	start := r.GetCreatedAt().AsTime()
	for check := start.Add(f.interval); !check.After(now); check = check.Add(f.interval) {
		g := f.store.Window(r.GetSpec().GetService(), r.GetId(), r.GetSpec().GetTo(), analysis.AnyWave, check.Add(-f.interval), check)
		if g.Requests == 0 {
			continue
		}
		rate := float64(g.Errors) / float64(g.Requests)
		p99 := time.Duration(g.Latency.Quantile(0.99) * float64(time.Second))
		if rate > f.maxErr || p99 > f.maxP99 {
			return analysis.Assessment{Breach: &sv1.Evidence{Guardrail: "fixed", Summary: fmt.Sprintf("check at %s: errors %.2f%%, p99 %s", check.Sub(start), 100*rate, p99)}}
		}
	}
	return analysis.Assessment{}
}

func fixed(s *analysis.Store) Analyzer {
	return &fixedJudge{store: s, interval: time.Minute, maxErr: 0.01, maxP99: 500 * time.Millisecond}
}

type scenario struct {
	green   func(t time.Time) Behavior
	swing   func(t time.Time) (float64, float64, float64)
	seconds int
}

// runOnce simulates 10 canary nodes at 100 req/s each and returns when the
// rollout was rolled back (ok false if never).
func runOnce(tb testing.TB, sc scenario, seed uint64, judge func(*analysis.Store) Analyzer) (time.Time, bool) {
	sp, err := spec.Parse([]byte(benchSpec))
	if err != nil {
		tb.Fatal(err)
	}
	src := &Synthetic{
		Service: "web", Fleet: fleetOf(10), Rate: 100, Interval: time.Second,
		Initial: map[string]uint32{"blue": 100, "green": 0},
		Behave: func(b string, t time.Time) Behavior {
			if b == "green" {
				return sc.green(t)
			}
			return Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond}
		},
		Swing: sc.swing,
		End:   t0.Add(time.Duration(sc.seconds) * time.Second),
		Rand:  rand.New(rand.NewPCG(seed, seed*7+1)),
	}
	res, err := Simulate(sp, src, SimOptions{Start: t0, ApplyDelay: time.Second, Until: time.Duration(sc.seconds) * time.Second, Analyzer: judge})
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range res.Events {
		if e.Action == Rollback {
			return e.At, true
		}
	}
	return time.Time{}, false
}

var healthy = Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond}

func regression(at time.Duration, bad Behavior) func(time.Time) Behavior {
	return func(t time.Time) Behavior {
		if t.Sub(t0) >= at {
			return bad
		}
		return healthy
	}
}

// noisyLoad swings the load of both backends (±60%) with a random period,
// and in every other run adds a 40 s fleet-wide incident (+2 points of
// errors, twice as slow) that hits blue and green alike.
func noisyLoad(seed uint64) func(time.Time) (float64, float64, float64) {
	withIncident := seed%2 == 0
	r := rand.New(rand.NewPCG(seed, 99))
	period := 60 + r.Float64()*240
	phase := r.Float64() * 2 * math.Pi
	incident := time.Duration(30+r.IntN(150)) * time.Second
	return func(t time.Time) (float64, float64, float64) {
		s := t.Sub(t0).Seconds()
		rate := 1 + 0.6*math.Sin(2*math.Pi*s/period+phase)
		if d := t.Sub(t0) - incident; withIncident && d >= 0 && d < 40*time.Second {
			return rate * 1.5, 0.02, 2
		}
		return rate, 0, 1
	}
}

func detection(b *testing.B, name string, sc scenario, regressAt time.Duration, runs int, judge func(*analysis.Store) Analyzer) {
	var ds []float64
	missed := 0
	for i := range runs {
		at, ok := runOnce(b, sc, uint64(i+1), judge)
		if !ok {
			missed++
			continue
		}
		ds = append(ds, at.Sub(t0.Add(regressAt)).Seconds())
	}
	slices.Sort(ds)
	med := -1.0
	if len(ds) > 0 {
		med = ds[len(ds)/2]
	}
	b.ReportMetric(med, name+"_median_s")
	b.ReportMetric(float64(missed), name+"_missed")
}

func BenchmarkDecision_Regression(b *testing.B) {
	const regressAt = 60 * time.Second
	errs := scenario{green: regression(regressAt, Behavior{ErrorRate: 0.05, Latency: 20 * time.Millisecond}), seconds: 600}
	slow := scenario{green: regression(regressAt, Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond, Extra: 100 * time.Millisecond}), seconds: 600}
	for range b.N {
		detection(b, "errors_switchyard", errs, regressAt, 20, nil)
		detection(b, "errors_fixed", errs, regressAt, 20, fixed)
		detection(b, "p99_switchyard", slow, regressAt, 20, nil)
		detection(b, "p99_fixed", slow, regressAt, 20, fixed)
	}
}

func BenchmarkDecision_FalseRollbacks(b *testing.B) {
	const runs = 1000
	for range b.N {
		for _, j := range []struct {
			name  string
			judge func(*analysis.Store) Analyzer
		}{{"switchyard", nil}, {"fixed", fixed}} {
			falses, inIncident := 0, 0
			for i := range runs {
				seed := uint64(i + 1)
				sc := scenario{green: func(time.Time) Behavior { return healthy }, swing: noisyLoad(seed), seconds: 240}
				if _, ok := runOnce(b, sc, seed, j.judge); ok {
					falses++
					if seed%2 == 0 {
						inIncident++
					}
				}
			}
			b.ReportMetric(100*float64(falses)/runs, "false_rollback_pct_"+j.name)
			b.ReportMetric(100*float64(falses-inIncident)/(runs/2), "false_rollback_pct_swings_only_"+j.name)
		}
	}
}
