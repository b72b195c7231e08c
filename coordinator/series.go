package coordinator

import (
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Bounds of the in-memory series the read API and the dashboard chart.
const (
	// seriesPoints is the most points one rollout keeps per backend; when
	// full, neighbouring points merge and the step doubles, so a series
	// always spans the rollout's whole life.
	seriesPoints = 240
	// seriesRollouts is how many rollouts keep a series; the oldest goes.
	seriesRollouts = 32
	// seriesLag is how far behind now the sampler reads, so the fleet's
	// reports for a second have arrived before it is read.
	seriesLag = 2 * time.Second
	// seriesTail is how long a rollout that ended is still sampled, so its
	// series shows the fleet back on the old backend.
	seriesTail = 30 * time.Second
)

// seriesBook keeps, per rollout, its backends' traffic over its life: the
// one-second cells the analysis store merges from health reports, read
// back once settled and folded into a bounded series. Every coordinator
// keeps its own; it is soft state like the fleet view.
type seriesBook struct {
	mu       sync.Mutex
	rollouts map[string]*rolloutSeries
	order    []string // rollouts by first sight, oldest first
}

type rolloutSeries struct {
	service, from, to string
	step              int64
	// sampled is the last unix second read from the store.
	sampled int64
	points  []seriesPoint
}

// seriesPoint covers the seconds (end-step, end]; b[0] is the from backend,
// b[1] the to backend.
type seriesPoint struct {
	end int64
	b   [2]seriesCell
}

type seriesCell struct {
	requests, errors uint64
	latency          *sketch.Sketch
}

func (c *seriesCell) merge(o seriesCell) {
	c.requests += o.requests
	c.errors += o.errors
	if o.latency != nil {
		if c.latency == nil {
			c.latency = sketch.New()
		}
		c.latency.Merge(o.latency)
	}
}

func newSeriesBook() *seriesBook {
	return &seriesBook{rollouts: map[string]*rolloutSeries{}}
}

// windowReader is the part of the analysis store the series reads.
type windowReader interface {
	Window(service, rollout, backend string, wave int32, start, end time.Time) *analysis.Aggregate
}

// sample reads every second up to now-seriesLag not read yet for every
// rollout that is live or ended within seriesTail. A rollout seen for the
// first time is read back to its creation, as far as the store keeps.
func (b *seriesBook) sample(rollouts []*sv1.Rollout, store windowReader, now time.Time) {
	upto := now.Add(-seriesLag).Unix()
	for _, r := range rollouts {
		if !sampled(r, now) {
			continue
		}
		sp := r.GetSpec()
		b.mu.Lock()
		rs := b.rollouts[r.GetId()]
		if rs == nil {
			first := max(r.GetCreatedAt().AsTime().Unix(), now.Add(-analysis.Retention).Unix())
			rs = &rolloutSeries{service: sp.GetService(), from: sp.GetFrom(), to: sp.GetTo(), step: 1, sampled: first - 1}
			b.rollouts[r.GetId()] = rs
			b.order = append(b.order, r.GetId())
			if len(b.order) > seriesRollouts {
				delete(b.rollouts, b.order[0])
				b.order = b.order[1:]
			}
		}
		from := rs.sampled + 1
		b.mu.Unlock()
		// Read outside the lock: the store has its own.
		var cells []seriesPoint
		for sec := from; sec <= upto; sec++ {
			p := seriesPoint{end: sec}
			for i, backend := range []string{sp.GetFrom(), sp.GetTo()} {
				a := store.Window(sp.GetService(), r.GetId(), backend, analysis.AnyWave, time.Unix(sec-1, 0), time.Unix(sec, 0))
				p.b[i] = seriesCell{requests: a.Requests, errors: a.Errors}
				if a.Requests > 0 {
					p.b[i].latency = a.Latency
				}
			}
			if p.b[0].requests+p.b[1].requests > 0 {
				cells = append(cells, p)
			}
		}
		b.mu.Lock()
		if from > rs.sampled {
			for _, c := range cells {
				rs.add(c)
			}
			rs.sampled = max(rs.sampled, upto)
		}
		b.mu.Unlock()
	}
}

// sampled reports whether a rollout's series is still read at now: while
// it is under way and for seriesTail after it ended.
func sampled(r *sv1.Rollout, now time.Time) bool {
	return !state.Terminal(r.GetPhase()) || now.Sub(r.GetUpdatedAt().AsTime()) <= seriesTail
}

// add folds one second into the series, coarsening it when full.
func (rs *rolloutSeries) add(c seriesPoint) {
	end := ceilTo(c.end, rs.step)
	if n := len(rs.points); n > 0 && rs.points[n-1].end == end {
		rs.points[n-1].b[0].merge(c.b[0])
		rs.points[n-1].b[1].merge(c.b[1])
		return
	}
	c.end = end
	rs.points = append(rs.points, c)
	for len(rs.points) > seriesPoints {
		rs.step *= 2
		var out []seriesPoint
		for _, p := range rs.points {
			e := ceilTo(p.end, rs.step)
			if n := len(out); n > 0 && out[n-1].end == e {
				out[n-1].b[0].merge(p.b[0])
				out[n-1].b[1].merge(p.b[1])
				continue
			}
			p.end = e
			out = append(out, p)
		}
		rs.points = out
	}
}

// ceilTo rounds sec up to a multiple of step.
func ceilTo(sec, step int64) int64 {
	if r := sec % step; r != 0 {
		return sec + step - r
	}
	return sec
}

// series returns a rollout's series, or nil when this coordinator has none.
func (b *seriesBook) series(rollout string) *sv1.RolloutSeries {
	b.mu.Lock()
	defer b.mu.Unlock()
	rs := b.rollouts[rollout]
	if rs == nil {
		return nil
	}
	out := &sv1.RolloutSeries{Rollout: rollout, Service: rs.service, StepSeconds: rs.step}
	for i, role := range []string{"from", "to"} {
		bs := &sv1.BackendSeries{Backend: []string{rs.from, rs.to}[i], Role: role}
		for _, p := range rs.points {
			c := p.b[i]
			sp := &sv1.SeriesPoint{At: timestamppb.New(time.Unix(p.end, 0)), Requests: c.requests, Errors: c.errors}
			if c.requests > 0 {
				sp.ErrorRate = float64(c.errors) / float64(c.requests)
			}
			if c.latency != nil && c.latency.Count() > 0 {
				sp.P50Seconds, sp.P90Seconds, sp.P99Seconds = c.latency.Quantile(0.5), c.latency.Quantile(0.9), c.latency.Quantile(0.99)
			}
			bs.Points = append(bs.Points, sp)
		}
		out.Backends = append(out.Backends, bs)
	}
	return out
}

// known lists the rollouts with a series, oldest first.
func (b *seriesBook) known() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.order)
}
