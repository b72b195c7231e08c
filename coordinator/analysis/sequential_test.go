package analysis

import (
	"math"
	"math/rand/v2"
	"testing"
)

func near(t *testing.T, what string, got, want, tol float64) {
	t.Helper()
	if math.Abs(got-want) > tol {
		t.Errorf("%s = %.12g, want %.12g (±%g)", what, got, want, tol)
	}
}

func TestSequential_BinomialUpperTailKnownValues(t *testing.T) {
	// Exact values from the binomial sum with integer coefficients.
	cases := []struct {
		k, n uint64
		p    float64
		want float64
	}{
		{0, 10, 0.1, 1},
		{3, 10, 0.1, 0.0701908264},
		{6, 10, 0.5, 386.0 / 1024},
		{10, 10, 0.5, 1.0 / 1024},
		{11, 10, 0.5, 0},
		{12, 40, 0.1, 0.00038083426673634285},
		// The figures: at α = 0.005 the critical count for 0.5%
		// errors is 5 of 200 and 7 of 400 requests ...
		{5, 200, 0.005, 0.0035454798045125293},
		{7, 400, 0.005, 0.004414087313355373},
		// ... and 5% errors reach it with probability 0.97 and ~1.
		{5, 200, 0.05, 0.9735531999908718},
		{7, 400, 0.05, 0.9998035209689745},
		{1, 1, 0.3, 0.3},
	}
	for _, c := range cases {
		near(t, "P(X ≥ k)", BinomialUpperTail(c.k, c.n, c.p), c.want, 1e-12)
	}
	if v := BinomialUpperTail(4, 200, 0.005); v <= 0.005 {
		t.Errorf("4 of 200 must not be significant at 0.005: %g", v)
	}
}

func TestSequential_ShareLLRKnownValue(t *testing.T) {
	// 10% of the traffic; 3 of 10 errors on the new backend; odds ×4:
	// π1 = 0.4/1.3, ℓ = 3 ln(π1/0.1) + 7 ln((1-π1)/0.9).
	s := Stratum{Node: "n1", CandRequests: 100, CandEvents: 3, BaseRequests: 900, BaseEvents: 7}
	near(t, "llr", ShareLLR(s, 4), 1.5352404386847607, 1e-12)
	near(t, "llr at odds 1", ShareLLR(s, 1), 0, 1e-15)
	if v := ShareLLR(Stratum{CandRequests: 100, BaseRequests: 900}, 4); v != 0 {
		t.Errorf("no events must carry no information, got %g", v)
	}
	if v := ShareLLR(Stratum{CandRequests: 0, BaseRequests: 900, BaseEvents: 5}, 4); v != 0 {
		t.Errorf("a backend with no requests must carry no information, got %g", v)
	}
	// A tolerance raises the null share: the same split is weaker evidence.
	tol := s
	tol.NullOdds = 2
	if ShareLLR(tol, 4) >= ShareLLR(s, 4) {
		t.Errorf("a tolerance must weaken the evidence")
	}
}

func TestSequential_CUSUMRunLengthsOnFixedSequences(t *testing.T) {
	cases := []struct {
		in   []float64
		h    float64
		want int
	}{
		{[]float64{1, 1, -5, 2, 2, 2}, 5, 6}, // 1 2 0 2 4 6
		{[]float64{3, -1, 3}, 5, 3},          // 3 2 5
		{[]float64{1, -2, 1, -2, 1}, 2, 0},   // never
		{[]float64{-10, -10, 2.5, 2.5}, 5, 4},
		{[]float64{6}, 5, 1},
	}
	for _, c := range cases {
		if got := RunLength(c.in, c.h); got != c.want {
			t.Errorf("RunLength(%v, %g) = %d, want %d", c.in, c.h, got, c.want)
		}
	}
}

func TestSequential_CUSUMRestartsAndNamesTheNodes(t *testing.T) {
	c := NewCUSUM(4)
	good := []Stratum{{Node: "a", CandRequests: 10, BaseRequests: 90, BaseEvents: 2}}
	for i := int64(1); i <= 3; i++ {
		if v := c.Update(i, good); v != 0 {
			t.Fatalf("errors only on the old backend must keep the statistic at 0, got %g", v)
		}
	}
	bad := []Stratum{
		{Node: "a", CandRequests: 10, CandEvents: 1, BaseRequests: 90, BaseEvents: 1},
		{Node: "b", CandRequests: 10, CandEvents: 3, BaseRequests: 90, BaseEvents: 0},
	}
	got := c.Update(4, bad)
	want := ShareLLR(bad[0], 4) + math.Min(ShareLLR(bad[1], 4), StratumCap)
	near(t, "statistic", got, want, 1e-12)
	if ShareLLR(bad[1], 4) <= StratumCap {
		t.Fatalf("test needs node b over the cap")
	}
	if c.Since != 4 {
		t.Errorf("run since %d, want 4 (the statistic stood at zero before)", c.Since)
	}
	if d := c.Drivers(); len(d) != 2 || d[0] != "b" || d[1] != "a" {
		t.Errorf("drivers %v, want [b a]", d)
	}
	if c.CandEvents != 4 || c.BaseEvents != 1 || c.CandRequests != 20 || c.BaseRequests != 180 {
		t.Errorf("run counts %d/%d vs %d/%d", c.CandEvents, c.CandRequests, c.BaseEvents, c.BaseRequests)
	}
	// Enough old-backend errors bring it back to zero; the next run starts
	// afresh.
	c.Update(5, []Stratum{{Node: "c", CandRequests: 10, BaseRequests: 90, BaseEvents: 200}})
	if c.Statistic != 0 {
		t.Fatalf("statistic %g, want 0", c.Statistic)
	}
	c.Update(6, bad[:1])
	if n := c.RunNodes(); c.Since != 6 || len(n) != 1 || n[0] != "a" {
		t.Errorf("after a restart: since %d, nodes %v", c.Since, n)
	}
	if d := c.Drivers(); len(d) != 1 || d[0] != "a" {
		t.Errorf("after a restart: drivers %v, want [a]", d)
	}
}

func TestSequential_Threshold(t *testing.T) {
	near(t, "h", CUSUMThreshold(0.005, 3600, 12), 15.971913140780238, 1e-12)
	near(t, "h one detector one interval", CUSUMThreshold(0.05, 1, 1), math.Log(20), 1e-12)
}

// TestSequential_FalseAlarmRateHoldsUnderTheNull runs the mixture on A/A
// traffic (both backends fail alike, load and rates differing by node and by
// second) and checks the alarm rate against the stated α.
func TestSequential_FalseAlarmRateHoldsUnderTheNull(t *testing.T) {
	const (
		alpha     = 0.05
		intervals = 300
		runs      = 400
	)
	h := MixtureThreshold(alpha, 1, intervals)
	rng := rand.New(rand.NewPCG(1, 2))
	binom := func(n int, p float64) uint64 {
		k := uint64(0)
		for range n {
			if rng.Float64() < p {
				k++
			}
		}
		return k
	}
	alarms := 0
	for range runs {
		m := NewMixture(DefaultOddsRatios, ErrorWeights)
		alarmed := false
		for i := int64(1); i <= intervals && !alarmed; i++ {
			var strata []Stratum
			for node := range 3 {
				rate := 0.01 * (0.5 + float64(node)*0.5) * (0.5 + rng.Float64())
				nc, nb := 5+rng.IntN(10), 50+rng.IntN(100)
				strata = append(strata, Stratum{Node: string(rune('a' + node)), CandRequests: uint64(nc), CandEvents: binom(nc, rate),
					BaseRequests: uint64(nb), BaseEvents: binom(nb, rate)})
			}
			alarmed = m.Update(i, 1, strata) >= h
		}
		if alarmed {
			alarms++
		}
	}
	if rate := float64(alarms) / runs; rate > alpha {
		t.Fatalf("false alarms in %d of %d runs (%.3f), above α=%g", alarms, runs, rate, alpha)
	}
	t.Logf("false alarms in %d of %d A/A runs of %d intervals (α=%g, h=%.2f)", alarms, runs, intervals, alpha, h)
}

func TestSequential_NonInferiorityKnownValues(t *testing.T) {
	// No errors on either backend: the null rate is the floor 0.1%, the
	// alternative a quarter of it.
	near(t, "log e zero errors", NonInferiorityLogE(0, 3000, 0, 0.5, 0.001), 2.2514072351225365, 1e-9)
	// 10 of 1000 slow at a 1% old rate: null 1.6%, alternative 1%.
	near(t, "log e at parity", NonInferiorityLogE(10, 1000, 0.01, 0.5, 0.001), 1.3182193231610144, 1e-9)
	if v := NonInferiorityLogE(40, 1000, 0.01, 0.5, 0.001); v >= 0 {
		t.Errorf("4%% against a 1%% old rate must be evidence against non-inferiority, got %g", v)
	}
	if v := NonInferiorityLogE(0, 0, 0.01, 0.5, 0.001); v != 0 {
		t.Errorf("no requests, no evidence: %g", v)
	}
}

// ShareLLR takes one logarithm where the binomial likelihood ratio of the
// new backend's share of the events, written out, takes two: the same
// value up to rounding, over strata from one event to a million, with and
// without a null tolerance, and every alternative.
func TestShareLLR_OneLogarithmIsTheBinomialRatio(t *testing.T) {
	written := func(s Stratum, odds float64) float64 {
		p0 := s.NullShare()
		p1 := AltShare(p0, odds)
		return float64(s.CandEvents)*math.Log(p1/p0) + float64(s.BaseEvents)*math.Log((1-p1)/(1-p0))
	}
	r := rand.New(rand.NewPCG(41, 42))
	odds := append([]float64{1.01, 1.5, 100}, DefaultOddsRatios...)
	checked := 0
	for range 100_000 {
		s := Stratum{CandRequests: 1 + uint64(r.IntN(1_000_000)), BaseRequests: 1 + uint64(r.IntN(1_000_000)),
			NullOdds: []float64{0, 1, 1.2, 3}[r.IntN(4)]}
		if r.IntN(4) == 0 {
			s.CandRequests = 1 + uint64(r.IntN(5))
		}
		s.CandEvents = uint64(r.IntN(int(s.CandRequests) + 1))
		s.BaseEvents = uint64(r.IntN(int(s.BaseRequests) + 1))
		if !s.informative() {
			if ShareLLR(s, 2) != 0 {
				t.Fatalf("%+v: no information, yet ShareLLR %v", s, ShareLLR(s, 2))
			}
			continue
		}
		checked++
		for _, o := range odds {
			got, want := ShareLLR(s, o), written(s, o)
			events := float64(s.CandEvents + s.BaseEvents)
			if math.Abs(got-want) > 1e-12*events*math.Max(1, math.Abs(math.Log(o))) {
				t.Fatalf("%+v odds %g: ShareLLR %v, written out %v", s, o, got, want)
			}
		}
	}
	if checked < 50_000 {
		t.Fatalf("only %d informative strata checked", checked)
	}
}
