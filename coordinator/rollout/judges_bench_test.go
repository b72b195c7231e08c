package rollout

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The judges study: every judge sees the same telemetry from an honest
// generator, in lockstep, through the same controller code as the leader.
// BenchmarkJudges_Power and BenchmarkJudges_FalseRollbacks print the tables
// quoted in docs/rollouts.md.

// honest are the generator's parameters; they are printed with the tables.
type honest struct {
	// Name says which world the parameters describe.
	Name  string
	Nodes int
	// Rate is each node's mean requests per second; GreenShare of them go
	// to green.
	Rate       float64
	GreenShare float64
	// NodeSpread: each node's load, error rate and latency are scaled by a
	// factor drawn uniformly from [1-NodeSpread, 1+NodeSpread].
	NodeSpread float64
	// BaseErr is the mean error rate of both backends.
	BaseErr float64
	// Overdispersion: each backend's error probability on each node in each
	// second is BaseErr times a lognormal factor of this sigma (mean 1).
	Overdispersion float64
	// BurstProb is the chance per node, backend and second of an error
	// burst of BurstErr on that backend alone.
	BurstProb, BurstErr float64
	// Latency: lognormal body with this median and sigma, and a Pareto
	// tail: TailProb of requests add Pareto(TailMin, TailAlpha).
	Median, Sigma       time.Duration
	TailProb, TailAlpha float64
	TailMin             time.Duration
	SwingAmp            float64 // load swings ±SwingAmp, period 60..300 s
	// Flash crowds: on each node, on average one every FlashEvery
	// (Poisson), multiplying its load by FlashMin..FlashMax for
	// FlashLenMin..FlashLenMax (uniform); 0: none.
	FlashEvery               time.Duration
	FlashMin, FlashMax       float64
	FlashLenMin, FlashLenMax time.Duration
	// DiurnalAmp: the fleet's load follows 1 ± DiurnalAmp over 24 h from a
	// random time of day, scaled so that it is Rate at the canary's start.
	DiurnalAmp                   float64
	IncidentProb                 float64 // chance per run of a fleet-wide incident
	IncidentLen                  time.Duration
	IncidentErr, IncidentLatency float64 // added errors and latency factor, both backends
}

// honestDefaults is the rough world: load swinging ±60% within minutes in
// every run.
var honestDefaults = honest{
	Name:  "rough",
	Nodes: 10, Rate: 100, GreenShare: 0.1, NodeSpread: 0.5, BaseErr: 0.005,
	Overdispersion: 0.5, BurstProb: 0.0005, BurstErr: 0.2,
	Median: 20 * time.Millisecond, Sigma: 350 * time.Millisecond, TailProb: 0.005, TailAlpha: 1.5, TailMin: 30 * time.Millisecond,
	SwingAmp: 0.6, IncidentProb: 0.5, IncidentLen: 40 * time.Second, IncidentErr: 0.02, IncidentLatency: 2,
}

// edgeWorld is the edge world: the same nodes, errors, latency and
// incidents, with load shaped as a point of presence sees it: minute-scale
// swings of ±25%, flash crowds of ×2–3 for 5–30 s about every 10 minutes
// on each node, and the slow drift of the daily cycle (±50% over 24 h).
var edgeWorld = func() honest {
	h := honestDefaults
	h.Name = "edge"
	h.SwingAmp = 0.25
	h.FlashEvery, h.FlashMin, h.FlashMax = 10*time.Minute, 2, 3
	h.FlashLenMin, h.FlashLenMax = 5*time.Second, 30*time.Second
	h.DiurnalAmp = 0.5
	return h
}()

func (h honest) String() string {
	load := fmt.Sprintf("load swings ±%.0f%% (period 60–300 s)", 100*h.SwingAmp)
	if h.FlashEvery > 0 {
		load += fmt.Sprintf(", flash crowds ×%g–%g for %s–%s about every %s per node", h.FlashMin, h.FlashMax, h.FlashLenMin, h.FlashLenMax, h.FlashEvery)
	}
	if h.DiurnalAmp > 0 {
		load += fmt.Sprintf(", daily drift ±%.0f%% over 24 h", 100*h.DiurnalAmp)
	}
	return fmt.Sprintf("%s world: %s", h.Name, h.details(load))
}

func (h honest) details(load string) string {
	return fmt.Sprintf("%d nodes × %.0f req/s (±%.0f%% per node in load, errors and latency), green %.0f%%; errors %.2f%% with lognormal(σ=%.1f) overdispersion per node·backend·second "+
		"and %.2f%% chance of a %.0f%% one-backend burst; latency lognormal median %s σ=%.2f plus %.1f%% Pareto(%s, α=%.1f) tail; "+
		"%s; in %.0f%% of runs a %s fleet-wide incident (+%.0f points errors, ×%.0f latency, both backends)",
		h.Nodes, h.Rate, 100*h.NodeSpread, 100*h.GreenShare, 100*h.BaseErr, h.Overdispersion, 100*h.BurstProb, 100*h.BurstErr,
		h.Median, h.Sigma.Seconds()*1000/1000, 100*h.TailProb, h.TailMin, h.TailAlpha, load, 100*h.IncidentProb, h.IncidentLen,
		100*h.IncidentErr, h.IncidentLatency)
}

// regressionKind is what goes wrong with green after the onset.
type regressionKind struct {
	name     string
	err      float64       // green's error rate after the onset (0: unchanged)
	shift    time.Duration // added to every green request
	tailProb float64       // share of green requests that get tailAdd
	tailAdd  time.Duration
}

// world is one run's generator state.
type world struct {
	h                       honest
	rng                     *rand.Rand
	nodeLoad, nodeErr, nLat []float64
	period, phase           float64
	incident                time.Duration // start, or -1
	onset                   time.Duration // -1: never
	bad                     regressionKind
	// flashes are each node's flash crowds; diurnal the phase of the day.
	flashes [][]flash
	diurnal float64
}

type flash struct {
	from, to time.Duration
	factor   float64
}

// flashHorizon is how far ahead the flash crowds of a run are drawn: longer
// than any run.
const flashHorizon = 20 * time.Minute

func newWorld(h honest, seed uint64, onset time.Duration, bad regressionKind) *world {
	w := &world{h: h, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), onset: onset, bad: bad, incident: -1}
	spread := func() float64 { return 1 - h.NodeSpread + 2*h.NodeSpread*w.rng.Float64() }
	for range h.Nodes {
		w.nodeLoad = append(w.nodeLoad, spread())
		w.nodeErr = append(w.nodeErr, spread())
		w.nLat = append(w.nLat, spread())
	}
	w.period = 60 + 240*w.rng.Float64()
	w.phase = 2 * math.Pi * w.rng.Float64()
	if w.rng.Float64() < h.IncidentProb {
		w.incident = time.Duration(w.rng.Float64() * float64(9*time.Minute))
	}
	// The load's shape comes from its own stream, so a world without it
	// draws exactly the telemetry it drew before.
	shape := rand.New(rand.NewPCG(seed^0x2545f4914f6cdd1d, 23))
	w.diurnal = 2 * math.Pi * shape.Float64()
	w.flashes = make([][]flash, h.Nodes)
	for i := range w.flashes {
		if h.FlashEvery <= 0 {
			break
		}
		for at := time.Duration(0); ; {
			at += time.Duration(shape.ExpFloat64() * float64(h.FlashEvery))
			if at > flashHorizon {
				break
			}
			length := h.FlashLenMin + time.Duration(shape.Float64()*float64(h.FlashLenMax-h.FlashLenMin))
			w.flashes[i] = append(w.flashes[i], flash{from: at, to: at + length, factor: h.FlashMin + shape.Float64()*(h.FlashMax-h.FlashMin)})
		}
	}
	return w
}

// load is node i's load factor in the second that starts at s seconds:
// the swing, the daily drift and any flash crowd on the node.
func (w *world) load(i int, s float64, swing float64) float64 {
	f := swing
	if a := w.h.DiurnalAmp; a > 0 {
		const day = 24 * 3600
		f *= (1 + a*math.Sin(2*math.Pi*s/day+w.diurnal)) / (1 + a*math.Sin(w.diurnal))
	}
	at := time.Duration(s * float64(time.Second))
	for _, fl := range w.flashes[i] {
		if at >= fl.from && at < fl.to {
			f *= fl.factor
		}
	}
	return f
}

func (w *world) poisson(mean float64) int {
	if mean <= 0 {
		return 0
	}
	if mean > 30 {
		return max(0, int(math.Round(mean+math.Sqrt(mean)*w.rng.NormFloat64())))
	}
	l, k, p := math.Exp(-mean), 0, 1.0
	for {
		p *= w.rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

func (w *world) binomial(n int, p float64) int {
	if n <= 0 || p <= 0 {
		return 0
	}
	if p >= 1 {
		return n
	}
	if float64(n)*p < 20 {
		// Poisson thinning: count successes by geometric skips.
		k, i := 0, 0
		lq := math.Log1p(-p)
		for {
			i += int(math.Log(1-w.rng.Float64())/lq) + 1
			if i > n {
				return k
			}
			k++
		}
	}
	v := int(math.Round(float64(n)*p + math.Sqrt(float64(n)*p*(1-p))*w.rng.NormFloat64()))
	return min(n, max(0, v))
}

// backend generates one backend's telemetry on node i for n requests of
// which nBad came after the onset.
func (w *world) backend(i, n, nBad int, incident, green bool) (errs int, lat *sketch.Sketch) {
	h := w.h
	errFor := func(bad bool) float64 {
		p := h.BaseErr * w.nodeErr[i]
		if bad && w.bad.err > 0 {
			p = w.bad.err * w.nodeErr[i]
		}
		p *= math.Exp(h.Overdispersion*w.rng.NormFloat64() - h.Overdispersion*h.Overdispersion/2)
		if incident {
			p += h.IncidentErr
		}
		return math.Min(p, 1)
	}
	burst := w.rng.Float64() < h.BurstProb
	for part, count := range []int{n - nBad, nBad} {
		p := errFor(part == 1)
		if burst {
			p = math.Max(p, h.BurstErr)
		}
		errs += w.binomial(count, p)
	}
	lat = sketch.New()
	mul := w.nLat[i]
	if incident {
		mul *= h.IncidentLatency
	}
	median, sigma := h.Median.Seconds()*mul, h.Sigma.Seconds()
	for k := range n {
		v := median * math.Exp(sigma*w.rng.NormFloat64())
		if w.rng.Float64() < h.TailProb {
			v += h.TailMin.Seconds() * math.Pow(1-w.rng.Float64(), -1/h.TailAlpha)
		}
		if green && k < nBad {
			v += w.bad.shift.Seconds()
			if w.bad.tailProb > 0 && w.rng.Float64() < w.bad.tailProb {
				v += w.bad.tailAdd.Seconds()
			}
		}
		lat.Add(v)
	}
	return errs, lat
}

// second generates every node's report for the second ending at end
// (offset from the start of the run).
func (w *world) second(t0 time.Time, end time.Duration) []*sv1.HealthReport {
	h := w.h
	s := (end - time.Second).Seconds()
	swing := 1 + h.SwingAmp*math.Sin(2*math.Pi*s/w.period+w.phase)
	incident := w.incident >= 0 && end > w.incident && end-time.Second < w.incident+h.IncidentLen
	// The share of this second after the onset.
	badShare := 0.0
	if w.onset >= 0 && end > w.onset {
		badShare = math.Min(1, (end - w.onset).Seconds())
	}
	out := make([]*sv1.HealthReport, 0, h.Nodes)
	for i := range h.Nodes {
		n := w.poisson(h.Rate * w.nodeLoad[i] * w.load(i, s, swing))
		ng := w.binomial(n, h.GreenShare)
		nb := n - ng
		gBad := w.binomial(ng, badShare)
		ge, gl := w.backend(i, ng, gBad, incident, true)
		be, bl := w.backend(i, nb, 0, incident, false)
		out = append(out, &sv1.HealthReport{Node: fmt.Sprintf("edge-%02d", i+1), Service: "web", Generation: 2,
			WindowStart: timestamppb.New(t0.Add(end - time.Second)), WindowEnd: timestamppb.New(t0.Add(end)),
			Backends: []*sv1.BackendHealth{
				{Backend: "green", Requests: uint64(ng), Errors: uint64(ge), Latency: gl.ToProto(), Weight: 10},
				{Backend: "blue", Requests: uint64(nb), Errors: uint64(be), Latency: bl.ToProto(), Weight: 90},
			}})
	}
	return out
}

// judgeKind builds a judge over a store.
type judgeKind struct {
	name  string
	yaml  string // the analysis section of its spec
	build func(*analysis.Store) Analyzer
}

const judgeSpec = `
version: v1
name: %s
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 10
      - pause: {duration: 10m}
%s`

var judges = []judgeKind{
	{name: "switchyard (sequential)"},
	{name: "windows×2 + margin (previous judge)", yaml: "analysis:\n  method: windows\n"},
	{name: "Flagger-style 1m, threshold 1", build: func(s *analysis.Store) Analyzer {
		return &fixedJudge{store: s, interval: time.Minute, maxErr: 0.01, maxP99: 500 * time.Millisecond, threshold: 1}
	}},
	{name: "Flagger-style 1m, threshold 5", build: func(s *analysis.Store) Analyzer {
		return &fixedJudge{store: s, interval: time.Minute, maxErr: 0.01, maxP99: 500 * time.Millisecond, threshold: 5}
	}},
	{name: "Kayenta-style Mann-Whitney per 1m", build: func(s *analysis.Store) Analyzer { return &kayentaJudge{store: s, interval: time.Minute, alpha: 0.02} }},
}

// lane is one judge's rollout in a lockstep run.
type lane struct {
	id       string
	st       *state.State
	store    *analysis.Store
	ctl      *Controller
	decided  time.Duration
	rollback bool
	why      string // the rollback's evidence
}

// lockstep runs every judge on the same generated telemetry for length and
// returns, per judge, the time of its rollback decision (ok false: none)
// and its evidence.
func lockstep(tb testing.TB, w *world, length time.Duration) (at []time.Duration, ok []bool, why []string) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	// One store holds the telemetry for every judge: each reads it its own
	// way, and the store keeps the sequential and windows verdicts apart.
	store := analysis.NewStore()
	lanes := make([]*lane, len(judges))
	for j, jk := range judges {
		l := &lane{id: "web-canary", st: state.New(), store: store}
		sp, err := spec.Parse([]byte(fmt.Sprintf(judgeSpec, l.id, jk.yaml)))
		if err != nil {
			tb.Fatal(err)
		}
		l.st.ApplyIntent(1, &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i",
			Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}})
		var an Analyzer = l.store
		if jk.build != nil {
			an = jk.build(l.store)
		}
		l.ctl = &Controller{State: l.st, Raft: &memRaft{st: l.st, index: 1}, Fleet: instantFleet{live: w.h.Nodes}, Analyzer: an,
			OnDecision: func(_ *sv1.Rollout, d Decision, now time.Time) {
				if d.Action == Rollback && !l.rollback {
					l.rollback, l.decided, l.why = true, now.Sub(t0), d.Evidence.GetSummary()
				}
			}}
		lanes[j] = l
	}
	// Reports land on whole seconds and are read 1.5 s later (Grace), so a
	// 500 ms tick decides at the same moments as the leader's 250 ms one.
	const tick = 500 * time.Millisecond
	for now := tick; now <= length; now += tick {
		if now%time.Second == 0 {
			for _, r := range w.second(t0, now) {
				r.RolloutId = "web-canary"
				if err := store.Add(r); err != nil {
					tb.Fatal(err)
				}
			}
		}
		live := false
		for _, l := range lanes {
			if l.rollback {
				continue
			}
			live = true
			if err := l.ctl.Step(t0.Add(now)); err != nil {
				tb.Fatal(err)
			}
		}
		if !live {
			break
		}
	}
	for _, l := range lanes {
		at, ok, why = append(at, l.decided), append(ok, l.rollback), append(why, l.why)
	}
	return at, ok, why
}

// kayentaJudge is a Kayenta-style judge: at the end of every interval it
// compares green with blue over that interval with a Mann-Whitney U test
// on each metric's per-second series (error rate, p99), and fails the
// canary when a metric is worse at the given alpha (with two metrics, one
// failure puts the score at 50, under Kayenta's usual marginal 75).
type kayentaJudge struct {
	store    *analysis.Store
	interval time.Duration
	alpha    float64
	// checked is the last interval end judged; a closed interval's verdict
	// never changes.
	checked time.Time
}

func (k *kayentaJudge) Assess(r *sv1.Rollout, now time.Time) analysis.Assessment {
	start := r.GetCreatedAt().AsTime()
	sp := r.GetSpec()
	first := start.Add(k.interval)
	if !k.checked.IsZero() {
		first = k.checked.Add(k.interval)
	}
	for check := first; !check.After(now.Add(-analysis.Grace)); check = check.Add(k.interval) {
		k.checked = check
		var ge, be, gp, bp []float64
		for s := check.Add(-k.interval); s.Before(check); s = s.Add(time.Second) {
			g := k.store.Window(sp.GetService(), r.GetId(), sp.GetTo(), analysis.AnyWave, s, s.Add(time.Second))
			b := k.store.Window(sp.GetService(), r.GetId(), sp.GetFrom(), analysis.AnyWave, s, s.Add(time.Second))
			if g.Requests == 0 || b.Requests == 0 {
				continue
			}
			ge = append(ge, float64(g.Errors)/float64(g.Requests))
			be = append(be, float64(b.Errors)/float64(b.Requests))
			gp = append(gp, g.Latency.Quantile(0.99))
			bp = append(bp, b.Latency.Quantile(0.99))
		}
		for _, m := range []struct {
			name string
			g, b []float64
		}{{"error rate", ge, be}, {"p99", gp, bp}} {
			if p := mannWhitneyGreater(m.g, m.b); len(m.g) >= 10 && p < k.alpha {
				return analysis.Assessment{Breach: &sv1.Evidence{Guardrail: "kayenta",
					Summary: fmt.Sprintf("interval ending %s: %s higher (Mann-Whitney p=%.3g)", check.Sub(start), m.name, p)}}
			}
		}
	}
	return analysis.Assessment{}
}

// mannWhitneyGreater is the one-sided normal-approximation p-value that a
// tends to exceed b, with midranks for ties.
func mannWhitneyGreater(a, b []float64) float64 {
	type obs struct {
		v     float64
		fromA bool
	}
	all := make([]obs, 0, len(a)+len(b))
	for _, v := range a {
		all = append(all, obs{v, true})
	}
	for _, v := range b {
		all = append(all, obs{v, false})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].v < all[j].v })
	n1, n2 := float64(len(a)), float64(len(b))
	if n1 == 0 || n2 == 0 {
		return 1
	}
	var rankA, ties float64
	for i := 0; i < len(all); {
		j := i
		for j < len(all) && all[j].v == all[i].v {
			j++
		}
		mid := float64(i+j+1) / 2
		t := float64(j - i)
		ties += t*t*t - t
		for k := i; k < j; k++ {
			if all[k].fromA {
				rankA += mid
			}
		}
		i = j
	}
	u := rankA - n1*(n1+1)/2
	n := n1 + n2
	v := n1 * n2 / 12 * ((n + 1) - ties/(n*(n-1)))
	if v <= 0 {
		return 1
	}
	z := (u - n1*n2/2) / math.Sqrt(v)
	return 0.5 * math.Erfc(z/math.Sqrt2)
}

// parallel runs f(i) for i in [0, n) on every core.
func parallel(n int, f func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				f(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return math.NaN()
	}
	return sorted[min(len(sorted)-1, int(math.Ceil(q*float64(len(sorted))))-1)]
}

func fmtSeconds(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.1f s", v)
}

// BenchmarkJudges_Power prints median and p90 time from the regression's
// onset (uniform in 30..90 s, not on a window boundary) to the rollback
// decision, per scenario, fleet and judge.
func BenchmarkJudges_Power(b *testing.B) {
	runs := envInt("SWITCHYARD_POWER_RUNS", 20)
	scenarios := []regressionKind{
		{name: "errors 0.5% → 1%", err: 0.01},
		{name: "errors 0.5% → 2%", err: 0.02},
		{name: "errors 0.5% → 3%", err: 0.03},
		{name: "errors 0.5% → 5%", err: 0.05},
		{name: "errors 0.5% → 20%", err: 0.2},
		{name: "latency +20 ms every request", shift: 20 * time.Millisecond},
		{name: "latency +100 ms every request", shift: 100 * time.Millisecond},
		{name: "tail: 1% of requests +300 ms", tailProb: 0.01, tailAdd: 300 * time.Millisecond},
		{name: "tail: 5% of requests +300 ms", tailProb: 0.05, tailAdd: 300 * time.Millisecond},
	}
	var fleets []honest
	for _, h := range worlds(b, "SWITCHYARD_POWER_WORLDS", "rough,edge") {
		small := h
		small.Nodes, small.Rate = 1, 20
		fleets = append(fleets, h, small)
	}
	const window = 5 * time.Minute // a regression not caught within this is "missed"
	for range b.N {
		out := &strings.Builder{}
		for _, h := range fleets {
			fmt.Fprintf(out, "\nPower, %d runs per row; generator: %s\n", runs, h)
			fmt.Fprintf(out, "| regression | judge | median | p90 | missed in %s |\n|---|---|---|---|---|\n", window)
			for si, sc := range scenarios {
				times := make([][]float64, len(judges))
				missed := make([]int, len(judges))
				var mu sync.Mutex
				parallel(runs, func(i int) {
					seed := uint64(1000*(si+1) + i + 1)
					onsetRng := rand.New(rand.NewPCG(seed, 17))
					onset := 30*time.Second + time.Duration(onsetRng.Float64()*float64(60*time.Second))
					at, ok, _ := lockstep(b, newWorld(h, seed, onset, sc), onset+window)
					mu.Lock()
					defer mu.Unlock()
					for j := range judges {
						if ok[j] && at[j] >= onset {
							times[j] = append(times[j], (at[j] - onset).Seconds())
						} else {
							missed[j]++ // never, or a false alarm before the onset
						}
					}
				})
				for j, jk := range judges {
					slices.Sort(times[j])
					// Missed runs count as slower than any caught one.
					all := slices.Clone(times[j])
					for range missed[j] {
						all = append(all, math.Inf(1))
					}
					med, p90 := quantile(all, 0.5), quantile(all, 0.9)
					fmt.Fprintf(out, "| %s | %s | %s | %s | %d |\n", sc.name, jk.name, fmtInf(med), fmtInf(p90), missed[j])
				}
			}
		}
		fmt.Print(out.String())
	}
}

func fmtInf(v float64) string {
	if math.IsInf(v, 1) {
		return "missed"
	}
	return fmtSeconds(v)
}

// BenchmarkJudges_FalseRollbacks runs healthy A/A canaries of 10 minutes
// (green exactly as good as blue) and prints each judge's false-rollback
// rate with its 95% Wilson interval. SWITCHYARD_AA_FIRST skips that many
// runs' seeds, so a study can be split across processes and its counts
// added up.
func BenchmarkJudges_FalseRollbacks(b *testing.B) {
	runs := envInt("SWITCHYARD_AA_RUNS", 2000)
	first := envInt("SWITCHYARD_AA_FIRST", 0)
	for range b.N {
		for _, h := range worlds(b, "SWITCHYARD_AA_WORLDS", "rough") {
			falseRollbacks(b, h, first, runs)
		}
	}
}

// worlds are the generator settings named in the environment variable
// (a comma-separated list of rough and edge), or in def.
func worlds(b *testing.B, env, def string) []honest {
	names := os.Getenv(env)
	if names == "" {
		names = def
	}
	var out []honest
	for _, n := range strings.Split(names, ",") {
		switch strings.TrimSpace(n) {
		case honestDefaults.Name:
			out = append(out, honestDefaults)
		case edgeWorld.Name:
			out = append(out, edgeWorld)
		default:
			b.Fatalf("%s: unknown world %q (want %s or %s)", env, n, honestDefaults.Name, edgeWorld.Name)
		}
	}
	return out
}

func falseRollbacks(b *testing.B, h honest, first, runs int) {
	const length = 10 * time.Minute
	falses := make([]int, len(judges))
	var seqWhy []string
	inIncident := make([]int, len(judges))
	done := 0
	var mu sync.Mutex
	parallel(runs, func(i int) {
		seed := uint64(500000 + first + i)
		w := newWorld(h, seed, -1, regressionKind{})
		at, ok, why := lockstep(b, w, length)
		mu.Lock()
		defer mu.Unlock()
		for j := range judges {
			if ok[j] {
				if j == 0 {
					// Say what raised the sequential judge's
					// false alarms.
					seqWhy = append(seqWhy, fmt.Sprintf("seed %d at %s: %s", seed, at[j], why[j]))
				}
				falses[j]++
				if w.incident >= 0 {
					inIncident[j]++
				}
			}
		}
		// Progress on stderr, so a long study can be followed (and
		// its partial counts read) while it runs.
		if done++; done%100 == 0 {
			fmt.Fprintf(os.Stderr, "A/A (%s world): %d of %d runs, false rollbacks per judge %v\n", h.Name, done, runs, falses)
		}
	})
	out := &strings.Builder{}
	fmt.Fprintf(out, "\nFalse rollbacks over %d A/A runs of %s (seeds %d–%d); generator: %s\n", runs, length, 500000+first, 500000+first+runs-1, h)
	fmt.Fprintf(out, "| judge | false rollbacks | rate | 95%% interval | of which in runs with an incident |\n|---|---|---|---|---|\n")
	for j, jk := range judges {
		lo, hi := wilson(falses[j], runs)
		fmt.Fprintf(out, "| %s | %d | %.2f%% | %.2f%%–%.2f%% | %d |\n", jk.name, falses[j], 100*float64(falses[j])/float64(runs), 100*lo, 100*hi, inIncident[j])
		b.ReportMetric(100*float64(falses[j])/float64(runs), fmt.Sprintf("false_rollback_pct_%s_%d", h.Name, j))
	}
	sort.Strings(seqWhy)
	for _, w := range seqWhy {
		fmt.Fprintf(out, "\n%s false rollback, %s\n", judges[0].name, w)
	}
	fmt.Print(out.String())
}

// wilson is the 95% Wilson score interval of k successes in n.
func wilson(k, n int) (lo, hi float64) {
	const z = 1.959963984540054
	p, nf := float64(k)/float64(n), float64(n)
	c := (p + z*z/(2*nf)) / (1 + z*z/nf)
	d := z * math.Sqrt(p*(1-p)/nf+z*z/(4*nf*nf)) / (1 + z*z/nf)
	return math.Max(0, c-d), math.Min(1, c+d)
}

func envInt(name string, def int) int {
	var v int
	if _, err := fmt.Sscan(os.Getenv(name), &v); err == nil && v > 0 {
		return v
	}
	return def
}
