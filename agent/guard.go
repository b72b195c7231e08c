package agent

import (
	"fmt"
	"time"

	"github.com/switchyard/switchyard/internal/sketch"
)

// windowCounts is one backend's traffic in one telemetry window, as the
// local guard keeps it.
type windowCounts struct {
	requests, errors uint64
	// latency is nil when the service has no log socket.
	latency *sketch.Sketch
}

// guardWindow is one telemetry window.
type guardWindow struct {
	end      time.Time
	backends map[string]windowCounts
}

// localGuard keeps the recent windows of a service's traffic and judges
// them against the local guardrail. Only the service's telemetry goroutine
// uses it.
type localGuard struct {
	cfg     LocalGuardConfig
	windows []guardWindow // oldest first
}

// add records a window and forgets those that ended before the guard's
// look-back.
func (g *localGuard) add(w guardWindow) {
	g.windows = append(g.windows, w)
	cut := w.end.Add(-g.cfg.Window)
	i := 0
	for i < len(g.windows) && !g.windows[i].end.After(cut) {
		i++
	}
	g.windows = append(g.windows[:0], g.windows[i:]...)
}

// breach judges backend's traffic over the look-back: an error rate above
// the limit, or a p99 above the limit, each over at least MinRequests
// requests (fewer is no verdict: a handful of failures must not move a
// node). It returns the evidence when breached.
func (g *localGuard) breach(backend string) (reason string, breached bool) {
	var requests, errors uint64
	lat := sketch.New()
	for _, w := range g.windows {
		c := w.backends[backend]
		requests += c.requests
		errors += c.errors
		lat.Merge(c.latency)
	}
	if requests < g.cfg.MinRequests || requests == 0 {
		return "", false
	}
	rate := float64(errors) / float64(requests)
	if rate > g.cfg.MaxErrorRate {
		return fmt.Sprintf("backend %q error rate %.1f%% (%d of %d requests in the last %s) is above the local guard's %.1f%%",
			backend, 100*rate, errors, requests, g.cfg.Window, 100*g.cfg.MaxErrorRate), true
	}
	if limit := g.cfg.maxP99(); limit > 0 && uint64(lat.Count()) >= g.cfg.MinRequests {
		p99 := time.Duration(lat.Quantile(0.99) * float64(time.Second))
		if p99 > limit {
			return fmt.Sprintf("backend %q p99 latency %s (over %d requests in the last %s) is above the local guard's %s",
				backend, p99.Round(time.Millisecond), uint64(lat.Count()), g.cfg.Window, limit), true
		}
	}
	return "", false
}
