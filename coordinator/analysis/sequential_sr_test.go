package analysis

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestSequential_SRRecursionByHand(t *testing.T) {
	// R_t = (R_{t-1} + 1)·e^{x_t}: e, (e+1)/e², ((e+1)/e² + 1)·√e.
	incs := []float64{1, -2, 0.5}
	want := []float64{math.E, (math.E + 1) / (math.E * math.E), ((math.E+1)/(math.E*math.E) + 1) * math.Sqrt(math.E)}
	near(t, "R3 by hand", want[2], 2.4783820905611917, 1e-12)
	// log R: 1, −0.687, 0.908; from the second step on alone: −2, then
	// log((e^−2 + 1)·√e) = 0.627, which reaches 0.6.
	if got := SRRunLength(incs[1:], 0.6); got != 2 {
		t.Errorf("SR run length %d, want 2", got)
	}
	near(t, "log R3", math.Log(want[2]), 0.9076059644443805, 1e-12)
	if got := SRRunLength(incs, 1.01); got != 0 {
		t.Errorf("SR run length %d, want 0 (never 1.01)", got)
	}
	m := NewMixture([]float64{10}, []float64{1})
	// The same recursion on strata: the one event of a node-second on blue
	// (ℓ = ln(1/1.9) at odds ×10, green 10% of the requests), then twice on
	// green (ℓ = ln(1/0.19)).
	good := Stratum{Node: "a", CandRequests: 10, BaseRequests: 90, BaseEvents: 1}
	bad := Stratum{Node: "b", CandRequests: 10, CandEvents: 1, BaseRequests: 90}
	m.Update(1, 1, []Stratum{good})
	near(t, "R1", math.Exp(m.Statistic), 1/1.9, 1e-12)
	m.Update(2, 1, []Stratum{bad})
	near(t, "R2", math.Exp(m.Statistic), (1/1.9+1)/0.19, 1e-9)
	m.Update(3, 1, []Stratum{bad})
	near(t, "R3", math.Exp(m.Statistic), 47.54337366963114, 1e-9)
	// Page's CUSUM on the same seconds holds only the best start: 2 ln(1/0.19).
	near(t, "CUSUM", m.Alternatives[0].Run.Statistic, 2*math.Log(1/0.19), 1e-12)
	if m.Statistic <= m.Alternatives[0].Run.Statistic {
		t.Errorf("the mixture %g must exceed its largest term %g", m.Statistic, m.Alternatives[0].Run.Statistic)
	}
}

func TestSequential_SRStartWeightsAndMixtureShares(t *testing.T) {
	for _, c := range []struct {
		offset int64
		want   float64
	}{{0, 1}, {599, 1}, {600, 0.5}, {1199, 0.5}, {1200, 0.25}, {-5, 1}} {
		near(t, "start weight", StartWeight(c.offset, 600), c.want, 0)
	}
	// All starts however long the canary runs weigh under twice the
	// horizon's: the bound over its life is 2·falseAlarm.
	total := 0.0
	for off := int64(0); off < 600*60; off++ {
		total += StartWeight(off, 600)
	}
	if total >= 2*600 || total < 1.999*600 {
		t.Fatalf("start weights of 60 horizons sum to %g, want just under 1200", total)
	}
	// Two alternatives with shares ¼ and ¾: M = ¼·R_a + ¾·R_b. One second,
	// one start of weight ½ (the canary's second horizon).
	s := Stratum{Node: "a", CandRequests: 10, CandEvents: 3, BaseRequests: 90, BaseEvents: 1}
	m := NewMixture([]float64{2, 10}, []float64{0.25, 0.75})
	m.Update(601, 0.5, []Stratum{s})
	want := 0.25*0.5*math.Exp(ShareLLR(s, 2)) + 0.75*0.5*math.Exp(math.Min(ShareLLR(s, 10), StratumCap))
	near(t, "mixture", m.Statistic, math.Log(want), 1e-12)
	if ShareLLR(s, 10) <= StratumCap {
		t.Fatalf("test needs the ×10 term over the cap: %g", ShareLLR(s, 10))
	}
	if m.Leading().OddsRatio != 10 {
		t.Errorf("leading alternative ×%g, want ×10", m.Leading().OddsRatio)
	}
}

func TestSequential_MixtureThresholdKnownValues(t *testing.T) {
	// The error test of a 10-minute canary at the defaults: half of 0.005
	// over 600 starts; a latency quantile's: a sixth; a 1 h horizon.
	near(t, "errors 10 min", MixtureThreshold(0.005, 0.5, 600), math.Log(240000), 1e-12)
	near(t, "errors 10 min", MixtureThreshold(0.005, 0.5, 600), 12.388394202324129, 1e-12)
	near(t, "latency quantile 10 min", MixtureThreshold(0.005, 0.5/3, 600), 13.487006490992238, 1e-12)
	near(t, "errors 1 h", MixtureThreshold(0.005, 0.5, 3600), 14.180153671552183, 1e-12)
}

// Reports of one second read apart add no second start.
func TestSequential_SRStartsOnlyWhereAnIntervalBegins(t *testing.T) {
	good := Stratum{Node: "a", CandRequests: 10, BaseRequests: 90, BaseEvents: 1}
	bad := Stratum{Node: "b", CandRequests: 10, CandEvents: 1, BaseRequests: 90}
	split := NewMixture([]float64{10}, []float64{1})
	split.Update(7, 1, []Stratum{good})
	split.Update(7, 1, []Stratum{bad})
	together := NewMixture([]float64{10}, []float64{1})
	together.Update(7, 1, []Stratum{good, bad})
	near(t, "split reads", split.Statistic, together.Statistic, 1e-12)
	near(t, "one start", split.Statistic, ShareLLR(good, 10)+ShareLLR(bad, 10), 1e-12)
	split.Update(8, 1, []Stratum{bad})
	near(t, "next second", math.Exp(split.Statistic), (math.Exp(together.Statistic)+1)/0.19, 1e-9)
}

// The mixture raises its alarm no later than the CUSUM it replaces: at
// every step it is at least the largest single-start term of every
// alternative, at the thresholds each rule is given (the union bound's
// per-detector threshold with its block term, the mixture's test
// threshold).
func TestSequential_SRNeverLaterThanCUSUM(t *testing.T) {
	const alpha, intervals = 0.005, 60
	rng := rand.New(rand.NewPCG(7, 11))
	odds, shares := []float64{2, 4, 10}, []float64{0.1, 0.3, 0.6}
	for run := range 300 {
		m := NewMixture(odds, shares)
		m.Weight = 0.5
		cs := []*CUSUM{NewCUSUM(2), NewCUSUM(4), NewCUSUM(10)}
		// Green's error rate after a random onset is 1–10 times blue's.
		rate, factor, onset := 0.005+0.01*rng.Float64(), 1+9*rng.Float64(), int64(rng.IntN(200))
		srAt, cusumAt := int64(0), int64(0)
		for sec := int64(0); sec < 400 && (srAt == 0 || cusumAt == 0); sec++ {
			var strata []Stratum
			for node := range 4 {
				g := rate
				if sec >= onset {
					g *= factor
				}
				nc, nb := 5+rng.IntN(20), 50+rng.IntN(200)
				strata = append(strata, Stratum{Node: string(rune('a' + node)), CandRequests: uint64(nc), CandEvents: binomial(rng, nc, g),
					BaseRequests: uint64(nb), BaseEvents: binomial(rng, nb, rate)})
			}
			m.Update(sec, StartWeight(sec, intervals), strata)
			if srAt == 0 && m.Statistic >= MixtureThreshold(alpha, m.Weight, intervals) {
				srAt = sec + 1
			}
			block := int(sec/intervals) + 1
			for i, c := range cs {
				c.Update(sec, strata)
				if cusumAt == 0 && c.Statistic >= AlarmThreshold(alpha, m.Weight*shares[i], intervals, block) {
					cusumAt = sec + 1
				}
			}
			for i, a := range m.Alternatives {
				if a.Run.Statistic != cs[i].Statistic {
					t.Fatalf("run %d: the mixture's Page run %g differs from the CUSUM %g", run, a.Run.Statistic, cs[i].Statistic)
				}
				if cs[i].Statistic > 0 && a.LogR < cs[i].Statistic-float64(block-1)*math.Ln2-1e-9 {
					t.Fatalf("run %d second %d: log R %g below the best start's weighted term %g", run, sec, a.LogR, cs[i].Statistic-float64(block-1)*math.Ln2)
				}
			}
		}
		if cusumAt != 0 && (srAt == 0 || srAt > cusumAt) {
			t.Fatalf("run %d: the mixture alarmed at %d, after the CUSUM at %d", run, srAt, cusumAt)
		}
	}
	// On fixed sequences with unit start weights.
	for _, c := range []struct {
		in []float64
		h  float64
	}{
		{[]float64{1, 1, -5, 2, 2, 2}, 5},
		{[]float64{3, -1, 3}, 5},
		{[]float64{0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8}, 5},
		{[]float64{-10, -10, 2.5, 2.5}, 5},
	} {
		cu, sr := RunLength(c.in, c.h), SRRunLength(c.in, c.h)
		if cu == 0 || sr == 0 || sr > cu {
			t.Errorf("%v at h=%g: CUSUM alarm at %d, SR at %d", c.in, c.h, cu, sr)
		}
	}
	// A slow drift: the starts add up, SR alarms a step sooner.
	if cu, sr := RunLength([]float64{0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8}, 5), SRRunLength([]float64{0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8}, 5); cu != 7 || sr != 6 {
		t.Errorf("drift 0.8 a step to 5 nats: CUSUM %d (want 7), SR %d (want 6)", cu, sr)
	}
}

func binomial(rng *rand.Rand, n int, p float64) uint64 {
	k := uint64(0)
	for range n {
		if rng.Float64() < p {
			k++
		}
	}
	return k
}
