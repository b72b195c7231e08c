package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/desired"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// delivery is one desired-state document as it came off the bus.
type delivery struct {
	raw []byte
	// poll is true for a document the agent read itself (on start, on
	// reconnect, on resync). Finding the generation the agent already has is
	// the steady state there, not a rejection.
	poll bool
}

// inboxCap bounds deliveries waiting for a busy service goroutine. Only the
// newest generation matters and every resync reads it again, so dropping the
// oldest loses nothing.
const inboxCap = 64

// inbox hands deliveries from NATS callbacks to a service's goroutine without
// ever blocking the callback.
type inbox struct {
	mu    sync.Mutex
	items []delivery
	wake  chan struct{}
}

func newInbox() *inbox { return &inbox{wake: make(chan struct{}, 1)} }

// put queues d and wakes the service goroutine. It reports whether the oldest
// waiting delivery was dropped to make room.
func (b *inbox) put(d delivery) (dropped bool) {
	b.mu.Lock()
	if len(b.items) >= inboxCap {
		b.items = append(b.items[:0], b.items[1:]...)
		dropped = true
	}
	b.items = append(b.items, d)
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
	return dropped
}

func (b *inbox) drain() []delivery {
	b.mu.Lock()
	defer b.mu.Unlock()
	items := b.items
	b.items = nil
	return items
}

// timing are the agent's retry and timeout settings.
type timing struct {
	retryMin, retryMax time.Duration
	applyTimeout       time.Duration
}

// serviceWorker owns one service on this node: the document it is applying,
// the state it applied, and its proxy driver. Everything below the inbox is
// touched only by run's goroutine, which serializes the handling of the
// service's documents.
type serviceWorker struct {
	name   string
	node   string
	labels map[string]string
	drv    driver.Driver
	store  StateStore
	log    *slog.Logger
	m      *metrics
	clock  clock.Clock
	timing timing
	// report hands a changed status to the agent.
	report func(*sv1.ServiceStatus)

	inbox *inbox
	// driftCheck asks run to read the proxy back and repair drift (on every
	// resync) and to retry a refused document.
	driftCheck chan struct{}

	// applied is what the proxy was last set to; nil before the first apply.
	applied *sv1.AppliedState
	// pending is a newer document not applied yet; it stays until it applies
	// or a newer one replaces it.
	pending *sv1.DesiredState
	// refused is set when the driver refused pending for naming a backend it
	// does not know; it is retried on resync instead of with backoff.
	refused    bool
	refusedMsg string
	// check asks for the proxy to be read back: that proves the driver can
	// reach it (a wrong socket shows before the first rollout), and any
	// applied weight it lacks is re-applied.
	check bool
	// note is shown in the status while the driver is healthy (e.g. a failed
	// local save).
	note     string
	health   sv1.DriverHealth
	message  string
	backoff  time.Duration
	lastSent *sv1.ServiceStatus
}

// onMsg receives a push on the service's KV key subject.
func (w *serviceWorker) onMsg(m *nats.Msg) {
	switch m.Header.Get(bus.KVOperationHeader) {
	case bus.KVOperationDelete, bus.KVOperationPurge:
		w.log.Info("desired state deleted on the bus; keeping the applied state")
		return
	}
	if w.inbox.put(delivery{raw: m.Data}) {
		w.log.Warn("service busy; dropped the oldest queued desired-state document")
	}
}

// requestDriftCheck is called on every resync tick.
func (w *serviceWorker) requestDriftCheck() {
	select {
	case w.driftCheck <- struct{}{}:
	default:
	}
}

// run handles the service's documents until ctx ends. It starts by checking
// the proxy against the persisted state.
func (w *serviceWorker) run(ctx context.Context) {
	w.check = true
	w.m.appliedGeneration.WithLabelValues(w.name).Set(float64(w.applied.GetDesired().GetGeneration()))

	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	retrying := false
	step := func() {
		err := w.step(ctx)
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil:
			w.backoff = nextBackoff(w.backoff, w.timing.retryMin, w.timing.retryMax)
			retry.Reset(w.backoff)
			retrying = true
			// Warn on the way into trouble; the retries that follow are
			// debug, or a proxy down for an hour floods the journal.
			level := slog.LevelDebug
			if w.health != sv1.DriverHealth_DRIVER_HEALTH_DEGRADED || w.message != err.Error() {
				level = slog.LevelWarn
			}
			w.setHealth(sv1.DriverHealth_DRIVER_HEALTH_DEGRADED, err.Error())
			w.log.Log(ctx, level, "proxy driver failed; will retry", "err", err, "retry_in", w.backoff)
		default:
			w.backoff = 0
			retry.Stop()
			retrying = false
			if w.refused {
				w.setHealth(sv1.DriverHealth_DRIVER_HEALTH_DEGRADED, w.refusedMsg)
			} else {
				w.setHealth(sv1.DriverHealth_DRIVER_HEALTH_OK, w.note)
			}
		}
		w.sendStatus()
	}

	step()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.inbox.wake:
			changed := false
			for _, d := range w.inbox.drain() {
				if w.consider(d) {
					changed = true
				}
			}
			if changed {
				step()
			}
		case <-w.driftCheck:
			w.refused = false
			w.check = true
			if !retrying {
				step()
			}
		case <-retry.C:
			retrying = false
			step()
		}
	}
}

// nextBackoff doubles the retry delay from lo up to hi.
func nextBackoff(cur, lo, hi time.Duration) time.Duration {
	if cur <= 0 {
		return lo
	}
	return min(cur*2, hi)
}

// consider decodes and fences one delivery. It reports whether the delivery
// became the pending document.
func (w *serviceWorker) consider(d delivery) bool {
	ds := new(sv1.DesiredState)
	if err := proto.Unmarshal(d.raw, ds); err != nil {
		w.reject(reasonMalformed, ds, err)
		return false
	}
	if err := checkDocument(ds); err != nil {
		w.reject(reasonMalformed, ds, err)
		return false
	}
	if ds.GetService() != w.name {
		w.reject(reasonUnknownService, ds, fmt.Errorf("document for service %q arrived on the key of %q", ds.GetService(), w.name))
		return false
	}
	newest := w.applied.GetDesired().GetGeneration()
	if w.pending != nil {
		newest = max(newest, w.pending.GetGeneration())
	}
	switch gen := ds.GetGeneration(); {
	case gen > newest:
		if w.pending != nil {
			w.log.Info("pending desired state superseded before it applied",
				"generation", w.pending.GetGeneration(), "rollout", w.pending.GetRolloutId(), "by", gen)
		}
		w.pending = ds
		w.refused = false
		w.backoff = 0
		w.log.Info("desired state received", "generation", gen, "rollout", ds.GetRolloutId(), "phase", ds.GetPhase().String())
		return true
	case d.poll && gen == newest:
		return false
	default:
		w.reject(reasonStale, ds, fmt.Errorf("generation %d is not above %d", gen, newest))
		return false
	}
}

// checkDocument rejects documents no coordinator would write.
func checkDocument(ds *sv1.DesiredState) error {
	if ds.GetGeneration() == 0 {
		return errors.New("generation is 0")
	}
	check := func(where string, weights map[string]uint32) error {
		for b, v := range weights {
			if v > 100 {
				return fmt.Errorf("%s: weight of %q is %d, want 0..100", where, b, v)
			}
		}
		return nil
	}
	if err := check("default weights", ds.GetDefaultWeights()); err != nil {
		return err
	}
	for i, wv := range ds.GetWaves() {
		if wv.GetBasisPoints() > desired.FullBasisPoints {
			return fmt.Errorf("wave %d: basis points %d, want 0..%d", i, wv.GetBasisPoints(), desired.FullBasisPoints)
		}
		if err := check(fmt.Sprintf("wave %d", i), wv.GetWeights()); err != nil {
			return err
		}
	}
	return nil
}

func (w *serviceWorker) reject(reason string, ds *sv1.DesiredState, err error) {
	w.m.rejected.WithLabelValues(w.name, reason).Inc()
	level := slog.LevelWarn
	if reason == reasonStale {
		// Republished and reordered documents are expected; the metric is
		// the signal.
		level = slog.LevelDebug
	}
	w.log.Log(context.Background(), level, "desired state ignored", "reason", reason,
		"generation", ds.GetGeneration(), "rollout", ds.GetRolloutId(), "err", err)
}

// step applies the pending document and then checks the proxy, as far as the
// driver lets it. An error means "retry with backoff".
func (w *serviceWorker) step(ctx context.Context) error {
	if w.pending != nil && !w.refused {
		if err := w.applyPending(ctx); err != nil {
			return err
		}
	}
	if w.check {
		return w.checkProxy(ctx)
	}
	return nil
}

func (w *serviceWorker) applyPending(ctx context.Context) error {
	ds := w.pending
	gen := ds.GetGeneration()
	log := w.log.With("generation", gen, "rollout", ds.GetRolloutId())
	weights, wave, ok := desired.Evaluate(ds, w.node, w.labels)
	if !ok {
		w.m.applies.WithLabelValues(w.name, resultNoWave).Inc()
		log.Info("node is in no wave and the document has no default weights; the proxy keeps its weights")
		w.commit(log, &sv1.AppliedState{
			Service:   w.name,
			Desired:   ds,
			Weights:   maps.Clone(w.applied.GetWeights()),
			Wave:      desired.NoWave,
			AppliedAt: timestamppb.New(w.clock.Now()),
		})
		return nil
	}
	if err := w.setWeights(ctx, weights); err != nil {
		if errors.Is(err, driver.ErrUnknownBackend) {
			w.refused = true
			w.refusedMsg = fmt.Sprintf("generation %d refused by the proxy driver: %v", gen, err)
			log.Error("proxy driver refused the desired state; will retry at the next resync or on a newer document", "err", err)
			return nil
		}
		return fmt.Errorf("apply generation %d: %w", gen, err)
	}
	log.Info("desired state applied", "weights", weights, "wave", wave)
	w.check = false
	w.commit(log, &sv1.AppliedState{
		Service:   w.name,
		Desired:   ds,
		Weights:   weights,
		Wave:      wave,
		AppliedAt: timestamppb.New(w.clock.Now()),
	})
	return nil
}

// commit makes st the applied state, persisting it first. A failed save does
// not undo what the proxy already has: the agent goes on from memory and says
// so in its status.
func (w *serviceWorker) commit(log *slog.Logger, st *sv1.AppliedState) {
	if err := w.store.Save(st); err != nil {
		w.m.stateSaveErrors.WithLabelValues(w.name).Inc()
		w.note = fmt.Sprintf("generation %d applied but not saved locally: %v", st.GetDesired().GetGeneration(), err)
		log.Error("save applied state", "err", err)
	} else {
		w.note = ""
	}
	w.applied = st
	w.pending = nil
	w.refused = false
	w.m.appliedGeneration.WithLabelValues(w.name).Set(float64(st.GetDesired().GetGeneration()))
}

// checkProxy reads the proxy's weights and re-applies the applied ones if
// the proxy no longer has them (it restarted or was reloaded under the
// agent).
func (w *serviceWorker) checkProxy(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, w.timing.applyTimeout)
	have, err := w.drv.Weights(rctx)
	cancel()
	if err != nil {
		return fmt.Errorf("read proxy weights: %w", err)
	}
	want := w.applied.GetWeights()
	if !drifted(want, have) {
		w.check = false
		return nil
	}
	log := w.log.With("generation", w.applied.GetDesired().GetGeneration(), "rollout", w.applied.GetDesired().GetRolloutId())
	log.Warn("proxy weights drifted from the applied state; re-applying", "want", want, "have", have)
	w.m.drift.WithLabelValues(w.name).Inc()
	if err := w.setWeights(ctx, want); err != nil {
		return fmt.Errorf("repair drift: %w", err)
	}
	w.check = false
	log.Info("drift repaired", "weights", want)
	return nil
}

// drifted reports whether have lacks any weight of want. Backends want does
// not name are not the agent's business.
func drifted(want, have map[string]uint32) bool {
	for b, v := range want {
		if hv, ok := have[b]; !ok || hv != v {
			return true
		}
	}
	return false
}

// setWeights calls the driver, bounded by the apply timeout, and measures it.
func (w *serviceWorker) setWeights(ctx context.Context, weights map[string]uint32) error {
	ctx, cancel := context.WithTimeout(ctx, w.timing.applyTimeout)
	defer cancel()
	start := time.Now()
	err := w.drv.Apply(ctx, weights)
	w.m.applySeconds.WithLabelValues(w.name).Observe(time.Since(start).Seconds())
	result := resultOK
	switch {
	case errors.Is(err, driver.ErrUnknownBackend):
		result = resultRefused
	case err != nil:
		result = resultError
	}
	w.m.applies.WithLabelValues(w.name, result).Inc()
	return err
}

func (w *serviceWorker) setHealth(h sv1.DriverHealth, message string) {
	if h != w.health {
		if h == sv1.DriverHealth_DRIVER_HEALTH_OK && w.health == sv1.DriverHealth_DRIVER_HEALTH_DEGRADED {
			w.log.Info("proxy driver healthy again")
		}
		w.health = h
	}
	w.message = message
	degraded := 0.0
	if h == sv1.DriverHealth_DRIVER_HEALTH_DEGRADED {
		degraded = 1
	}
	w.m.driverDegraded.WithLabelValues(w.name).Set(degraded)
}

// sendStatus reports the service's status to the agent if it changed.
func (w *serviceWorker) sendStatus() {
	st := &sv1.ServiceStatus{
		Service:           w.name,
		AppliedGeneration: w.applied.GetDesired().GetGeneration(),
		RolloutId:         w.applied.GetDesired().GetRolloutId(),
		Weights:           maps.Clone(w.applied.GetWeights()),
		Driver:            w.health,
		Message:           w.message,
	}
	if proto.Equal(st, w.lastSent) {
		return
	}
	w.lastSent = st
	w.report(st)
}
