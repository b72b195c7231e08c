package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/hooks"
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
	// at is when it arrived.
	at time.Time
}

// inboxCap bounds deliveries waiting for a busy service goroutine. Only the
// newest generation matters and every resync reads it again, so dropping the
// oldest loses nothing.
const inboxCap = 64

// inbox hands deliveries from NATS callbacks to one goroutine without ever
// blocking the callback. With a capacity, the oldest waiting delivery makes
// room for a new one (a service only needs its newest document); without,
// nothing is dropped.
type inbox[T any] struct {
	mu    sync.Mutex
	items []T
	// spare is the slice the previous drain returned: its consumer is done
	// with it by the next drain, and puts reuse it rather than allocate.
	spare []T
	cap   int // 0: unbounded
	wake  chan struct{}
}

func newInbox[T any](capacity int) *inbox[T] {
	return &inbox[T]{cap: capacity, wake: make(chan struct{}, 1)}
}

// put queues d and wakes the goroutine. It reports whether the oldest
// waiting delivery was dropped to make room.
func (b *inbox[T]) put(d T) (dropped bool) {
	b.mu.Lock()
	if b.cap > 0 && len(b.items) >= b.cap {
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

// peek returns a copy of what the inbox holds, leaving it there.
func (b *inbox[T]) peek() []T {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.items)
}

// drain empties the inbox and returns what it held. The slice is valid
// until the next drain: the inbox has one consumer, which is done with a
// batch before it asks for the next.
func (b *inbox[T]) drain() []T {
	b.mu.Lock()
	defer b.mu.Unlock()
	items := b.items
	clear(b.spare) // drop the previous batch's references
	b.items, b.spare = b.spare[:0], items
	return items
}

// timing are the agent's retry and timeout settings.
type timing struct {
	retryMin, retryMax time.Duration
	applyTimeout       time.Duration
}

// appliedView is a read-only snapshot of what a service has applied, for the
// goroutines that do not own the service (telemetry, probes, local guard).
// Its maps are never changed after it is published.
type appliedView struct {
	// seq changes on every commit, so a telemetry window can tell whether
	// the weights changed during it even when the generation did not.
	seq           uint64
	generation    uint64
	rolloutID     string
	phase         sv1.RolloutPhase
	wave          int32
	weights       map[string]uint32
	from, to      string
	localRollback bool
}

// rolloutActive reports whether a rollout is under way: traffic is moving
// to the new backend (progressing) or has moved and is still watched
// (promoted). Synthetic transactions run and the local guard may act only
// then; while rolling back, completed or rolled back there is nothing to
// guard.
func (v *appliedView) rolloutActive() bool {
	if v.rolloutID == "" {
		return false
	}
	switch v.phase {
	case sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED:
		return true
	}
	return false
}

// localRollbackRequest is the telemetry loop asking the service to move
// back to the old backend; the service checks it still applies.
type localRollbackRequest struct {
	generation uint64
	seq        uint64
	from, to   string
	reason     string
	// cutOffFor is how long the node has been cut off from the
	// coordinators, and cutOffHow how it knows (Agent.CutOffFor).
	cutOffFor time.Duration
	cutOffHow string
}

// serviceWorker owns one service on this node: the document it is applying,
// the state it applied, and its proxy driver. Everything below the inbox is
// touched only by run's goroutine, which serializes the handling of the
// service's documents.
type serviceWorker struct {
	// refusals bounds the warnings of refused documents.
	refusals refusalLog
	name     string
	node     string
	labels   map[string]string
	drv      driver.Driver
	store    StateStore
	log      *slog.Logger
	m        *metrics
	// series are m's series of this service that move on every apply.
	series *serviceSeries
	clock  clock.Clock
	timing timing
	// report hands a changed status to the agent.
	report func(*sv1.ServiceStatus)
	// prober runs the service's preflights.
	prober *prober
	// hooks runs the agent hooks documents name; hookRuns are the latest
	// runs of the current rollout, for the status.
	hooks    *hooks.Runner
	hookRuns []*sv1.HookRun
	// hookRunsSeq counts the changes of hookRuns.
	hookRunsSeq uint64
	// sent is what the last status handed to the agent was built from;
	// resend is set when the agent's copy was changed behind the service's
	// back (proxyLost), so the next status goes out even if it equals it.
	sent   statusKey
	resend atomic.Bool
	// view is what the service has applied, for other goroutines.
	view    atomic.Pointer[appliedView]
	viewSeq uint64
	// guard receives the telemetry loop's local rollback requests.
	guard chan localRollbackRequest

	inbox *inbox[delivery]
	// trust verifies every document before anything in it is read.
	trust *bus.Keyring
	// driftCheck asks run to read the proxy back and repair drift (on every
	// resync) and to retry a refused document.
	driftCheck chan struct{}
	// observeNow asks run to read the proxy back and repair drift (every
	// observe interval, and when the driver sees its proxy connection drop
	// or return).
	observeNow chan struct{}
	// heldByDrill reports whether a drill fault of this node holds the
	// service's backend out of rotation on purpose; nil means never.
	heldByDrill func(backend string) bool
	// seen is what the proxy was last read back doing.
	seen observed
	// proxyLost marks the reported status as not matching at once, from
	// any goroutine, until the service reports again.
	proxyLost func(why string)

	// applied is what the proxy was last set to; nil before the first apply.
	applied *sv1.AppliedState
	// applyLog records each state before the proxy is set to it; nil when
	// the state store keeps no such record.
	applyLog ApplyJournal
	// applying is what a previous run recorded it was setting the proxy to
	// and did not save as applied (it was killed in between); the first
	// read of the proxy decides whether the proxy has it. nil otherwise.
	applying *sv1.AppliedState
	// pending is a newer document not applied yet; it stays until it applies
	// or a newer one replaces it.
	pending *sv1.DesiredState
	// pendingExpires is when pending's signature validity ends.
	pendingExpires time.Time
	// pushed is the highest fence that came as a push on the key's
	// subject (verified), to tell a push that the agent's own read of the
	// bucket overtook from a replay.
	pushed bus.Fence
	// pendingStages stamps pending's way through this agent so far.
	pendingStages pendingStages
	// stages are the stamps of the applied document, for the status; nil
	// until a document is applied in this run. Never changed once set.
	stages *sv1.ApplyTiming
	// expired is true while the applied document's validity has ended;
	// expiryTimer fires when it ends.
	expired     bool
	expiryTimer *time.Timer
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
	note string
	// preflightMsg says why pending is held back by a failing preflight.
	preflightMsg string
	// guardHeldMsg says why the local guard last could not move the node
	// (the old backend's preflight failed), so that a repeat logs quietly.
	guardHeldMsg string
	health       sv1.DriverHealth
	message      string
	backoff      time.Duration
}

// onMsg receives a push on the service's KV key subject, or behind a leaf
// server on its push subject (the same signed bytes).
func (w *serviceWorker) onMsg(m *nats.Msg) {
	switch m.Header.Get(bus.KVOperationHeader) {
	case bus.KVOperationDelete, bus.KVOperationPurge:
		w.log.Info("desired state deleted on the bus; keeping the applied state")
		return
	}
	if w.inbox.put(delivery{raw: m.Data, at: w.clock.Now()}) {
		w.m.inboxDropped.WithLabelValues(w.name).Inc()
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
	w.series.appliedGeneration.Set(float64(w.applied.GetDesired().GetGeneration()))
	w.series.appliedEpoch.Set(float64(w.applied.GetDesired().GetEpoch()))
	w.expiryTimer = time.NewTimer(time.Hour)
	defer w.expiryTimer.Stop()
	w.checkExpiry()

	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	retrying := false
	step := func() {
		err := w.step(ctx)
		if ctx.Err() != nil {
			return
		}
		var pe *preflightError
		switch {
		case errors.As(err, &pe):
			// The driver is fine; the document waits for its new backend.
			w.backoff = nextBackoff(w.backoff, w.timing.retryMin, w.timing.retryMax)
			retry.Reset(w.backoff)
			retrying = true
			msg := err.Error() + "; keeping the current weights and retrying"
			level := slog.LevelDebug
			if msg != w.preflightMsg {
				level = slog.LevelWarn
			}
			w.preflightMsg = msg
			w.log.Log(ctx, level, "preflight failed; desired state held back", "generation", w.pending.GetGeneration(),
				"rollout", w.pending.GetRolloutId(), "err", pe.err, "backend", pe.backend, "retry_in", w.backoff)
			w.setHealth(sv1.DriverHealth_DRIVER_HEALTH_OK, w.okMessage())
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
				w.setHealth(sv1.DriverHealth_DRIVER_HEALTH_OK, w.okMessage())
			}
		}
		w.sendStatus()
	}

	step()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.expiryTimer.C:
			w.checkExpiry()
			if w.health == sv1.DriverHealth_DRIVER_HEALTH_OK {
				w.setHealth(w.health, w.okMessage())
			}
			w.sendStatus()
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
		case <-w.observeNow:
			w.check = true
			switch {
			case !retrying:
				step()
			case w.health == sv1.DriverHealth_DRIVER_HEALTH_DEGRADED:
				// The proxy was failing: look now rather than at the end of
				// the backoff, so a proxy that is back is repaired at once.
				retry.Stop()
				retrying = false
				step()
			default:
				// A document held back by its preflight keeps its backoff;
				// the proxy is still watched meanwhile.
				if err := w.checkProxy(ctx); err != nil && ctx.Err() == nil {
					w.log.Debug("proxy check failed while a document waits for its preflight", "err", err)
				}
				w.sendStatus()
			}
		case <-retry.C:
			retrying = false
			step()
		case req := <-w.guard:
			if w.localRollback(ctx, req) {
				if retrying {
					// Keep the retry's schedule; only the message changes.
					if w.health == sv1.DriverHealth_DRIVER_HEALTH_OK {
						w.setHealth(w.health, w.okMessage())
					}
					w.sendStatus()
				} else {
					step()
				}
			}
		}
	}
}

// okMessage is the status message while the driver is healthy: what the
// operator should know anyway.
func (w *serviceWorker) okMessage() string {
	var parts []string
	if w.note != "" {
		parts = append(parts, w.note)
	}
	if w.preflightMsg != "" && w.pending != nil {
		parts = append(parts, fmt.Sprintf("generation %d not applied: %s", w.pending.GetGeneration(), w.preflightMsg))
	}
	if lr := w.applied.GetLocalRollback(); lr != nil {
		parts = append(parts, localRollbackMessage(lr))
	}
	if w.expired && w.applied != nil {
		parts = append(parts, fmt.Sprintf("the applied document (generation %d) expired; keeping its weights until a current signed document arrives", w.applied.GetDesired().GetGeneration()))
	}
	if h := w.applied.GetHookHold(); h != nil {
		parts = append(parts, hookHoldMessage(h, w.applied.GetFromBackend()))
	}
	return strings.Join(parts, "; ")
}

func localRollbackMessage(lr *sv1.LocalRollback) string {
	return fmt.Sprintf("local guard moved this node from %q to %q at %s, overriding generation %d of rollout %q: %s; a newer generation from the coordinator replaces this",
		lr.GetFrom(), lr.GetTo(), lr.GetAt().AsTime().UTC().Format(time.RFC3339), lr.GetGeneration(), lr.GetRolloutId(), lr.GetReason())
}

// requestLocalRollback is called by the telemetry loop; a request already
// waiting is as good as a new one.
func (w *serviceWorker) requestLocalRollback(req localRollbackRequest) {
	select {
	case w.guard <- req:
	default:
	}
}

// localRollback moves the node's traffic back to the old backend, keeping
// the applied generation: the coordinator's next document governs again
// only if its generation is higher (normal fencing), so the agent does not
// bounce back to the breaching backend when the bus returns with the same
// document. It reports whether it changed anything.
func (w *serviceWorker) localRollback(ctx context.Context, req localRollbackRequest) bool {
	a := w.applied
	if a == nil || req.seq != w.viewSeq || a.GetLocalRollback() != nil {
		return false // the service moved on since the window was judged
	}
	weights := make(map[string]uint32, len(a.GetWeights()))
	for b := range a.GetWeights() {
		weights[b] = 0
	}
	weights[req.from] = 100
	log := w.log.With("generation", req.generation, "rollout", a.GetDesired().GetRolloutId())
	// The old backend may have had no weight on this node (the last step
	// of a canary, a promoted blue-green): nothing has looked at it since.
	// Moving every request onto a backend that is down would make things
	// worse, so it is preflighted as a coordinator's rollback would be.
	if err := w.prober.preflight(ctx, a.GetWeights(), weights); err != nil {
		if ctx.Err() == nil {
			msg := err.Error()
			level := slog.LevelDebug
			if msg != w.guardHeldMsg {
				level = slog.LevelError
			}
			w.guardHeldMsg = msg
			log.Log(ctx, level, "local guard would move the node back, but the old backend fails its preflight; the node stays and the guard tries again after the next window",
				"from", req.to, "to", req.from, "reason", req.reason, "err", err)
		}
		return false
	}
	w.guardHeldMsg = ""
	lr := &sv1.LocalRollback{
		Generation: req.generation,
		RolloutId:  a.GetDesired().GetRolloutId(),
		From:       req.to,
		To:         req.from,
		Reason:     fmt.Sprintf("%s for %s and %s", req.cutOffHow, req.cutOffFor.Round(time.Second), req.reason),
		At:         timestamppb.New(w.clock.Now()),
	}
	next := &sv1.AppliedState{
		Service:       w.name,
		Desired:       a.GetDesired(),
		Weights:       weights,
		Wave:          a.GetWave(),
		AppliedAt:     lr.GetAt(),
		FromBackend:   a.GetFromBackend(),
		ToBackend:     a.GetToBackend(),
		LocalRollback: lr,
		ExpiresAt:     a.GetExpiresAt(),
	}
	w.recordApplying(next)
	if err := w.setWeights(ctx, weights); err != nil {
		w.readBack(ctx, "the local guard's move back failed part-way")
		log.Error("local guard could not move the node back; will try again after the next window", "err", err, "to", req.from)
		return false
	}
	now := timestamppb.New(w.clock.Now())
	lr.At, next.AppliedAt = now, now
	w.check = true
	w.m.localRollbacks.WithLabelValues(w.name).Inc()
	log.Error("local guard moved this node back to the old backend", "from", req.to, "to", req.from, "weights", weights, "reason", lr.GetReason())
	w.commit(next)
	return true
}

// nextBackoff doubles the retry delay from lo up to hi.
func nextBackoff(cur, lo, hi time.Duration) time.Duration {
	if cur <= 0 {
		return lo
	}
	return min(cur*2, hi)
}

// consider verifies, decodes and fences one delivery. It reports whether
// the delivery became the pending document or changed what the status says
// (a renewal of an expired document).
func (w *serviceWorker) consider(d delivery) bool {
	ds, h, err := w.trust.OpenDesired(d.raw, w.name, w.clock.Now())
	if errors.Is(err, bus.ErrDocumentExpired) && d.poll && h.Fence == documentFence(w.applied.GetDesired()) {
		// The bucket still holds the applied document, expired: no
		// coordinator signed it again (none leads?). The status and
		// /metrics say so already; counting it on every resync would not.
		w.log.Debug("the bucket holds the applied document, expired", "fence", h.Fence.String(), "expired_at", h.ExpiresAt)
		return false
	}
	if err != nil {
		w.reject(bus.RejectReason(err), ds, h, err)
		return false
	}
	if err := checkDocument(ds); err != nil {
		w.reject(reasonMalformed, ds, h, err)
		return false
	}
	newestDoc := w.applied.GetDesired()
	if w.pending != nil {
		newestDoc = w.pending
	}
	newest := documentFence(newestDoc)
	// A push above every earlier push was sent before the document a read
	// of the bucket already brought: late, not replayed.
	overtaken := !d.poll && h.Fence.Compare(w.pushed) > 0
	if overtaken {
		w.pushed = h.Fence
	}
	switch c := h.Fence.Compare(newest); {
	case c > 0:
		if w.pending != nil {
			w.log.Info("pending desired state superseded before it applied",
				"generation", w.pending.GetGeneration(), "rollout", w.pending.GetRolloutId(), "by", h.Fence.String())
		}
		w.pending = ds
		w.pendingExpires = h.ExpiresAt
		w.pendingStages = pendingStages{signedAt: h.IssuedAt, deliveredAt: d.at, verifiedAt: w.clock.Now()}
		w.refused = false
		w.preflightMsg = ""
		w.backoff = 0
		// Debug: every agent logs the apply that follows at info. Checked
		// first: the arguments cost allocations even when nothing is logged.
		if w.log.Enabled(context.Background(), slog.LevelDebug) {
			w.log.Debug("desired state received", "epoch", h.Fence.Epoch, "generation", h.Fence.Generation, "rollout", ds.GetRolloutId(),
				"phase", ds.GetPhase().String(), "key_id", h.KeyID, "expires_at", h.ExpiresAt)
		}
		return true
	case c == 0 && proto.Equal(ds, newestDoc):
		// The same document signed again (a renewal before expiry, or a
		// new signing key): only its validity moves.
		if w.pending != nil {
			w.pendingExpires = later(w.pendingExpires, h.ExpiresAt)
			return false
		}
		if w.relabelled() {
			// Labels are read at start: a node restarted with new ones
			// takes the wave they put it in now, not at the next
			// document (after a completed rollout there is none).
			w.log.Info("labels put this node in another wave of the applied document; applying it again",
				"generation", ds.GetGeneration(), "rollout", ds.GetRolloutId(), "wave_was", w.applied.GetWave())
			w.pending = ds
			w.pendingExpires = later(w.appliedExpires(), h.ExpiresAt)
			w.pendingStages = pendingStages{signedAt: h.IssuedAt, deliveredAt: d.at, verifiedAt: w.clock.Now()}
			w.refused = false
			w.preflightMsg = ""
			w.backoff = 0
			return true
		}
		return w.renew(h.ExpiresAt)
	case c == 0:
		w.reject(reasonConflict, ds, h, fmt.Errorf("fence %s already applied with different content", h.Fence))
		return false
	case d.poll:
		// A read of the bucket that a push overtook: the steady state of
		// polling, not a rejection.
		w.log.Debug("poll read an older document than the agent has; a push overtook it", "fence", h.Fence.String(), "newest", newest.String())
		return false
	case overtaken:
		w.log.Debug("push older than the document a read of the bucket brought; it was overtaken", "fence", h.Fence.String(), "newest", newest.String())
		return false
	default:
		w.reject(reasonStale, ds, h, fmt.Errorf("fence %s is not above %s", h.Fence, newest))
		return false
	}
}

// relabelled reports whether the node's labels put it in another wave of
// the applied document than the one it was applied in: the agent was
// restarted with new labels. A document rolling back gives every node the
// same weights, and a node its local guard moved keeps the guard's weights
// for that document, so neither is applied again; nor is a state a previous
// run was still setting the proxy to, which the first read of the proxy
// settles.
func (w *serviceWorker) relabelled() bool {
	ds := w.applied.GetDesired()
	if ds == nil || w.applying != nil || w.applied.GetLocalRollback() != nil || rollingBack(ds) {
		return false
	}
	_, wave, _ := desired.Evaluate(ds, w.node, w.labels)
	return wave != w.applied.GetWave()
}

// documentFence is the fence of a document the agent holds; the zero fence
// for none.
func documentFence(ds *sv1.DesiredState) bus.Fence {
	return bus.Fence{Epoch: ds.GetEpoch(), Generation: ds.GetGeneration()}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// renew extends the validity of the applied document and persists it. It
// reports whether it did (the status shows the new expiry).
func (w *serviceWorker) renew(expires time.Time) bool {
	if w.applied == nil || !expires.After(w.appliedExpires()) {
		return false
	}
	st := proto.CloneOf(w.applied)
	st.ExpiresAt = timestamppb.New(expires)
	w.commit(st)
	if w.expired {
		w.log.Info("applied desired state current again", "generation", st.GetDesired().GetGeneration(), "expires_at", expires)
	} else {
		w.log.Debug("desired state renewed", "generation", st.GetDesired().GetGeneration(), "expires_at", expires)
	}
	w.checkExpiry()
	return true
}

// appliedExpires is when the applied document stops being current; zero
// when unknown (state saved before documents were signed).
func (w *serviceWorker) appliedExpires() time.Time {
	if t := w.applied.GetExpiresAt(); t != nil {
		return t.AsTime()
	}
	return time.Time{}
}

// checkExpiry updates the expired flag and its gauge from the clock, and
// arms the timer for the moment the applied document expires. An expired
// document keeps its weights (there is nothing better to apply); the status
// and /metrics say so, and the local guard still watches the node.
func (w *serviceWorker) checkExpiry() {
	if w.applied == nil {
		w.expired = false
		w.series.documentExpired.Set(0)
		return
	}
	exp := w.appliedExpires()
	now := w.clock.Now()
	expired := exp.IsZero() || !now.Before(exp)
	if expired && !w.expired {
		w.log.Warn("applied desired state expired and no renewed document arrived; keeping its weights",
			"generation", w.applied.GetDesired().GetGeneration(), "rollout", w.applied.GetDesired().GetRolloutId(), "expired_at", exp)
	}
	w.expired = expired
	v := 0.0
	if expired {
		v = 1
	}
	w.series.documentExpired.Set(v)
	if !expired && w.expiryTimer != nil {
		w.expiryTimer.Reset(exp.Sub(now))
	}
}

// checkDocument rejects documents no coordinator would write.
func checkDocument(ds *sv1.DesiredState) error {
	if ds.GetGeneration() == 0 {
		return errors.New("generation is 0")
	}
	// overweight names a weight above 100; the error is formatted only
	// when there is one.
	overweight := func(weights map[string]uint32) (string, uint32, bool) {
		for b, v := range weights {
			if v > 100 {
				return b, v, true
			}
		}
		return "", 0, false
	}
	if b, v, bad := overweight(ds.GetDefaultWeights()); bad {
		return fmt.Errorf("default weights: weight of %q is %d, want 0..100", b, v)
	}
	for i, wv := range ds.GetWaves() {
		if wv.GetBasisPoints() > desired.FullBasisPoints {
			return fmt.Errorf("wave %d: basis points %d, want 0..%d", i, wv.GetBasisPoints(), desired.FullBasisPoints)
		}
		if b, v, bad := overweight(wv.GetWeights()); bad {
			return fmt.Errorf("wave %d: weight of %q is %d, want 0..100", i, b, v)
		}
	}
	return nil
}

func (w *serviceWorker) reject(reason string, ds *sv1.DesiredState, h bus.Header, err error) {
	w.m.rejected.WithLabelValues(w.name, reason).Inc()
	// Every refusal is a warning, stale ones included: the same document
	// signed again is a renewal and a poll that a push overtook is not
	// refused, so an older document pushed to the agent is a replay or a
	// deposed leader's write. Bounded (refusalLog): the counter has them
	// all.
	ok, since := w.refusals.warn(reason, w.clock.Now())
	if !ok {
		return
	}
	// Only a verified header is worth logging; the fields of a forgery are
	// whatever its author chose.
	args := []any{"reason", reason, "fence", h.Fence.String(), "key_id", h.KeyID, "rollout", ds.GetRolloutId(), "err", err}
	if since > 0 {
		args = append(args, "refused_for_this_reason_since_the_last_warning", since)
	}
	w.log.Warn("desired state refused; keeping the applied state", args...)
}

// step applies the pending document and then checks the proxy, as far as the
// driver lets it. An error means "retry with backoff".
func (w *serviceWorker) step(ctx context.Context) error {
	var held error
	if w.pending != nil && !w.refused {
		if err := w.applyPending(ctx); err != nil {
			var pe *preflightError
			if !errors.As(err, &pe) {
				return err
			}
			// A document held back by its preflight must not hold back
			// the repair of what is applied (HAProxy restarted meanwhile).
			held = err
		}
	}
	if w.check {
		if err := w.checkProxy(ctx); err != nil {
			return err
		}
	}
	return held
}

func (w *serviceWorker) applyPending(ctx context.Context) error {
	ds := w.pending
	gen := ds.GetGeneration()
	// A document held back (by its preflight) past its signature's
	// validity is refused as the fresh path refuses an expired one; a
	// renewal, or the next resync's read, brings it back current.
	if exp := w.pendingExpires; !exp.IsZero() && !w.clock.Now().Before(exp) {
		w.m.rejected.WithLabelValues(w.name, bus.RejectReason(bus.ErrDocumentExpired)).Inc()
		w.log.Warn("pending desired state expired before it could be applied; keeping the applied state until a renewed document arrives",
			"generation", gen, "rollout", ds.GetRolloutId(), "expired_at", exp, "held_by", w.preflightMsg)
		w.pending, w.refused, w.preflightMsg = nil, false, ""
		return nil
	}
	// The document's attributes are added to each line rather than with
	// With, which formats them on every apply whether a line follows or not.
	rollout := ds.GetRolloutId()
	weights, wave, ok := desired.Evaluate(ds, w.node, w.labels)
	before := w.applied.GetWeights()
	if !ok {
		// Most nodes get such a document at every step of a rollout: it is
		// counted (switchyard_agent_applies_total{result="no_wave"}) and
		// logged at debug, not info.
		w.series.appliesNoWave.Inc()
		if w.log.Enabled(ctx, slog.LevelDebug) {
			w.log.Debug("node is in no wave and the document has no default weights; the proxy keeps its weights", "generation", gen, "rollout", rollout)
		}
		from, to := w.direction(ds, before, before)
		appliedAt := w.clock.Now()
		// The weights stay, shared with the previous applied state: applied
		// states are replaced, never changed in place.
		w.commit(&sv1.AppliedState{
			Service:       w.name,
			Desired:       ds,
			Weights:       before,
			Wave:          desired.NoWave,
			AppliedAt:     timestamppb.New(w.clock.Now()),
			FromBackend:   from,
			ToBackend:     to,
			LocalRollback: w.applied.GetLocalRollback(), // the weights are still the guard's
			ExpiresAt:     timestamppb.New(w.pendingExpires),
		})
		w.stages = w.pendingStages.applied(w.series, ds, appliedAt, w.clock.Now())
		w.checkExpiry()
		w.pending, w.refused, w.preflightMsg = nil, false, ""
		return nil
	}
	ran := w.hookRunsSeq
	weights, held := w.preTraffic(ctx, ds, before, weights)
	if w.hookRunsSeq != ran && w.rollbackArrived(ds) {
		// The hooks took their time and the rollout was rolled back
		// meanwhile: giving the new backend weight now, and running the
		// post-traffic hooks before the rollback, would serve it traffic
		// the coordinators already took away.
		w.log.Info("rollback arrived while the pre-traffic hooks ran; applying it instead",
			"generation", gen, "rollout", rollout, "by", w.pending.GetGeneration())
		return w.applyPending(ctx)
	}
	if err := w.prober.preflight(ctx, before, weights); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	from, to := w.direction(ds, before, weights)
	next := &sv1.AppliedState{
		Service:     w.name,
		Desired:     ds,
		Weights:     weights,
		Wave:        wave,
		FromBackend: from,
		ToBackend:   to,
		ExpiresAt:   timestamppb.New(w.pendingExpires),
		HookHold:    held,
	}
	w.recordApplying(next)
	if err := w.setWeights(ctx, weights); err != nil {
		if errors.Is(err, driver.ErrUnknownBackend) {
			w.refused = true
			w.refusedMsg = fmt.Sprintf("generation %d refused by the proxy driver: %v", gen, err)
			w.log.Error("proxy driver refused the desired state; will retry at the next resync or on a newer document", "generation", gen, "rollout", rollout, "err", err)
			return nil
		}
		w.readBack(ctx, fmt.Sprintf("generation %d failed part-way", gen))
		return fmt.Errorf("apply generation %d: %w", gen, err)
	}
	appliedAt := w.clock.Now()
	w.log.LogAttrs(ctx, slog.LevelInfo, "desired state applied", slog.Uint64("generation", gen), slog.String("rollout", rollout),
		slog.Any("weights", weightsValue(weights)), slog.Int("wave", int(wave)), slog.String("from", from), slog.String("to", to))
	// Read back what the proxy now does before the status claims it.
	w.check = true
	prevRollout := w.applied.GetDesired().GetRolloutId()
	next.AppliedAt = timestamppb.New(w.clock.Now())
	w.commit(next)
	w.stages = w.pendingStages.applied(w.series, ds, appliedAt, w.clock.Now())
	w.checkExpiry()
	w.pending, w.refused, w.preflightMsg = nil, false, ""
	w.afterApply(ctx, ds, prevRollout, before, weights, held)
	return nil
}

// direction names the backends a rollout moves this node away from and
// towards. The document does not say (it carries weights only), so the
// agent infers it from the weights that rose and fell; when this document
// moves nothing for the node, the previous answer of the same rollout
// stands.
func (w *serviceWorker) direction(ds *sv1.DesiredState, before, after map[string]uint32) (from, to string) {
	if ds.GetFromBackend() != "" && ds.GetToBackend() != "" {
		return ds.GetFromBackend(), ds.GetToBackend()
	}
	// Documents from coordinators that predate the fields: infer.
	from, to = inferDirection(before, after)
	if to == "" && ds.GetRolloutId() != "" && ds.GetRolloutId() == w.applied.GetDesired().GetRolloutId() {
		return w.applied.GetFromBackend(), w.applied.GetToBackend()
	}
	return from, to
}

// inferDirection returns the backend whose weight rose the most (to) and
// the one whose weight fell the most (from); with two backends the other
// one is from even if it had no weight before (a node's first document).
// Ties name nothing: the agent will not guess. The answer does not depend
// on the order the backends are visited in (a tie is found whichever of the
// two comes first), so they are not sorted.
func inferDirection(before, after map[string]uint32) (from, to string) {
	var upBy, downBy int64
	upTie, downTie := false, false
	for b, now := range after {
		d := int64(now) - int64(before[b])
		switch {
		case d > upBy:
			to, upBy, upTie = b, d, false
		case d > 0 && d == upBy:
			upTie = true
		case -d > downBy:
			from, downBy, downTie = b, -d, false
		case d < 0 && -d == downBy:
			downTie = true
		}
	}
	if upTie || to == "" {
		return "", ""
	}
	if downTie {
		from = ""
	}
	if from == "" && len(after) == 2 {
		for b := range after {
			if b != to {
				from = b
			}
		}
	}
	return from, to
}

// recordApplying writes st to the apply journal before the proxy is set to
// it. A failed write does not hold the apply back (a crash right after the
// proxy took st is then repaired to the saved state, as without the
// journal); it is counted and logged.
func (w *serviceWorker) recordApplying(st *sv1.AppliedState) {
	// What a previous run left is settled: the proxy is set anew.
	w.applying = nil
	if w.applyLog == nil {
		return
	}
	if err := w.applyLog.SaveApplying(st); err != nil {
		w.m.stateSaveErrors.WithLabelValues(w.name).Inc()
		w.log.Error("record the state being applied; applying it anyway", "generation", st.GetDesired().GetGeneration(), "err", err)
	}
}

// settleApplying decides, on the first read of the proxy, what to make of
// the state a previous run was setting when it was killed: if the proxy
// does it, the proxy took it before the crash and it is the applied state
// (the node is not moved back to the older one saved, and its post-traffic
// or rollback hooks, which had not run, run now); if not (the proxy
// restarted since, or never took it), it is forgotten, the saved state is
// repaired as any drift, and the bus brings the document again.
func (w *serviceWorker) settleApplying(ctx context.Context, obs driver.Observation, heldOK func(backend string) bool) {
	next := w.applying
	w.applying = nil
	prev := w.applied
	log := w.log.With("generation", next.GetDesired().GetGeneration(), "rollout", next.GetDesired().GetRolloutId(),
		"weights", weightsValue(next.GetWeights()), "saved_generation", prev.GetDesired().GetGeneration())
	if found, _ := mismatch(next.GetWeights(), obs, heldOK); found != "" {
		log.Info("the previous run was killed while setting these weights and the proxy does not have them; going by the saved state")
		if err := w.applyLog.DropApplying(w.name); err != nil {
			log.Warn("forget the state the previous run was applying", "err", err)
		}
		return
	}
	what := "generation"
	if next.GetLocalRollback() != nil && prev.GetLocalRollback() == nil {
		what = "local guard's move"
	}
	log.Warn("the previous run was killed after the proxy took this " + what + " and before saving it; keeping it")
	w.commit(next)
	w.checkExpiry()
	if documentFence(next.GetDesired()) != documentFence(prev.GetDesired()) {
		w.afterApply(ctx, next.GetDesired(), prev.GetDesired().GetRolloutId(), prev.GetWeights(), next.GetWeights(), next.GetHookHold())
	}
}

// commit makes st the applied state, persisting it first. A failed save does
// not undo what the proxy already has: the agent goes on from memory and says
// so in its status.
func (w *serviceWorker) commit(st *sv1.AppliedState) {
	// The newest local rollback stays in the status after a newer
	// generation replaced its weights, for the coordinators' history.
	switch {
	case st.GetLocalRollback() != nil:
		st.LastLocalRollback = st.GetLocalRollback()
	case st.GetLastLocalRollback() == nil:
		st.LastLocalRollback = cmp.Or(w.applied.GetLocalRollback(), w.applied.GetLastLocalRollback())
	}
	if err := w.store.Save(st); err != nil {
		w.m.stateSaveErrors.WithLabelValues(w.name).Inc()
		w.note = fmt.Sprintf("generation %d applied but not saved locally: %v", st.GetDesired().GetGeneration(), err)
		w.log.Error("save applied state", "generation", st.GetDesired().GetGeneration(), "rollout", st.GetDesired().GetRolloutId(), "err", err)
	} else {
		w.note = ""
	}
	w.applied = st
	w.applying = nil
	w.publishView()
	w.series.appliedGeneration.Set(float64(st.GetDesired().GetGeneration()))
	w.series.appliedEpoch.Set(float64(st.GetDesired().GetEpoch()))
}

// publishView makes the applied state visible to the service's other
// goroutines.
func (w *serviceWorker) publishView() {
	w.viewSeq++
	a := w.applied
	// The weights are shared, not copied: an applied state is replaced on
	// every commit, never changed in place.
	v := &appliedView{
		seq:           w.viewSeq,
		generation:    a.GetDesired().GetGeneration(),
		rolloutID:     a.GetDesired().GetRolloutId(),
		phase:         a.GetDesired().GetPhase(),
		wave:          desired.NoWave,
		weights:       a.GetWeights(),
		from:          a.GetFromBackend(),
		to:            a.GetToBackend(),
		localRollback: a.GetLocalRollback() != nil,
	}
	if a != nil {
		v.wave = a.GetWave()
	}
	w.view.Store(v)
}

// currentView is the latest applied state, safe from any goroutine.
func (w *serviceWorker) currentView() *appliedView { return w.view.Load() }

// setWeights calls the driver, bounded by the apply timeout, and measures it.
func (w *serviceWorker) setWeights(ctx context.Context, weights map[string]uint32) error {
	ctx, cancel := context.WithTimeout(ctx, w.timing.applyTimeout)
	defer cancel()
	start := time.Now()
	err := w.drv.Apply(ctx, weights)
	w.series.applySeconds.Observe(time.Since(start).Seconds())
	result := resultOK
	switch {
	case errors.Is(err, driver.ErrUnknownBackend):
		result = resultRefused
	case err != nil:
		result = resultError
	}
	w.series.applies(result).Inc()
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
	w.series.driverDegraded.Set(degraded)
}

// statusKey is everything a service's status is built from, cheap to
// compare: the proxy is read back every observe interval, and on a fleet of
// agents sharing a host (simulations, benchmarks) building and comparing an
// unchanged status each time was most of the agents' work.
type statusKey struct {
	// applied is replaced, never changed in place, on every commit.
	applied     *sv1.AppliedState
	health      sv1.DriverHealth
	message     string
	expired     bool
	seenOK      bool
	seenMatches bool
	drift       string
	instance    string
	repairs     uint64
	stages      *sv1.ApplyTiming
	hookRunsSeq uint64
	// observed are the maps read back from the proxy; compared by content.
	observedWeights map[string]uint32
	observedHeld    map[string]string
}

func (k *statusKey) equal(o *statusKey) bool {
	return k.applied == o.applied && k.health == o.health && k.message == o.message && k.expired == o.expired &&
		k.seenOK == o.seenOK && k.seenMatches == o.seenMatches && k.drift == o.drift && k.instance == o.instance &&
		k.repairs == o.repairs && k.stages == o.stages && k.hookRunsSeq == o.hookRunsSeq &&
		maps.Equal(k.observedWeights, o.observedWeights) && maps.Equal(k.observedHeld, o.observedHeld)
}

// sendStatus reports the service's status to the agent if it changed.
func (w *serviceWorker) sendStatus() {
	key := statusKey{
		applied: w.applied, health: w.health, message: w.message, expired: w.expired,
		seenOK: w.seen.ok, seenMatches: w.seen.matches, drift: w.seen.drift, instance: w.seen.instance,
		repairs: w.seen.repairs, stages: w.stages, hookRunsSeq: w.hookRunsSeq,
		observedWeights: w.seen.obs.Weights, observedHeld: w.seen.obs.Held,
	}
	if !w.resend.Swap(false) && key.equal(&w.sent) {
		return
	}
	// A driver may hand out maps it changes later; keep copies, one each:
	// the key and the status share them, and neither is changed once made
	// (a stored status is replaced, never changed in place), as the applied
	// state's weights are not.
	key.observedWeights, key.observedHeld = maps.Clone(key.observedWeights), maps.Clone(key.observedHeld)
	w.sent = key
	st := &sv1.ServiceStatus{
		Service:           w.name,
		AppliedGeneration: w.applied.GetDesired().GetGeneration(),
		RolloutId:         w.applied.GetDesired().GetRolloutId(),
		Weights:           w.applied.GetWeights(),
		Driver:            w.health,
		Message:           w.message,
		LocalRollback:     proto.CloneOf(w.applied.GetLocalRollback()),
		LastLocalRollback: proto.CloneOf(w.applied.GetLastLocalRollback()),
		AppliedEpoch:      w.applied.GetDesired().GetEpoch(),
		DocumentExpired:   w.applied != nil && w.expired,
		DocumentExpiresAt: w.applied.GetExpiresAt(),
		ObservedWeights:   key.observedWeights,
		ObservedStates:    key.observedHeld,
		ObservedMatches:   w.observedMatches(),
		ProxyInstance:     w.seen.instance,
		DriftRepairs:      w.seen.repairs,
		Drift:             w.seen.drift,
		ApplyTiming:       w.stages,
	}
	for _, r := range w.hookRuns {
		if r.GetRolloutId() == st.GetRolloutId() {
			st.HookRuns = append(st.HookRuns, proto.CloneOf(r))
		}
	}
	// The agent keeps only changes: a status it marked lost meanwhile is
	// replaced by this one even when it equals the last one sent.
	w.report(st)
}

// weightsValue logs weights as "blue:70 green:30", sorted by backend,
// without the reflection a map costs a handler on every apply.
type weightsValue map[string]uint32

func (v weightsValue) LogValue() slog.Value {
	names := make([]string, 0, len(v))
	for b := range v {
		names = append(names, b)
	}
	slices.Sort(names)
	buf := make([]byte, 0, 16*len(names))
	for i, b := range names {
		if i > 0 {
			buf = append(buf, ' ')
		}
		buf = append(buf, b...)
		buf = append(buf, ':')
		buf = strconv.AppendUint(buf, uint64(v[b]), 10)
	}
	return slog.StringValue(string(buf))
}
