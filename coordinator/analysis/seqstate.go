package analysis

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// nodeReport is one node's report for one second, kept per rollout until the
// sequential tests have read it.
type nodeReport struct {
	node     string
	backends []BackendReport
}

// part is the report's traffic to one backend; the last entry counts when
// a report names a backend twice.
func (r *nodeReport) part(backend string) backendPart {
	for i := len(r.backends) - 1; i >= 0; i-- {
		if b := &r.backends[i]; b.Backend == backend {
			return backendPart{requests: b.Requests, errors: b.Errors, latency: b.Latency}
		}
	}
	return backendPart{}
}

type backendPart struct {
	requests, errors uint64
	latency          *sketch.Sketch
}

// minBaselineSamples is how many old-backend latencies the thresholds need
// before the latency tests start: the p99 of fewer is mostly noise.
const minBaselineSamples = 1000

// NotWorseFloor is the absolute part of the non-inferiority margin, half a
// point of errors (or of requests over the latency threshold): with no
// errors on either backend a step passes once the new backend's rate is
// shown to be under 0.5%, after about 800 requests at the default
// passConfidence.
const NotWorseFloor = 0.005

// latencyQuantiles are the old backend's quantiles whose exceedances the
// latency detectors follow besides the guardrail's own: the median catches
// a shift of every request, the guardrail's quantile a tail.
var latencyQuantiles = []float64{0.5, 0.9}

// seqRun is the sequential analysis of one rollout, fed one second at a
// time in order.
type seqRun struct {
	rollout string
	next    int64 // the next second (window end, unix) to read
	first   int64 // the first second of the canary
	errors  []*CUSUM
	latency []*latencyDetector
	// base is every old-backend latency read so far: the thresholds of the
	// next second come from it, never from the second they judge.
	base    *sketch.Sketch
	seconds []secondTotals
	alarm   *sv1.Evidence
	last    int64 // the newest second read
	alpha   float64
	horizon time.Duration
}

// latencyShare is the latency tests' part of the false-alarm budget when
// both errors and latency are judged; the errors get the rest.
const latencyShare = 0.5

type latencyDetector struct {
	quantile float64
	cusums   []*CUSUM
	// threshold is the old backend's quantile in the last second read.
	threshold float64
}

// secondTotals are one second's counts on the nodes where both backends
// served, for the non-inferiority evidence of an analysis step.
type secondTotals struct {
	sec                      int64
	candRequests, candErrors uint64
	baseRequests, baseErrors uint64
	// Latency samples and those over the old backend's quantile of the
	// latency guardrail (plus its allowed increase for the new backend).
	candLatency, candSlow float64
	baseLatency, baseSlow float64
}

func newSeqRun(rollout string, sp *sv1.RolloutSpec, first int64) *seqRun {
	a := sp.GetAnalysis()
	run := &seqRun{rollout: rollout, next: first, first: first, base: sketch.New(), alpha: spec.FalseAlarm(a), horizon: spec.HorizonOf(sp)}
	for _, o := range DefaultOddsRatios {
		run.errors = append(run.errors, NewCUSUM(o))
	}
	qs := append(append([]float64{}, latencyQuantiles...), a.GetLatency().GetQuantile())
	sort.Float64s(qs)
	for i, q := range qs {
		if q <= 0 || (i > 0 && q == qs[i-1]) {
			continue
		}
		d := &latencyDetector{quantile: q}
		for _, o := range DefaultOddsRatios {
			d.cusums = append(d.cusums, NewCUSUM(o))
		}
		run.latency = append(run.latency, d)
	}
	// Split the budget: the error tests' part by ErrorWeights, the latency
	// tests' part evenly. A guardrail the spec leaves out spends nothing.
	errShare, latShare := 1-latencyShare, latencyShare
	switch {
	case a.GetErrorRate() == nil && a.GetLatency() == nil:
		errShare, latShare = 0, 0
	case a.GetLatency() == nil:
		errShare, latShare = 1, 0
	case a.GetErrorRate() == nil:
		errShare, latShare = 0, 1
	}
	for i, c := range run.errors {
		c.Weight = errShare * ErrorWeights[i]
	}
	for _, d := range run.latency {
		for _, c := range d.cusums {
			c.Weight = latShare / float64(len(run.latency)*len(d.cusums))
		}
	}
	return run
}

// threshold is detector c's alarm threshold at second sec.
func (run *seqRun) threshold(c *CUSUM, sec int64) float64 {
	if c.Weight <= 0 {
		return math.Inf(1)
	}
	intervals := max(int64(run.horizon/time.Second), 1)
	block := int((max(sec-run.first, 0))/intervals) + 1
	return AlarmThreshold(run.alpha, c.Weight, int(intervals), block)
}

// alarmed is the detector of cs over its threshold at sec, if any: the one
// furthest over.
func (run *seqRun) alarmed(cs []*CUSUM, sec int64) *CUSUM {
	c := run.top(cs, sec)
	if c.Statistic >= run.threshold(c, sec) {
		return c
	}
	return nil
}

// read feeds one second's reports to the detectors.
func (run *seqRun) read(sp *sv1.RolloutSpec, sec int64, reports []*nodeReport) {
	a := sp.GetAnalysis()
	cand, base := sp.GetTo(), sp.GetFrom()
	tot := secondTotals{sec: sec}
	var errStrata []Stratum
	// Each report's two parts, looked up once for every detector.
	type nodeParts struct {
		node       string
		cand, base backendPart
	}
	both := make([]nodeParts, 0, len(reports))
	// The old backend's rate so far: the same for every node of the second.
	nullOdds := run.errorNullOdds(a)
	for _, r := range reports {
		c, b := r.part(cand), r.part(base)
		if c.requests == 0 || b.requests == 0 {
			continue
		}
		both = append(both, nodeParts{r.node, c, b})
		errStrata = append(errStrata, Stratum{Node: r.node, CandRequests: c.requests, CandEvents: c.errors,
			BaseRequests: b.requests, BaseEvents: b.errors, NullOdds: nullOdds})
		tot.candRequests += c.requests
		tot.candErrors += c.errors
		tot.baseRequests += b.requests
		tot.baseErrors += b.errors
	}
	run.last = sec
	sort.Slice(both, func(i, j int) bool { return both[i].node < both[j].node })
	if run.alarm != nil {
		return
	}
	for _, c := range run.errors {
		c.Update(sec, errStrata)
	}
	if c := run.alarmed(run.errors, sec); c != nil {
		run.alarm = run.evidence("error_rate", "errors", c, sec, "errors")
	}

	// Latency: requests slower than the old backend's quantiles as they
	// stood before this second. An allowed increase (latency.maxIncrease, or
	// the measurement floor of spec.LatencyTolerance) moves the new
	// backend's threshold up by that much: the test is then against "no more
	// than that slower".
	if run.base.Count() >= minBaselineSamples {
		strata := make([]Stratum, 0, len(both))
		for _, d := range run.latency {
			d.threshold = run.base.Quantile(d.quantile)
			bi := sketch.IndexOf(d.threshold)
			ci := sketch.IndexOf(d.threshold + spec.LatencyTolerance(a, d.threshold))
			strata = strata[:0]
			for _, p := range both {
				if p.cand.latency == nil || p.base.latency == nil {
					continue
				}
				cn, cs := p.cand.latency.CountAbove(ci)
				bn, bs := p.base.latency.CountAbove(bi)
				if cn == 0 || bn == 0 {
					continue
				}
				strata = append(strata, Stratum{Node: p.node, CandRequests: uint64(cn), CandEvents: uint64(cs),
					BaseRequests: uint64(bn), BaseEvents: uint64(bs)})
				if d.quantile == a.GetLatency().GetQuantile() {
					tot.candLatency += cn
					tot.candSlow += cs
					tot.baseLatency += bn
					tot.baseSlow += bs
				}
			}
			for _, c := range d.cusums {
				c.Update(sec, strata)
			}
			if run.alarm == nil {
				if c := run.alarmed(d.cusums, sec); c != nil {
					run.alarm = run.evidence("latency", fmt.Sprintf("latency: requests slower than %s's p%s (%s)", base, pct(d.quantile), dur(d.threshold)),
						c, sec, "requests over "+dur(d.threshold))
				}
			}
		}
	}
	for _, p := range both {
		run.base.Merge(p.base.latency)
	}
	run.seconds = append(run.seconds, tot)
	if cut := sec - int64(Retention/time.Second); len(run.seconds) > 0 && run.seconds[0].sec < cut {
		i := sort.Search(len(run.seconds), func(i int) bool { return run.seconds[i].sec >= cut })
		run.seconds = append(run.seconds[:0], run.seconds[i:]...)
	}
}

// errorNullOdds turns errorRate.maxIncrease, an absolute tolerance, into the
// odds ratio the null allows at the old backend's rate so far.
func (run *seqRun) errorNullOdds(a *sv1.AnalysisSpec) float64 {
	inc := a.GetErrorRate().GetMaxIncrease()
	if inc <= 0 {
		return 1
	}
	var n, e uint64
	for _, s := range run.seconds {
		n += s.baseRequests
		e += s.baseErrors
	}
	rate := math.Max(float64(e+1)/float64(n+1), 1e-4)
	return (rate + inc) / rate
}

// top is the detector closest to (or furthest over) its threshold at sec.
func (run *seqRun) top(cs []*CUSUM, sec int64) *CUSUM {
	best := cs[0]
	for _, c := range cs[1:] {
		if c.Statistic-run.threshold(c, sec) > best.Statistic-run.threshold(best, sec) {
			best = c
		}
	}
	return best
}

func (run *seqRun) evidence(guardrail, test string, c *CUSUM, sec int64, events string) *sv1.Evidence {
	a := &sv1.SequentialEvidence{
		Test: test,
		Method: fmt.Sprintf("CUSUM of the log-likelihood ratio of the new backend's share of events, per node and second, given both backends' events there; "+
			"threshold log(horizon seconds / (falseAlarm × %.3g)), the detector's share of the false-alarm budget", c.Weight),
		Statistic: c.Statistic, Threshold: run.threshold(c, sec), OddsRatio: c.OddsRatio,
		Since: timestamppb.New(time.Unix(c.Since-1, 0)), At: timestamppb.New(time.Unix(sec, 0)),
		CandidateEvents: c.CandEvents, CandidateRequests: c.CandRequests,
		BaselineEvents: c.BaseEvents, BaselineRequests: c.BaseRequests,
		FalseAlarm: run.alpha, Horizon: durationpb.New(run.horizon),
	}
	if m := c.CandEvents + c.BaseEvents; m > 0 && c.CandRequests+c.BaseRequests > 0 {
		share := float64(c.CandRequests) / float64(c.CandRequests+c.BaseRequests)
		a.PValue = BinomialUpperTail(c.CandEvents, m, share)
	}
	for _, n := range c.Drivers() {
		v := c.Nodes[n]
		a.Nodes = append(a.Nodes, &sv1.NodeEvidence{Node: n, Contribution: v.Contribution,
			CandidateEvents: v.CandEvents, CandidateRequests: v.CandRequests, BaselineEvents: v.BaseEvents, BaselineRequests: v.BaseRequests})
	}
	return &sv1.Evidence{Guardrail: guardrail, Summary: sequentialSummary(a, events), Sequential: a}
}

// sequentialSummary says an alarm in one line an operator can check.
func sequentialSummary(a *sv1.SequentialEvidence, events string) string {
	rate := func(e, n uint64) string {
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f%%", 100*float64(e)/float64(n))
	}
	var nodes []string
	for i, n := range a.GetNodes() {
		if i == 3 {
			nodes = append(nodes, fmt.Sprintf("%d more", len(a.GetNodes())-3))
			break
		}
		nodes = append(nodes, fmt.Sprintf("%s (%+.1f)", n.GetNode(), n.GetContribution()))
	}
	return fmt.Sprintf("%s: new backend %d %s in %d requests (%s) vs old %d in %d (%s) on the same nodes since %s; "+
		"log-likelihood ratio %.1f reached the threshold %.1f (odds ×%g alternative; exact binomial p=%.2g); driven by %s",
		a.GetTest(), a.GetCandidateEvents(), events, a.GetCandidateRequests(), rate(a.GetCandidateEvents(), a.GetCandidateRequests()),
		a.GetBaselineEvents(), a.GetBaselineRequests(), rate(a.GetBaselineEvents(), a.GetBaselineRequests()),
		a.GetSince().AsTime().UTC().Format(time.TimeOnly), a.GetStatistic(), a.GetThreshold(), a.GetOddsRatio(), a.GetPValue(),
		strings.Join(nodes, ", "))
}

// NotWorse is the non-inferiority evidence of an analysis step: log
// e-values (nats) against "the new backend is worse by the margin", for
// errors and for latency over the old backend's guardrail quantile.
type NotWorse struct {
	// Needed is log(1/(1-passConfidence)).
	Needed float64
	Errors float64
	// Latency is NaN when the new backend sent no latency samples.
	Latency float64
	// Counts behind the figures.
	CandRequests, CandErrors, BaseRequests, BaseErrors uint64
	CandLatency, CandSlow, BaseLatency, BaseSlow       float64
}

// OK reports whether both tests reached the evidence needed.
func (n NotWorse) OK() bool {
	return n.Errors >= n.Needed && (math.IsNaN(n.Latency) || n.Latency >= n.Needed)
}

func (n NotWorse) String() string {
	s := fmt.Sprintf("not-worse evidence: errors %.1f of %.1f nats (%d errors in %d requests vs old %d in %d)",
		n.Errors, n.Needed, n.CandErrors, n.CandRequests, n.BaseErrors, n.BaseRequests)
	if math.IsNaN(n.Latency) {
		return s + "; latency: no samples"
	}
	return s + fmt.Sprintf("; latency %.1f of %.1f nats (%.0f of %.0f slow vs old %.0f of %.0f)",
		n.Latency, n.Needed, n.CandSlow, n.CandLatency, n.BaseSlow, n.BaseLatency)
}

func (run *seqRun) notWorse(a *sv1.AnalysisSpec, since time.Time) NotWorse {
	n := NotWorse{Needed: -math.Log(1 - spec.PassConfidence(a)), Latency: math.NaN()}
	from := since.Unix()
	for _, s := range run.seconds {
		if s.sec <= from {
			continue
		}
		n.CandRequests += s.candRequests
		n.CandErrors += s.candErrors
		n.BaseRequests += s.baseRequests
		n.BaseErrors += s.baseErrors
		n.CandLatency += s.candLatency
		n.CandSlow += s.candSlow
		n.BaseLatency += s.baseLatency
		n.BaseSlow += s.baseSlow
	}
	margin := spec.NonInferiority(a)
	baseRate := 0.0
	if n.BaseRequests > 0 {
		baseRate = float64(n.BaseErrors) / float64(n.BaseRequests)
	}
	n.Errors = NonInferiorityLogE(n.CandErrors, n.CandRequests, baseRate+a.GetErrorRate().GetMaxIncrease(), margin, NotWorseFloor)
	if n.CandLatency > 0 && n.BaseLatency > 0 {
		n.Latency = NonInferiorityLogE(uint64(n.CandSlow), uint64(n.CandLatency), n.BaseSlow/n.BaseLatency, margin, NotWorseFloor)
	}
	return n
}

// Status says in words where the detectors stand.
func (run *seqRun) status() string {
	if run.alarm != nil {
		return "alarm: " + run.alarm.GetSummary()
	}
	if run.last == 0 {
		return "sequential tests: no report with both backends yet"
	}
	top := run.top(run.errors, run.last)
	s := fmt.Sprintf("sequential tests (log-likelihood ratio of the detector nearest its threshold, nats): errors %.1f of %.1f (odds ×%g)",
		top.Statistic, run.threshold(top, run.last), top.OddsRatio)
	if run.base.Count() < minBaselineSamples {
		s += fmt.Sprintf("; latency waits for %d old-backend samples (%.0f so far)", minBaselineSamples, run.base.Count())
		return s
	}
	for _, d := range run.latency {
		c := run.top(d.cusums, run.last)
		s += fmt.Sprintf("; latency over p%s %s %.1f of %.1f", pct(d.quantile), dur(d.threshold), c.Statistic, run.threshold(c, run.last))
	}
	return s
}

// Reading is one sequential detector's state, for metrics.
type Reading struct {
	Rollout string
	// Test is "errors" or "latency_p" and the quantile ("latency_p99").
	Test      string
	OddsRatio float64
	// Statistic and Threshold are in nats; an alarm is raised when the
	// statistic reaches the threshold.
	Statistic, Threshold float64
}

// Readings are the rollout's detectors as of the newest second read.
func (run *seqRun) readings() []Reading {
	var out []Reading
	add := func(test string, cs []*CUSUM) {
		for _, c := range cs {
			if c.Weight <= 0 {
				continue
			}
			out = append(out, Reading{Rollout: run.rollout, Test: test, OddsRatio: c.OddsRatio,
				Statistic: c.Statistic, Threshold: run.threshold(c, max(run.last, run.first))})
		}
	}
	add("errors", run.errors)
	for _, d := range run.latency {
		add("latency_p"+pct(d.quantile), d.cusums)
	}
	return out
}

// SequentialReadings are the detectors of every rollout the store has
// sequential tests for, newest run per rollout.
func (s *Store) SequentialReadings() []Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	newest := map[string]*seqRun{}
	for _, run := range s.runs {
		if o := newest[run.rollout]; o == nil || run.first > o.first {
			newest[run.rollout] = run
		}
	}
	var out []Reading
	for _, run := range newest {
		out = append(out, run.readings()...)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Rollout != b.Rollout {
			return a.Rollout < b.Rollout
		}
		if a.Test != b.Test {
			return a.Test < b.Test
		}
		return a.OddsRatio < b.OddsRatio
	})
	return out
}
