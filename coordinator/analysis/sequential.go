package analysis

import (
	"math"
	"sort"
)

// The sequential judge's statistics, as pure functions.
//
// A stratum is one node's report for one interval, in which both backends
// served: the same node, the same second, the same load and the same
// fleet-wide incidents. Given the total number of events (errors, or
// requests slower than a threshold) of both backends in the stratum, the
// new backend's share of them is, if it is no worse, at most its share of
// the requests: exactly hypergeometric when each request fails with the same
// probability on both, and the binomial likelihood ratio used here is a
// supermartingale under that null (the hypergeometric is smaller in convex
// order than the binomial, Hoeffding 1963). Conditioning cancels whatever
// both backends share: load swings, a slow point of presence, an incident.

// Stratum is one node's counts for one interval.
type Stratum struct {
	Node string
	// CandRequests and CandEvents are the new backend's; BaseRequests and
	// BaseEvents the old backend's.
	CandRequests, CandEvents uint64
	BaseRequests, BaseEvents uint64
	// NullOdds is how many times the old backend's odds of an event the
	// null allows the new one (a business tolerance); 0 or 1 is none.
	NullOdds float64
	// slot numbers Node among the strata a reader feeds the same
	// detectors, from 1 (0: not numbered; the detector looks Node up).
	slot int32
}

// NullShare is the new backend's largest share of a stratum's events if it
// is no worse than the tolerance: its share of the requests, weighted by
// NullOdds.
func (s Stratum) NullShare() float64 {
	return AltShare(float64(s.CandRequests)/float64(s.CandRequests+s.BaseRequests), max(s.NullOdds, 1))
}

// informative reports whether the stratum can move a likelihood ratio.
func (s Stratum) informative() bool {
	return s.CandRequests > 0 && s.BaseRequests > 0 && s.CandEvents+s.BaseEvents > 0
}

// AltShare is the share of events the new backend has when the odds of an
// event on it are oddsRatio times the old one's, with share0 the null share.
func AltShare(share0, oddsRatio float64) float64 {
	return oddsRatio * share0 / (1 - share0 + oddsRatio*share0)
}

// ShareLLR is the log-likelihood ratio (nats) of a stratum's split of events
// between the backends: the new backend's odds multiplied by oddsRatio
// against equal rates. Strata with no events, or where one backend served
// nothing, carry no information and give 0.
func ShareLLR(s Stratum, oddsRatio float64) float64 {
	if !s.informative() {
		return 0
	}
	return shareLLR(s, s.NullShare(), oddsRatio, math.Log(oddsRatio))
}

// shareLLR is ShareLLR of an informative stratum whose null share is p0,
// with one logarithm: the new backend's share under the alternative is
// p1 = oddsRatio·p0/D with D = 1 + (oddsRatio−1)·p0, so log(p1/p0) is
// log(oddsRatio) − log D and log((1−p1)/(1−p0)) is −log D. The judge takes
// it for every node, alternative and second
// (TestShareLLR_OneLogarithmIsTheBinomialRatio checks it against the
// ratio written out).
func shareLLR(s Stratum, p0, oddsRatio, logOdds float64) float64 {
	return float64(s.CandEvents)*logOdds - float64(s.CandEvents+s.BaseEvents)*math.Log1p((oddsRatio-1)*p0)
}

// StratumCap bounds what one node adds in one interval (nats). Capping a
// likelihood ratio from above keeps it a supermartingale under the null, and
// it keeps one burst on one node (overdispersion the binomial model does not
// know) from deciding alone: an alarm needs several node-intervals.
const StratumCap = 3.0

// DefaultOddsRatios are the alternatives the detectors are tuned to: a
// doubling, a quadrupling and a tenfold rise of the odds of an event. A
// detector is quickest near its own alternative and still catches larger
// ones fast.
var DefaultOddsRatios = []float64{2, 4, 10}

// CUSUMThreshold is the alarm threshold (nats) for detectors detectors run
// over intervals intervals of healthy canary, so that the probability of any
// of them raising a false alarm is at most alpha. Page's CUSUM raises its
// alarm at t when, for some start s, the likelihood ratio of (s, t] reaches
// e^h; for each s that ratio is a nonnegative supermartingale under the null,
// which crosses e^h with probability at most e^-h (Ville's inequality). A
// union bound over starts and detectors gives h = log(detectors·intervals/α).
func CUSUMThreshold(alpha float64, intervals, detectors int) float64 {
	return AlarmThreshold(alpha, 1/float64(max(detectors, 1)), intervals, 1)
}

// AlarmThreshold is the threshold (nats) of one detector allowed the share
// weight of alpha over intervals intervals: each start within them may
// spend alpha·weight/intervals, so h = log(intervals/(alpha·weight)). The
// shares of all detectors sum to at most 1, which makes the union bound
// over starts and detectors alpha. block numbers the stretches of that
// length since the canary began (1 is the horizon itself); each later
// stretch is allowed half the one before, so the threshold rises by log 2
// a stretch and a canary that outlives its horizon, however long, spends
// at most 2·alpha in all.
func AlarmThreshold(alpha, weight float64, intervals, block int) float64 {
	return math.Log(float64(max(intervals, 1))/(alpha*weight)) + float64(max(block, 1)-1)*math.Ln2
}

// ErrorWeights are the shares of the error tests' part of the false-alarm
// budget given to the detectors of DefaultOddsRatios: most to the tenfold
// rise, whose alarms must come in seconds, least to the doubling, which
// needs minutes of evidence anyway and loses little to a higher threshold.
var ErrorWeights = []float64{0.1, 0.3, 0.6}

// NodeCounts is one node's part of a detector's current run.
type NodeCounts struct {
	Contribution             float64
	CandRequests, CandEvents uint64
	BaseRequests, BaseEvents uint64
	// node names the counts; run is the run they belong to (CUSUM.runs+1;
	// 0 is none): counts of an earlier run are zeroed when their node next
	// reports.
	node string
	run  int64
}

// CUSUM is Page's cumulative sum of the capped stratified log-likelihood
// ratio for one alternative: S = max(0, S + Σ strata). It restarts at zero
// whenever the evidence falls back, so a regression that begins late in a
// canary is caught as fast as one that begins at once. A run starts only
// where an interval begins: strata of the interval read last that arrive
// late join the current run (they can keep it alive but not restart it).
type CUSUM struct {
	OddsRatio float64
	// Weight is the detector's share of the false-alarm budget (0: it
	// never raises an alarm).
	Weight float64
	// Statistic is the current value, in nats.
	Statistic float64
	// Since is the index of the interval after the last time the statistic
	// stood at zero; the node counts (RunNodes, Drivers) and the counts
	// below cover the run since then.
	Since                    int64
	CandRequests, CandEvents uint64
	BaseRequests, BaseEvents uint64
	// interval is the interval read last; raw is the run's sum, which may
	// dip below zero within an interval.
	interval int64
	raw      float64
	// counts are every node's counts, by slot: a stratum's own slot when
	// its reader numbered the nodes (every detector of a rollout shares
	// one numbering, so a node is looked up once a second, not once per
	// detector), else the slot slots gives its node. A healthy canary's
	// statistic restarts about every second: counts are not cleared then,
	// only runs moves on (see NodeCounts.run).
	counts [][]NodeCounts
	slots  map[string]int32
	runs   int64
	llr    []float64
}

// countsChunk is how many nodes' counts a CUSUM allocates at a time.
const countsChunk = 1024

// NewCUSUM returns a detector at zero.
func NewCUSUM(oddsRatio float64) *CUSUM {
	return &CUSUM{OddsRatio: oddsRatio}
}

// Update adds strata of an interval and returns the new statistic. Called
// again with the same interval, it adds to the same run.
func (c *CUSUM) Update(interval int64, strata []Stratum) float64 {
	c.llr = c.llr[:0]
	for _, s := range strata {
		l := 0.0
		if s.CandRequests != 0 && s.BaseRequests != 0 {
			l = math.Min(ShareLLR(s, c.OddsRatio), StratumCap)
		}
		c.llr = append(c.llr, l)
	}
	return c.update(interval, strata, c.llr)
}

// update is Update with each stratum's capped log-likelihood ratio for
// c.OddsRatio given in llr (a Mixture computes them once for its sum and
// its alternative's run).
func (c *CUSUM) update(interval int64, strata []Stratum, llr []float64) float64 {
	if interval != c.interval {
		if c.raw <= 0 {
			c.raw = 0
			c.reset(interval)
		}
		c.interval = interval
	}
	sum := 0.0
	for i, s := range strata {
		if s.CandRequests == 0 || s.BaseRequests == 0 {
			continue
		}
		l := llr[i]
		sum += l
		n := c.node(s)
		n.Contribution += l
		n.CandRequests += s.CandRequests
		n.CandEvents += s.CandEvents
		n.BaseRequests += s.BaseRequests
		n.BaseEvents += s.BaseEvents
		c.CandRequests += s.CandRequests
		c.CandEvents += s.CandEvents
		c.BaseRequests += s.BaseRequests
		c.BaseEvents += s.BaseEvents
	}
	c.raw += sum
	c.Statistic = math.Max(0, c.raw)
	return c.Statistic
}

// node returns s's node's counts in the current run.
func (c *CUSUM) node(s Stratum) *NodeCounts {
	slot := s.slot - 1
	if slot < 0 {
		var ok bool
		if slot, ok = c.slots[s.Node]; !ok {
			if c.slots == nil {
				c.slots = map[string]int32{}
			}
			slot = int32(len(c.slots))
			c.slots[s.Node] = slot
		}
	}
	// In chunks: a fleet's nodes arrive a few at a time, and a growing
	// slice would copy every node's counts again and again.
	for int(slot)/countsChunk >= len(c.counts) {
		c.counts = append(c.counts, make([]NodeCounts, countsChunk))
	}
	n := &c.counts[slot/countsChunk][slot%countsChunk]
	if n.run != c.runs+1 {
		*n = NodeCounts{node: s.Node, run: c.runs + 1}
	}
	return n
}

func (c *CUSUM) reset(interval int64) {
	c.Since = interval
	c.runs++
	c.CandRequests, c.CandEvents, c.BaseRequests, c.BaseEvents = 0, 0, 0, 0
}

// runCounts are the counts of the nodes in the current run.
func (c *CUSUM) runCounts() []*NodeCounts {
	var out []*NodeCounts
	for _, chunk := range c.counts {
		for i := range chunk {
			if n := &chunk[i]; n.run == c.runs+1 {
				out = append(out, n)
			}
		}
	}
	return out
}

// RunNodes names the nodes with counts in the current run, sorted.
func (c *CUSUM) RunNodes() []string {
	var out []string
	for _, n := range c.runCounts() {
		out = append(out, n.node)
	}
	sort.Strings(out)
	return out
}

// driverCounts are the counts of the nodes with a positive contribution
// to the current run, largest first.
func (c *CUSUM) driverCounts() []*NodeCounts {
	var out []*NodeCounts
	for _, n := range c.runCounts() {
		if n.Contribution > 0 {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Contribution != out[j].Contribution {
			return out[i].Contribution > out[j].Contribution
		}
		return out[i].node < out[j].node
	})
	return out
}

// Drivers names the nodes with a positive contribution to the current run,
// largest first.
func (c *CUSUM) Drivers() []string {
	var out []string
	for _, n := range c.driverCounts() {
		out = append(out, n.node)
	}
	return out
}

// RunLength feeds a fixed sequence of per-interval log-likelihood sums to a
// CUSUM with threshold h and returns the 1-based interval of the first alarm,
// or 0 when none is raised: the run length of Page's scheme.
func RunLength(increments []float64, h float64) int {
	s := 0.0
	for i, x := range increments {
		s = math.Max(0, s+x)
		if s >= h {
			return i + 1
		}
	}
	return 0
}

// BinomialUpperTail is P(X ≥ k) for X ~ Binomial(n, p), summed exactly in
// log space from the mode outwards.
func BinomialUpperTail(k, n uint64, p float64) float64 {
	switch {
	case k == 0:
		return 1
	case k > n:
		return 0
	case p <= 0:
		return 0
	case p >= 1:
		return 1
	}
	lgN, _ := math.Lgamma(float64(n) + 1)
	logPMF := func(i uint64) float64 {
		a, _ := math.Lgamma(float64(i) + 1)
		b, _ := math.Lgamma(float64(n-i) + 1)
		return lgN - a - b + float64(i)*math.Log(p) + float64(n-i)*math.Log1p(-p)
	}
	// Sum the smaller side for accuracy.
	mean := float64(n) * p
	if float64(k) > mean {
		first := logPMF(k)
		sum := 0.0
		for i := k; i <= n; i++ {
			t := math.Exp(logPMF(i) - first)
			sum += t
			if t < 1e-17*sum {
				break
			}
		}
		return math.Min(1, math.Exp(first)*sum)
	}
	// 1 - P(X ≤ k-1), summing down from k-1.
	last := logPMF(k - 1)
	sum := 0.0
	for i := k - 1; ; i-- {
		t := math.Exp(logPMF(i) - last)
		sum += t
		if t < 1e-17*sum || i == 0 {
			break
		}
	}
	return math.Max(0, 1-math.Exp(last)*sum)
}

// NonInferiorityLogE is the log e-value (nats) against "the new backend's
// event rate is at least (1+margin)·base + floor", from its counts, with the
// old backend's rate as the alternative: the log-likelihood ratio of a
// Bernoulli sequence at the alternative rate against the null rate. It is
// monotone in the rate, so it is a supermartingale under every null rate, and
// by Ville's inequality reaching log(1/β) happens with probability at most β
// when the new backend is that much worse. A new backend better than the old
// only gets there sooner. Negative values are evidence against.
func NonInferiorityLogE(candEvents, candRequests uint64, baseRate, margin, floor float64) float64 {
	if candRequests == 0 {
		return 0
	}
	p0 := math.Min(baseRate*(1+margin)+floor, 0.999999)
	// The alternative sits at the old backend's rate, lifted off zero so
	// one error cannot rule a backend out forever.
	p1 := math.Min(math.Max(baseRate, floor/4), p0)
	n, e := float64(candRequests), float64(candEvents)
	return (n-e)*math.Log((1-p1)/(1-p0)) + e*math.Log(p1/p0)
}
