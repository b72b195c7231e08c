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
	// down: the proxy held the backend out of rotation on its own
	// (failing health checks) at the window's end, at weight.
	down   bool
	weight uint32
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

// sharedFailureFactor: when the old backend breaches a guardrail too, the
// new one still breaches it when it is this many times worse (error rate,
// p99): a shared failure (a database, the uplink) hits both about alike; a
// release that fails on top of it does not.
const sharedFailureFactor = 2

// traffic is one backend's sum over the guard's look-back.
type traffic struct {
	requests, errors uint64
	latency          *sketch.Sketch
}

func (g *localGuard) traffic(backend string) traffic {
	t := traffic{latency: sketch.New()}
	for _, w := range g.windows {
		c := w.backends[backend]
		t.requests += c.requests
		t.errors += c.errors
		t.latency.Merge(c.latency)
	}
	return t
}

// downThroughout reports whether the proxy held to out of rotation while
// weighted at the end of every window of the look-back, and from not in
// the newest, at any weight (a host whose old backend fails its checks as
// well is sick; moving it cures nothing). Such a backend answers nothing
// and so fails nothing: at 100% the proxy answers every request itself.
// A look-back of windows, not one, so a check's flap moves no node.
func (g *localGuard) downThroughout(to, from string) bool {
	if len(g.windows) == 0 || g.windows[len(g.windows)-1].backends[from].down {
		return false
	}
	for _, w := range g.windows {
		if c := w.backends[to]; !c.down || c.weight == 0 {
			return false
		}
	}
	return true
}

// errorRate is the error rate over at least minRequests requests; ok is
// false with fewer (no verdict).
func (t traffic) errorRate(minRequests uint64) (rate float64, ok bool) {
	if t.requests < minRequests || t.requests == 0 {
		return 0, false
	}
	return float64(t.errors) / float64(t.requests), true
}

// p99 is the 99th percentile latency over at least minRequests timed
// requests; ok is false with fewer.
func (t traffic) p99(minRequests uint64) (p99 time.Duration, ok bool) {
	if n := uint64(t.latency.Count()); n == 0 || n < minRequests {
		return 0, false
	}
	return time.Duration(t.latency.Quantile(0.99) * float64(time.Second)), true
}

// breach judges the traffic of to (the backend the rollout moves the node
// to) over the look-back: an error rate above the limit, or a p99 above
// the limit, each over at least MinRequests requests (fewer is no verdict:
// a handful of failures must not move a node). A guardrail that from (the
// old backend) breaches as well over the same look-back, on at least
// MinRequests requests of its own, is no verdict either, unless to is
// sharedFailureFactor times worse: what fails is something both share (a
// database, the node's uplink), not the release, and moving the node would
// cure nothing. It returns the evidence when breached.
func (g *localGuard) breach(to, from string) (reason string, breached bool) {
	if g.downThroughout(to, from) {
		return fmt.Sprintf("backend %q has been down (failing the proxy's health checks) while weighted for the last %s; %q is not down",
			to, g.cfg.Window, from), true
	}
	cur := g.traffic(to)
	if cur.requests < g.cfg.MinRequests || cur.requests == 0 {
		return "", false
	}
	old := g.traffic(from)
	if rate, ok := cur.errorRate(g.cfg.MinRequests); ok && rate > g.cfg.MaxErrorRate {
		if oldRate, ok := old.errorRate(g.cfg.MinRequests); !ok || oldRate <= g.cfg.MaxErrorRate || rate >= sharedFailureFactor*oldRate {
			return fmt.Sprintf("backend %q error rate %.1f%% (%d of %d requests in the last %s) is above the local guard's %.1f%%",
				to, 100*rate, cur.errors, cur.requests, g.cfg.Window, 100*g.cfg.MaxErrorRate), true
		}
	}
	if limit := g.cfg.maxP99(); limit > 0 {
		if p99, ok := cur.p99(g.cfg.MinRequests); ok && p99 > limit {
			if oldP99, ok := old.p99(g.cfg.MinRequests); !ok || oldP99 <= limit || float64(p99) >= sharedFailureFactor*float64(oldP99) {
				return fmt.Sprintf("backend %q p99 latency %s (over %d requests in the last %s) is above the local guard's %s",
					to, p99.Round(time.Millisecond), uint64(cur.latency.Count()), g.cfg.Window, limit), true
			}
		}
	}
	return "", false
}
