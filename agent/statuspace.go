package agent

import (
	"hash/fnv"
	"math/rand/v2"
	"time"
)

// DefaultStatusWindow is the status window when the config sets none: off,
// every changed status goes out at once.
//
// A window is for fleets of thousands of nodes: a decision reaches every
// agent within milliseconds, and each applies it at about the same moment,
// so without a window thousands of statuses hit the coordinators in the
// same millisecond. Within a window each status waits a random share of
// it, so the fleet's statuses spread over the window; a change made while
// a status waits goes out with it (the newest status wins), and a burst of
// changes on one node (apply, read-back, a repair) costs one status. The
// price is truth: the coordinators see a node converge, and lose
// convergence, up to one window late, which is why it is off by default.
// Applying is never delayed.
const DefaultStatusWindow time.Duration = 0

// statusPacer decides when a changed status goes out: after a random share
// of the window (per node and per change, so a fleet that changed together
// spreads out), and never sooner than a window after the previous one. Only
// the status loop uses it.
type statusPacer struct {
	window time.Duration
	rnd    *rand.Rand
	// last is when the previous status went out; zero before the first.
	last time.Time
}

func newStatusPacer(node string, window time.Duration) *statusPacer {
	h := fnv.New64a()
	h.Write([]byte(node))
	seed := h.Sum64()
	return &statusPacer{window: window, rnd: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// delay is how long a status that changed at now waits before it goes out.
func (p *statusPacer) delay(now time.Time) time.Duration {
	if p.window <= 0 {
		return 0
	}
	d := time.Duration(p.rnd.Int64N(int64(p.window)))
	if next := p.last.Add(p.window); !p.last.IsZero() && next.After(now.Add(d)) {
		d = next.Sub(now)
	}
	return d
}

// sent records that a status went out at at.
func (p *statusPacer) sent(at time.Time) { p.last = at }
