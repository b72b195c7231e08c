package agent

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
)

// observed is what the service's proxy was last seen doing, read back from
// it. The service goroutine owns it.
type observed struct {
	// ok is false until the proxy was read, and while it cannot be.
	ok  bool
	obs driver.Observation
	// matches is true when obs does what the applied state says.
	matches bool
	// drift says what did not match, for the status and the log.
	drift string
	// repairs counts the drifts found and set back.
	repairs uint64
	// repairing is the drift last found and not set back yet: the same
	// one found again (a repair the proxy refuses, retried at every look)
	// is not counted or logged as new.
	repairing string
	// instance is the proxy process last seen, to tell a restart from a
	// hand edit in the log.
	instance string
}

// observe reads the proxy back through the richest interface its driver
// has: an Observer also says which backends are held out of rotation and
// which process runs; any driver can say its weights.
func observe(ctx context.Context, drv driver.Driver) (driver.Observation, error) {
	if o, ok := drv.(driver.Observer); ok {
		return o.Observe(ctx)
	}
	w, err := drv.Weights(ctx)
	if err != nil {
		return driver.Observation{}, err
	}
	return driver.Observation{Weights: w}, nil
}

// mismatch says how the proxy differs from the applied weights, and which
// backends differ (sorted); "" and none when it does what they say. A
// backend that should take traffic must have its weight and be in
// rotation, unless heldOK says it may be out (a drill of this node put it
// there on purpose); nil holds none. Backends the weights do not name are
// not the agent's.
func mismatch(want map[string]uint32, obs driver.Observation, heldOK func(backend string) bool) (found string, off []string) {
	held := func(b string) bool {
		return obs.Held[b] != "" && want[b] > 0 && (heldOK == nil || !heldOK(b))
	}
	// The proxy is read back after every apply and every observe interval
	// and nearly always matches: only the backends that differ are sorted
	// and described.
	for b, v := range want {
		if have, ok := obs.Weights[b]; !ok || have != v || held(b) {
			off = append(off, b)
		}
	}
	slices.Sort(off)
	var parts []string
	for _, b := range off {
		have, ok := obs.Weights[b]
		switch {
		case !ok:
			parts = append(parts, fmt.Sprintf("%s missing (want weight %d)", b, want[b]))
		case have != want[b]:
			parts = append(parts, fmt.Sprintf("%s weight %d (want %d)", b, have, want[b]))
		}
		if held(b) {
			parts = append(parts, fmt.Sprintf("%s held in %s (want it in rotation at weight %d)", b, obs.Held[b], want[b]))
		}
	}
	return strings.Join(parts, ", "), off
}

// requestObserve asks the service goroutine to read the proxy back; one
// request waiting is as good as several.
func (w *serviceWorker) requestObserve() {
	select {
	case w.observeNow <- struct{}{}:
	default:
	}
}

// observeLoop asks for a look at the proxy every interval, and at once
// whenever the driver sees its connection to the proxy drop or come back.
func (w *serviceWorker) observeLoop(ctx context.Context, interval time.Duration) {
	if wt, ok := w.drv.(driver.Watcher); ok {
		done := make(chan struct{})
		go func() {
			defer close(done)
			wt.Watch(ctx, func(up bool) {
				if !up && w.proxyLost != nil {
					// Said at once, from this goroutine: a proxy restarted
					// from its config must not be reported as matching in
					// the time it takes the service goroutine to look.
					w.proxyLost("the connection to the proxy dropped; reading it again")
				}
				w.requestObserve()
			})
		}()
		defer func() { <-done }()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.requestObserve()
		}
	}
}

// checkProxy reads the proxy back and, if it does not do what was applied
// (restarted or reloaded from its config, a weight changed or a backend put
// in maintenance by hand), counts and logs what it found and sets the
// applied weights again, then reads back once more to confirm. The result
// goes into the status either way.
func (w *serviceWorker) checkProxy(ctx context.Context) error {
	obs, err := w.readProxy(ctx)
	if err != nil {
		w.lostProxy(err)
		return fmt.Errorf("read proxy: %w", err)
	}
	// The logger is built only when there is something to say: this runs
	// every observe interval.
	log := func() *slog.Logger {
		return w.log.With("generation", w.applied.GetDesired().GetGeneration(), "rollout", w.applied.GetDesired().GetRolloutId())
	}
	restarted := w.seen.instance != "" && obs.Instance != "" && obs.Instance != w.seen.instance
	if restarted {
		log().Warn("proxy process changed (restarted or reloaded)", "was", w.seen.instance, "now", obs.Instance)
	}
	if obs.Instance != "" {
		w.seen.instance = obs.Instance
	}
	heldOK := w.heldByDrill
	if w.applying != nil {
		w.settleApplying(ctx, obs, heldOK)
	}
	want := w.applied.GetWeights()
	found, off := mismatch(want, obs, heldOK)
	if found == "" {
		w.see(obs, "")
		w.seen.repairing = ""
		w.check = false
		return nil
	}
	again := found == w.seen.repairing && !restarted
	w.seen.repairing = found
	if restarted {
		found = "proxy restarted: " + found
	}
	if again {
		// Said and counted when first found; the repair is retried.
		w.log.Debug("proxy still does not do what was applied; repairing again", "found", found)
	} else {
		w.seen.repairs++
		w.m.drift.WithLabelValues(w.name).Inc()
		log().Warn("proxy does not do what was applied; repairing", "found", found,
			"want", want, "have", obs.Weights, "held", obs.Held, "instance", obs.Instance)
	}
	w.see(obs, found)
	// The coordinator learns now that this node is not converged, before
	// the repair, not after it.
	w.sendStatus()
	start := time.Now()
	// Only what differs is set again: a backend that matches is left as
	// it is, so a drill's maint or drain of another backend is not lifted
	// by the repair of this one.
	fix := make(map[string]uint32, len(off))
	for _, b := range off {
		fix[b] = want[b]
	}
	if err := w.setWeights(ctx, fix); err != nil {
		return fmt.Errorf("repair drift (%s): %w", found, err)
	}
	obs, err = w.readProxy(ctx)
	if err != nil {
		w.lostProxy(err)
		return fmt.Errorf("read proxy after repair: %w", err)
	}
	if still, _ := mismatch(want, obs, heldOK); still != "" {
		w.see(obs, still)
		return fmt.Errorf("repair drift: the proxy still differs after setting it: %s", still)
	}
	w.see(obs, "")
	w.seen.repairing = ""
	w.check = false
	log().Info("drift repaired", "weights", want, "took", time.Since(start))
	return nil
}

// readBack reads the proxy back after a change of its weights failed,
// which may have set some servers and not others: the status must say what
// the proxy does now, against the applied state, not what it did before
// the attempt. Nothing is repaired here (the failed change is retried, and
// the next check repairs whatever it still finds); why prefixes a
// difference found.
func (w *serviceWorker) readBack(ctx context.Context, why string) {
	w.check = true
	obs, err := w.readProxy(ctx)
	if err != nil {
		if ctx.Err() == nil {
			w.lostProxy(err)
		}
		return
	}
	found, _ := mismatch(w.applied.GetWeights(), obs, w.heldByDrill)
	if found != "" {
		found = why + ": " + found
	}
	w.see(obs, found)
}

// readProxy is observe bounded by the apply timeout.
func (w *serviceWorker) readProxy(ctx context.Context) (driver.Observation, error) {
	rctx, cancel := context.WithTimeout(ctx, w.timing.applyTimeout)
	defer cancel()
	return observe(rctx, w.drv)
}

// see records what the proxy was read back doing.
func (w *serviceWorker) see(obs driver.Observation, drift string) {
	w.seen.ok = true
	w.seen.obs = obs
	w.seen.drift = drift
	w.seen.matches = drift == ""
	w.series.observedMatch.Set(boolGauge(w.seen.matches))
}

// lostProxy records that the proxy cannot be read: nothing is known of
// what it does, so it does not match.
func (w *serviceWorker) lostProxy(err error) {
	w.seen.ok = false
	w.seen.obs = driver.Observation{}
	w.seen.repairing = ""
	w.seen.matches = false
	w.seen.drift = "proxy cannot be read: " + err.Error()
	w.series.observedMatch.Set(0)
}

// observedMatches is true when the proxy was read back doing what was
// applied; with nothing applied there is nothing to match.
func (w *serviceWorker) observedMatches() bool {
	if w.applied == nil {
		return w.seen.ok
	}
	return w.seen.ok && w.seen.matches
}

func boolGauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
