package analysis

import (
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestSequential_AlarmThresholdKnownValues(t *testing.T) {
	// The ×10 error detector of a 10-minute canary at the defaults: 30% of
	// 0.005 over 600 one-second starts.
	near(t, "h", AlarmThreshold(0.005, 0.3, 600, 1), math.Log(400000), 1e-12)
	near(t, "h", AlarmThreshold(0.005, 0.3, 600, 1), 12.89921982609012, 1e-12)
	// Two horizons later the budget per start is a quarter.
	near(t, "h third stretch", AlarmThreshold(0.005, 0.3, 600, 3), 14.28551418721001, 1e-12)
	// Equal shares are the plain union bound.
	near(t, "equal shares", CUSUMThreshold(0.005, 3600, 12), AlarmThreshold(0.005, 1.0/12, 3600, 1), 1e-12)
}

// What the thresholds spend: every start may cross with probability
// e^-h (Ville), so a stretch of n starts spends n·e^-h. The first horizon
// spends exactly α·weight, and all stretches together at most twice that.
func TestSequential_AlarmThresholdSpendsTheBudget(t *testing.T) {
	const alpha, weight, n = 0.005, 0.3, 600
	first := n * math.Exp(-AlarmThreshold(alpha, weight, n, 1))
	near(t, "first horizon", first, alpha*weight, 1e-15)
	total := 0.0
	for block := 1; block <= 200; block++ {
		total += n * math.Exp(-AlarmThreshold(alpha, weight, n, block))
	}
	if total > 2*alpha*weight || total < 1.999*alpha*weight {
		t.Fatalf("200 horizons spend %g, want just under %g", total, 2*alpha*weight)
	}
}

func TestSequential_DetectorSharesSumToOne(t *testing.T) {
	alternatives := func(m *Mixture) {
		t.Helper()
		sum := 0.0
		for _, a := range m.Alternatives {
			sum += a.Share
		}
		near(t, "alternatives' shares", sum, 1, 1e-12)
	}
	sum := func(run *seqRun) (errs, lat float64) {
		errs = run.errors.Weight
		alternatives(run.errors)
		for _, d := range run.latency {
			lat += d.test.Weight
			alternatives(d.test)
		}
		return errs, lat
	}
	sp := &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green"}
	spec.Default(sp)
	errs, lat := sum(newSeqRun("r", sp, 1))
	near(t, "errors' share", errs, 0.5, 1e-12)
	near(t, "latency's share", lat, 0.5, 1e-12)
	// Without a latency guardrail the errors get it all.
	sp.Analysis.Latency = nil
	errs, lat = sum(newSeqRun("r", sp, 1))
	near(t, "errors alone", errs, 1, 1e-12)
	near(t, "no latency", lat, 0, 0)
}

func TestSequential_RunLengthAtTheDefaultThreshold(t *testing.T) {
	// A 10-minute canary: horizon 600 s. Every second five of ten nodes
	// split one error each way (green 10 requests, blue 90): 1.0189 nats a
	// node at the ×10 alternative, 5.094 a second; the mixture's ×10 part
	// alone is log 0.6 + (5.09, 10.19, 15.28) = (4.58, 9.68, 14.78).
	sp := &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
			{Kind: &sv1.Step_SetWeight{SetWeight: 10}},
			{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{Duration: durationpb.New(10 * time.Minute)}}},
		}}}}}
	spec.Default(sp)
	run := newSeqRun("r", sp, 1)
	m := run.errors
	near(t, "threshold", run.threshold(m), 12.388394202324129, 1e-12)
	one := Stratum{CandRequests: 10, CandEvents: 1, BaseRequests: 90, BaseEvents: 1}
	near(t, "one node-second", ShareLLR(one, 10), 1.018877320649256, 1e-12)
	var strata []Stratum
	for i := range 5 {
		s := one
		s.Node = string(rune('a' + i))
		strata = append(strata, s)
	}
	alarm := func(first int64) int64 {
		m := NewMixture(DefaultOddsRatios, ErrorWeights)
		m.Weight = 0.5
		for sec := first; sec < first+10; sec++ {
			if m.Update(sec, StartWeight(sec-1, 600), strata) >= run.threshold(m) {
				return sec - first + 1
			}
		}
		return 0
	}
	if got := alarm(1); got != 3 {
		t.Fatalf("alarm after %d s, want 3", got)
	}
	if run.update(m, 1, strata) || run.update(m, 2, strata) || !run.update(m, 3, strata) {
		t.Fatalf("the run's error test must alarm at its third second: %g of %g", m.Statistic, run.threshold(m))
	}
	// The same evidence after the canary outlived its horizon twice: the
	// starts weigh a quarter, 2·log 2 less; the ×10 part at the third
	// second 14.78 − 1.39 = 13.39 is still over 12.39.
	if got := alarm(1 + 1200); got != 3 {
		t.Fatalf("alarm after %d s in the third stretch, want 3", got)
	}
}

// Reports of one second that arrive apart are read apart; the run may only
// start afresh where a second begins, or the union bound would count too
// few starts.
func TestSequential_CUSUMStartsOnlyWhereAnIntervalBegins(t *testing.T) {
	good := Stratum{Node: "a", CandRequests: 10, BaseRequests: 90, BaseEvents: 1} // the one event on blue
	bad := Stratum{Node: "b", CandRequests: 10, CandEvents: 1, BaseRequests: 90}  // the one event on green
	g, b := ShareLLR(good, 10), ShareLLR(bad, 10)
	near(t, "good node", g, math.Log(0.9/1.9/0.9), 1e-12)
	near(t, "bad node", b, math.Log(1/1.9/0.1), 1e-12)
	if g >= 0 || b <= 0 || g+b <= 0 || b > StratumCap {
		t.Fatalf("llr good %g, bad %g", g, b)
	}
	// Same second in two reads: the bad node is added to the run the good
	// node pushed down, as it would be read together.
	split := NewCUSUM(10)
	split.Update(7, []Stratum{good})
	split.Update(7, []Stratum{bad})
	together := NewCUSUM(10)
	together.Update(7, []Stratum{good, bad})
	near(t, "split reads", split.Statistic, g+b, 1e-12) // 1.02, not 1.66
	near(t, "one read", together.Statistic, split.Statistic, 1e-12)
	// The next second continues the run: 1.02 + 1.66.
	split.Update(8, []Stratum{bad})
	near(t, "next second", split.Statistic, g+2*b, 1e-12)
	// Where the evidence fell below zero by the end of a second, the next
	// second starts afresh.
	fresh := NewCUSUM(10)
	fresh.Update(7, []Stratum{good})
	fresh.Update(8, []Stratum{bad})
	near(t, "after a restart", fresh.Statistic, b, 1e-12)
	if fresh.Since != 8 || split.Since != 7 {
		t.Errorf("runs since %d and %d, want 8 and 7", fresh.Since, split.Since)
	}
}
