package analysis

import "math"

// The Shiryaev–Roberts mixture over starts: the sequential judge's alarm
// statistic.
//
// Page's CUSUM raises an alarm when the likelihood ratio from some start on
// reaches a threshold; its guarantee is a union bound over starts. The
// Shiryaev–Roberts statistic adds the starts up instead of taking the
// largest: M_t = Σ_k w_k Λ_{k:t}, where Λ_{k:t} is the likelihood ratio of
// the intervals from k to t (1 before k) and w_k the start's prior weight.
// When the new backend is no worse, every Λ_{k:·} is a nonnegative
// supermartingale, and so is their weighted sum with the starts still to
// come counted at their weight, whose value before any data is Σ_k w_k.
// Ville's inequality then bounds the chance that M ever reaches 1/α by
// α·Σ_k w_k: the union bound's guarantee with the same weights, while
// M_t ≥ max_k w_k Λ_{k:t} means it never raises an alarm later than the
// CUSUM. Where several starts just before an onset each hold some evidence
// (a regression that begins in a load trough, say), they add up.
//
// A test mixes its alternatives the same way: M = Σ_a ω_a M^a over the odds
// ratios a with shares ω_a (summing to 1), a single statistic whose alarm
// comes no later than that of any one alternative at its share of the
// budget.
//
// Computed recursively, O(1) per alternative per interval:
// R_t = (R_{t-1} + v_t)·L_t, with v_t the start weight of interval t and
// L_t the interval's (capped) likelihood ratio; kept in logarithms.

// StartWeight is the prior weight of a start at offset intervals since the
// canary began, relative to a start in its first horizon of intervals
// intervals: 1 within the horizon, halved for each further horizon, so the
// starts of all horizons weigh at most twice those of the first.
func StartWeight(offset int64, intervals int) float64 {
	block := max(offset, 0) / int64(max(intervals, 1))
	return math.Exp2(-float64(block))
}

// MixtureThreshold is the alarm threshold (nats) on the log of the
// mixture of a test with share weight of the false-alarm budget alpha, over
// a horizon of intervals starts of weight 1: the mixture's mass over the
// horizon's starts is intervals, so an alarm at log(intervals/(alpha·
// weight)) has probability at most alpha·weight within the horizon and
// 2·alpha·weight however long the canary runs (StartWeight).
func MixtureThreshold(alpha, weight float64, intervals int) float64 {
	return AlarmThreshold(alpha, weight, intervals, 1)
}

// Alternative is one odds ratio of a test's mixture.
type Alternative struct {
	OddsRatio float64
	// Share is the alternative's part of the test's mixture (the shares of
	// a test sum to 1).
	Share float64
	// LogR is the log of the Shiryaev–Roberts sum over starts,
	// log Σ_k v_k Λ_{k:t} (−Inf before the first start).
	LogR float64
	// Run is Page's CUSUM of the same alternative: the start with the
	// largest likelihood ratio, whose counts and nodes the evidence names.
	Run *CUSUM
}

// Mixture is one test's Shiryaev–Roberts mixture over starts and
// alternatives.
type Mixture struct {
	// Weight is the test's share of the false-alarm budget (0: it never
	// raises an alarm).
	Weight       float64
	Alternatives []*Alternative
	// Statistic is log M, in nats: log Σ_a Share_a·R_a.
	Statistic float64
	// interval is the interval read last.
	interval int64
	started  bool
	// llr holds the strata's log-likelihood ratios for one alternative;
	// null the strata's null shares (0: not informative).
	llr, null []float64
}

// NewMixture returns a test over the given alternatives with their shares
// of the test, before any start.
func NewMixture(oddsRatios, shares []float64) *Mixture {
	m := &Mixture{Statistic: math.Inf(-1)}
	for i, o := range oddsRatios {
		m.Alternatives = append(m.Alternatives, &Alternative{OddsRatio: o, Share: shares[i], LogR: math.Inf(-1), Run: NewCUSUM(o)})
	}
	return m
}

// Update adds the strata of an interval, whose start has weight
// startWeight, and returns the new statistic. The start is added where an
// interval is first read; called again with the same interval, it adds to
// the same sum and no new start: one start per interval, whatever order the
// nodes' reports come in.
func (m *Mixture) Update(interval int64, startWeight float64, strata []Stratum) float64 {
	newStart := !m.started || interval != m.interval
	m.started, m.interval = true, interval
	m.null = m.null[:0]
	for _, s := range strata {
		p0 := 0.0
		if s.informative() {
			p0 = s.NullShare()
		}
		m.null = append(m.null, p0)
	}
	for _, a := range m.Alternatives {
		if newStart {
			a.LogR = logAddExp(a.LogR, math.Log(startWeight))
		}
		logOdds := math.Log(a.OddsRatio)
		sum := 0.0
		m.llr = m.llr[:0]
		for i, s := range strata {
			l := 0.0
			if p0 := m.null[i]; p0 != 0 {
				l = math.Min(shareLLR(s, p0, a.OddsRatio, logOdds), StratumCap)
				sum += l
			}
			m.llr = append(m.llr, l)
		}
		a.LogR += sum
		a.Run.update(interval, strata, m.llr)
	}
	m.Statistic = m.logM()
	return m.Statistic
}

func (m *Mixture) logM() float64 {
	v := math.Inf(-1)
	for _, a := range m.Alternatives {
		if a.Share > 0 {
			v = logAddExp(v, math.Log(a.Share)+a.LogR)
		}
	}
	return v
}

// Leading is the alternative with the largest part of the mixture.
func (m *Mixture) Leading() *Alternative {
	best := m.Alternatives[0]
	for _, a := range m.Alternatives[1:] {
		if a.Share > 0 && (best.Share <= 0 || math.Log(a.Share)+a.LogR > math.Log(best.Share)+best.LogR) {
			best = a
		}
	}
	return best
}

// logAddExp is log(e^a + e^b) without overflow.
func logAddExp(a, b float64) float64 {
	if math.IsInf(a, -1) {
		return b
	}
	if math.IsInf(b, -1) {
		return a
	}
	if a < b {
		a, b = b, a
	}
	return a + math.Log1p(math.Exp(b-a))
}

// SRRunLength feeds a fixed sequence of per-interval log-likelihood sums to
// a Shiryaev–Roberts statistic with unit start weights and returns the
// 1-based interval where log R first reaches h, or 0 when it never does.
func SRRunLength(increments []float64, h float64) int {
	r := 0.0
	for i, x := range increments {
		r = (r + 1) * math.Exp(x)
		if math.Log(r) >= h {
			return i + 1
		}
	}
	return 0
}
