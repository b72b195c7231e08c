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
	id       nodeID
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
	// slots number the nodes for the detectors' per-node counts: by the
	// store's node number, 0 for a node not numbered yet (a slice, not a
	// map: at a hundred thousand nodes a second a map's lookups miss the
	// cache).
	slots   []int32
	nslots  int32
	next    int64 // the next second (window end, unix) to read
	first   int64 // the first second of the canary
	errors  *Mixture
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
	test     *Mixture
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
	run.errors = NewMixture(DefaultOddsRatios, ErrorWeights)
	even := make([]float64, len(DefaultOddsRatios))
	for i := range even {
		even[i] = 1 / float64(len(even))
	}
	qs := append(append([]float64{}, latencyQuantiles...), a.GetLatency().GetQuantile())
	sort.Float64s(qs)
	for i, q := range qs {
		if q <= 0 || (i > 0 && q == qs[i-1]) {
			continue
		}
		run.latency = append(run.latency, &latencyDetector{quantile: q, test: NewMixture(DefaultOddsRatios, even)})
	}
	// Split the budget: half to the error test, half to the latency tests
	// in equal parts (within a test, the alternatives share its part: the
	// error test's by ErrorWeights, a latency test's evenly). A guardrail
	// the spec leaves out spends nothing.
	errShare, latShare := 1-latencyShare, latencyShare
	switch {
	case a.GetErrorRate() == nil && a.GetLatency() == nil:
		errShare, latShare = 0, 0
	case a.GetLatency() == nil:
		errShare, latShare = 1, 0
	case a.GetErrorRate() == nil:
		errShare, latShare = 0, 1
	}
	run.errors.Weight = errShare
	for _, d := range run.latency {
		d.test.Weight = latShare / float64(len(run.latency))
	}
	return run
}

// intervals is the horizon in seconds: the number of starts that share a
// test's budget.
func (run *seqRun) intervals() int {
	return int(max(int64(run.horizon/time.Second), 1))
}

// threshold is test m's alarm threshold.
func (run *seqRun) threshold(m *Mixture) float64 {
	if m.Weight <= 0 {
		return math.Inf(1)
	}
	return MixtureThreshold(run.alpha, m.Weight, run.intervals())
}

// update adds a second's strata to test m and reports whether it reached
// its threshold.
func (run *seqRun) update(m *Mixture, sec int64, strata []Stratum) bool {
	m.Update(sec, StartWeight(sec-run.first, run.intervals()), strata)
	return m.Statistic >= run.threshold(m)
}

// read feeds one second's reports to the tests.
// slot numbers a node for every detector of the run (Stratum.slot), from 1.
func (run *seqRun) slot(id nodeID) int32 {
	if int(id) >= len(run.slots) {
		run.slots = append(run.slots, make([]int32, int(id)+1-len(run.slots))...)
	}
	n := run.slots[id]
	if n == 0 {
		run.nslots++
		n = run.nslots
		run.slots[id] = n
	}
	return n
}

func (run *seqRun) read(sp *sv1.RolloutSpec, sec int64, reports []*nodeReport) {
	a := sp.GetAnalysis()
	cand, base := sp.GetTo(), sp.GetFrom()
	tot := secondTotals{sec: sec}
	var errStrata []Stratum
	// Each report's two parts, looked up once for every detector.
	type nodeParts struct {
		node       string
		slot       int32
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
		slot := run.slot(r.id)
		both = append(both, nodeParts{r.node, slot, c, b})
		errStrata = append(errStrata, Stratum{Node: r.node, CandRequests: c.requests, CandEvents: c.errors,
			BaseRequests: b.requests, BaseEvents: b.errors, NullOdds: nullOdds, slot: slot})
		tot.candRequests += c.requests
		tot.candErrors += c.errors
		tot.baseRequests += b.requests
		tot.baseErrors += b.errors
	}
	// Strata stay in the order the reports came: the tests sum them, so
	// order changes a statistic by rounding at most, and sorting a fleet's
	// reports by name every second cost the judge a quarter of its time.
	run.last = sec
	if run.alarm != nil {
		return
	}
	if run.update(run.errors, sec, errStrata) {
		run.alarm = run.evidence("error_rate", "errors", run.errors, sec, "errors")
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
					BaseRequests: uint64(bn), BaseEvents: uint64(bs), slot: p.slot})
				if d.quantile == a.GetLatency().GetQuantile() {
					tot.candLatency += cn
					tot.candSlow += cs
					tot.baseLatency += bn
					tot.baseSlow += bs
				}
			}
			if run.update(d.test, sec, strata) && run.alarm == nil {
				run.alarm = run.evidence("latency", fmt.Sprintf("latency: requests slower than %s's p%s (%s)", base, pct(d.quantile), dur(d.threshold)),
					d.test, sec, "requests over "+dur(d.threshold))
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

func (run *seqRun) evidence(guardrail, test string, m *Mixture, sec int64, events string) *sv1.Evidence {
	lead := m.Leading()
	c := lead.Run
	a := &sv1.SequentialEvidence{
		Test: test,
		Method: fmt.Sprintf("Shiryaev–Roberts mixture over start seconds and odds alternatives ×%s (shares %s) of the likelihood ratio of the new backend's share of events, "+
			"per node and second, given both backends' events there; threshold log(horizon seconds / (falseAlarm × %.3g)), the test's share of the false-alarm budget",
			joinFloats(m, func(a *Alternative) float64 { return a.OddsRatio }, ", ×"), joinFloats(m, func(a *Alternative) float64 { return a.Share }, ", "), m.Weight),
		Statistic: m.Statistic, Threshold: run.threshold(m), OddsRatio: lead.OddsRatio, RunStatistic: c.Statistic,
		Since: timestamppb.New(time.Unix(c.Since-1, 0)), At: timestamppb.New(time.Unix(sec, 0)),
		CandidateEvents: c.CandEvents, CandidateRequests: c.CandRequests,
		BaselineEvents: c.BaseEvents, BaselineRequests: c.BaseRequests,
		FalseAlarm: run.alpha, Horizon: durationpb.New(run.horizon),
	}
	if m := c.CandEvents + c.BaseEvents; m > 0 && c.CandRequests+c.BaseRequests > 0 {
		share := float64(c.CandRequests) / float64(c.CandRequests+c.BaseRequests)
		a.PValue = BinomialUpperTail(c.CandEvents, m, share)
	}
	for _, v := range c.driverCounts() {
		a.Nodes = append(a.Nodes, &sv1.NodeEvidence{Node: v.node, Contribution: v.Contribution,
			CandidateEvents: v.CandEvents, CandidateRequests: v.CandRequests, BaselineEvents: v.BaseEvents, BaselineRequests: v.BaseRequests})
	}
	return &sv1.Evidence{Guardrail: guardrail, Summary: sequentialSummary(a, events), Sequential: a}
}

func joinFloats(m *Mixture, f func(*Alternative) float64, sep string) string {
	var out []string
	for _, a := range m.Alternatives {
		out = append(out, fmt.Sprintf("%.3g", f(a)))
	}
	return strings.Join(out, sep)
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
		"evidence (log of the mixture over starts and alternatives) %.1f reached the threshold %.1f; "+
		"leading alternative odds ×%g, its log-likelihood ratio since then %.1f (exact binomial p=%.2g); driven by %s",
		a.GetTest(), a.GetCandidateEvents(), events, a.GetCandidateRequests(), rate(a.GetCandidateEvents(), a.GetCandidateRequests()),
		a.GetBaselineEvents(), a.GetBaselineRequests(), rate(a.GetBaselineEvents(), a.GetBaselineRequests()),
		a.GetSince().AsTime().UTC().Format(time.TimeOnly)+" UTC", a.GetStatistic(), a.GetThreshold(), a.GetOddsRatio(), a.GetRunStatistic(), a.GetPValue(),
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
	// LatencyPending: agents send latency, but the latency test has no
	// evidence yet (the old backend's thresholds wait for
	// minBaselineSamples, BaseSamples so far): not a pass.
	LatencyPending bool
	BaseSamples    float64
	// Counts behind the figures.
	CandRequests, CandErrors, BaseRequests, BaseErrors uint64
	CandLatency, CandSlow, BaseLatency, BaseSlow       float64
}

// OK reports whether both tests reached the evidence needed.
func (n NotWorse) OK() bool {
	return n.Errors >= n.Needed && !n.LatencyPending && (math.IsNaN(n.Latency) || n.Latency >= n.Needed)
}

func (n NotWorse) String() string {
	s := fmt.Sprintf("not-worse evidence: errors %.1f of %.1f nats (%d errors in %d requests vs old %d in %d)",
		n.Errors, n.Needed, n.CandErrors, n.CandRequests, n.BaseErrors, n.BaseRequests)
	if n.LatencyPending {
		return s + fmt.Sprintf("; latency: waits for %d old-backend samples (%.0f so far)", minBaselineSamples, n.BaseSamples)
	}
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
	// Agents that send latency owe the step its latency evidence too;
	// only where none comes does the step pass on errors alone.
	if a.GetLatency() != nil && math.IsNaN(n.Latency) && run.base.Count() > 0 && run.base.Count() < minBaselineSamples {
		n.LatencyPending, n.BaseSamples = true, run.base.Count()
	}
	return n
}

// Status says in words where the tests stand.
func (run *seqRun) status() string {
	if run.alarm != nil {
		return "alarm: " + run.alarm.GetSummary()
	}
	if run.last == 0 {
		return "sequential tests: no report with both backends yet"
	}
	s := fmt.Sprintf("sequential tests (log of the mixture over starts and alternatives, nats): errors %s of %.1f",
		nats(run.errors.Statistic), run.threshold(run.errors))
	if run.base.Count() < minBaselineSamples {
		s += fmt.Sprintf("; latency waits for %d old-backend samples (%.0f so far)", minBaselineSamples, run.base.Count())
		return s
	}
	for _, d := range run.latency {
		s += fmt.Sprintf("; latency over p%s %s %s of %.1f", pct(d.quantile), dur(d.threshold), nats(d.test.Statistic), run.threshold(d.test))
	}
	return s
}

// nats prints a statistic; before the first start it has no value.
func nats(v float64) string {
	if math.IsInf(v, -1) {
		return "-"
	}
	return fmt.Sprintf("%.1f", v)
}

// Reading is one sequential test's state, for metrics.
type Reading struct {
	Rollout string
	// Test is "errors" or "latency_p" and the quantile ("latency_p99").
	Test string
	// Statistic and Threshold are in nats; an alarm is raised when the
	// statistic reaches the threshold. Before the first second read the
	// statistic is -Inf.
	Statistic, Threshold float64
}

// Readings are the rollout's tests as of the newest second read.
func (run *seqRun) readings() []Reading {
	var out []Reading
	add := func(test string, m *Mixture) {
		if m.Weight > 0 {
			out = append(out, Reading{Rollout: run.rollout, Test: test, Statistic: m.Statistic, Threshold: run.threshold(m)})
		}
	}
	add("errors", run.errors)
	for _, d := range run.latency {
		add("latency_p"+pct(d.quantile), d.test)
	}
	return out
}

// SequentialReadings are the tests of every rollout the store has
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
		return a.Test < b.Test
	})
	return out
}
