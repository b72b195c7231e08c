package agent

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// counterDelta is what a cumulative counter pair gained between two reads of
// "show stat". Counters start again from zero when HAProxy restarts or
// reloads, so a pair that went down means a reset: the new values are all
// that was counted since, and the delta is never negative. A restart that
// counted past the old values before the next read cannot be told apart
// from growth; at one read per telemetry interval that is rare and errs on
// the side of fewer requests.
func counterDelta(prev, cur driver.BackendCounters) (requests, errors uint64) {
	if cur.Requests < prev.Requests || cur.Errors < prev.Errors {
		requests, errors = cur.Requests, cur.Errors
	} else {
		requests, errors = cur.Requests-prev.Requests, cur.Errors-prev.Errors
	}
	return requests, min(errors, requests)
}

// redispatchedDelta is what the Redispatched counter gained between two
// reads, with a reset told as counterDelta tells it.
func redispatchedDelta(prev, cur driver.BackendCounters) uint64 {
	if cur.Requests < prev.Requests || cur.Errors < prev.Errors || cur.Redispatched < prev.Redispatched {
		return cur.Redispatched
	}
	return cur.Redispatched - prev.Redispatched
}

// logDropReader is implemented by drivers whose proxy counts the request
// log lines it failed to send (HAProxy's DroppedLogs); the count is
// cumulative since the proxy started.
type logDropReader interface {
	DroppedLogs(ctx context.Context) (uint64, error)
}

// busPublisher publishes on the bus when connected; it reports whether it
// sent. Reports are not queued while the bus is down: a late window says
// nothing about now.
type busPublisher func(subject string, body []byte) (sent bool, err error)

// telemetryLoop measures one service's backends over each interval and
// publishes a HealthReport, and feeds the local guard.
type telemetryLoop struct {
	service, node string
	subject       string
	backends      []string // spec backend names, sorted
	interval      time.Duration
	stats         driver.StatsReader  // nil: the driver reads no counters
	logs          driver.WindowSource // nil: the driver sees no single requests
	drops         logDropReader       // nil: lost log lines cannot be known
	probes        *probeBuffer
	worker        *serviceWorker
	guard         *localGuard // nil: disabled
	guardAfter    time.Duration
	cutOff        func() (time.Duration, string, bool)
	publish       busPublisher
	// drill names the drill whose fault on this node overlapped a window
	// of the service; nil or "" when none.
	drill func(service string, start, end time.Time) string
	// drillOnBackend names the drill whose fault on this node acted on
	// one of the service's backends in a span of time; nil or "" when
	// none did.
	drillOnBackend func(service, backend string, start, end time.Time) string
	clock          clock.Clock
	m              *metrics
	log            *slog.Logger
	statTimeout    time.Duration

	prev       map[string]driver.BackendCounters
	prevDrops  uint64
	haveDrops  bool
	startView  *appliedView
	start      time.Time
	statFailed bool
	// guardHeldFor is the drill the guard last held for, so its log line
	// is written once.
	guardHeldFor string
}

func (t *telemetryLoop) run(ctx context.Context) {
	tick := time.NewTicker(t.interval)
	defer tick.Stop()
	t.start = t.clock.Now()
	t.startView = t.worker.currentView()
	// A first read of the counters is the baseline the first window's
	// deltas need.
	t.prev = t.readCounters(ctx)
	t.readDrops(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			t.closeWindow(ctx)
		}
	}
}

// readCounters reads "show stat"; nil when the driver has none or failed.
func (t *telemetryLoop) readCounters(ctx context.Context) map[string]driver.BackendCounters {
	if t.stats == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, t.statTimeout)
	defer cancel()
	cs, err := t.stats.Counters(ctx)
	if err != nil {
		if ctx.Err() == nil && !t.statFailed {
			// The driver's own status shows a proxy that is down; one line
			// here says why telemetry stopped.
			t.log.Warn("read proxy counters for telemetry; windows without them are not reported", "err", err)
		}
		t.statFailed = true
		return nil
	}
	t.statFailed = false
	out := make(map[string]driver.BackendCounters, len(cs))
	for _, c := range cs {
		out[c.Backend] = c
	}
	return out
}

// readDrops returns how many log lines the proxy dropped since the last
// call; known is false when that cannot be told (no reader, a failed read,
// the first read).
func (t *telemetryLoop) readDrops(ctx context.Context) (dropped uint64, known bool) {
	if t.drops == nil || t.logs == nil {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(ctx, t.statTimeout)
	defer cancel()
	cur, err := t.drops.DroppedLogs(ctx)
	if err != nil {
		t.haveDrops = false
		return 0, false
	}
	prev, had := t.prevDrops, t.haveDrops
	t.prevDrops, t.haveDrops = cur, true
	if !had {
		return 0, false
	}
	if cur < prev { // the proxy restarted
		return cur, true
	}
	return cur - prev, true
}

// closeWindow ends the current window: reads counters, takes the log
// window and the probes, publishes the report and runs the guard.
func (t *telemetryLoop) closeWindow(ctx context.Context) {
	end := t.clock.Now()
	endView := t.worker.currentView()
	counters := t.readCounters(ctx)
	var logs map[string]driver.Window
	if t.logs != nil {
		if w, ok := t.logs.TakeWindow(); ok {
			logs = w
		}
	}
	dropped, _ := t.readDrops(ctx)
	// Lines HAProxy could not deliver (a full socket queue) would make the
	// log undercount: the exact counters of "show stat" count this window,
	// and the lines that did arrive remain a fair sample of latency.
	countFromStats := logs == nil || (dropped > 0 && counters != nil && t.prev != nil)
	if dropped > 0 {
		t.m.droppedLogLines.WithLabelValues(t.service).Add(float64(dropped))
	}
	rep := &sv1.HealthReport{
		Node:            t.node,
		Service:         t.service,
		WindowStart:     timestamppb.New(t.start),
		WindowEnd:       timestamppb.New(end),
		RolloutId:       endView.rolloutID,
		Wave:            endView.wave,
		Probes:          t.probes.take(),
		DroppedLogLines: dropped,
	}
	if t.drill != nil {
		rep.DrillId = t.drill(t.service, t.start, end)
	}
	// The generation is only meaningful if it held for the whole window;
	// the coordinator must not count a window that straddles a switch
	// towards either generation.
	if endView.seq == t.startView.seq {
		rep.Generation = endView.generation
	}

	// Without a log socket the first window has no baseline for the
	// counters, nor the window after one whose read failed, and a proxy
	// that cannot be read gives none: such a window
	// carries no backends at all rather than zeros that look like a quiet
	// backend. It is still sent when it carries probe results.
	haveTraffic := logs != nil || (counters != nil && t.prev != nil)
	gw := guardWindow{end: end, backends: make(map[string]windowCounts, len(t.backends))}
	for _, b := range t.backends {
		if !haveTraffic {
			break
		}
		bh := &sv1.BackendHealth{Backend: b, Weight: endView.weights[b]}
		var wc windowCounts
		if logs != nil {
			lw := logs[b]
			wc = windowCounts{requests: lw.Requests, errors: lw.Errors, latency: lw.Latency}
			if wc.latency == nil {
				wc.latency = sketch.New()
			}
			bh.Latency = wc.latency.ToProto()
			// The log names only the backend that answered: the requests
			// this one failed to take and the proxy sent elsewhere are its
			// failures all the same.
			cur, okCur := counters[b]
			prev, okPrev := t.prev[b]
			if okCur && okPrev {
				r := redispatchedDelta(prev, cur)
				wc.requests += r
				wc.errors += r
			}
		}
		if countFromStats {
			cur, okCur := counters[b]
			prev, okPrev := t.prev[b]
			wc.requests, wc.errors = 0, 0
			if okCur && okPrev {
				wc.requests, wc.errors = counterDelta(prev, cur)
			}
		}
		bh.Requests, bh.Errors = wc.requests, wc.errors
		if c, ok := counters[b]; ok {
			bh.CurrentConnections, bh.Queued, bh.Weight = c.Current, c.Queued, c.Weight
			// A backend the proxy took out of rotation itself (failing
			// health checks) answers nothing, so it fails nothing either:
			// without this it would look like a quiet backend. Said at
			// any weight: the old backend down at weight 0 tells the
			// coordinators a host is sick, not the release.
			bh.Down = c.Down
			wc.down, wc.weight = c.Down, c.Weight
		}
		gw.backends[b] = wc
		rep.Backends = append(rep.Backends, bh)
	}
	// A failed read is no baseline either: deltas from an older one would
	// credit this window's traffic to the next, under its generation.
	t.prev = counters
	t.start, t.startView = end, endView

	if !haveTraffic && len(rep.Probes) == 0 {
		t.m.reports.WithLabelValues(t.service, reportNoData).Inc()
	} else {
		t.send(rep)
	}
	if haveTraffic && t.guard != nil {
		t.guard.add(gw)
		t.checkGuard(endView)
	}
}

func (t *telemetryLoop) send(rep *sv1.HealthReport) {
	body, err := rep.MarshalVT()
	if err != nil {
		t.m.reports.WithLabelValues(t.service, reportError).Inc()
		t.log.Error("encode health report", "err", err)
		return
	}
	sent, err := t.publish(t.subject, body)
	switch {
	case err != nil:
		t.m.reports.WithLabelValues(t.service, reportError).Inc()
		t.log.Debug("publish health report", "err", err)
	case !sent:
		t.m.reports.WithLabelValues(t.service, reportDisconnected).Inc()
	default:
		t.m.reports.WithLabelValues(t.service, reportPublished).Inc()
	}
}

// checkGuard asks the service to move back to the old backend when the bus
// has been gone long enough, a rollout is moving this node to a backend
// that carries weight, and that backend breaches the local guardrail.
func (t *telemetryLoop) checkGuard(v *appliedView) {
	if !v.rolloutActive() || v.localRollback || v.to == "" || v.from == "" || v.weights[v.to] == 0 {
		return
	}
	down, how, isDown := t.cutOff()
	if !isDown || down < t.guardAfter {
		return
	}
	reason, breached := t.guard.breach(v.to, v.from)
	if !breached {
		return
	}
	// A drill of this node's own acting on the new backend within the
	// look-back made what the guard sees: its injected failures are not
	// the release's, and a local rollback would outlast the drill.
	if t.drillOnBackend != nil && len(t.guard.windows) > 0 {
		end := t.guard.windows[len(t.guard.windows)-1].end
		if d := t.drillOnBackend(t.service, v.to, end.Add(-t.guard.cfg.Window), end); d != "" {
			if d != t.guardHeldFor {
				t.log.Info("local guard holds: the failures it sees on the new backend are those drill injects on this node", "drill", d, "backend", v.to, "guardrail", reason)
			}
			t.guardHeldFor = d
			return
		}
	}
	t.guardHeldFor = ""
	t.worker.requestLocalRollback(localRollbackRequest{
		generation: v.generation,
		seq:        v.seq,
		from:       v.from,
		to:         v.to,
		reason:     reason,
		cutOffFor:  down,
		cutOffHow:  how,
	})
}
