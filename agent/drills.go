package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/state"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/names"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Drills follow the same rules as desired state: one core subscription for
// pushes, a read of the whole bucket on start, reconnect and resync, and
// fencing by generation, per drill. Unlike desired state nothing is kept
// across restarts but the journal of injected faults: a restarted agent
// reverts every fault it journaled and never injects those drills again,
// even if they are still running. An agent that crashed while a fault was
// active may have crashed because of it, and an operator restarting it
// expects the fault gone.

// drillSpanKeep is how long a reverted fault still tags telemetry windows
// that overlap it.
const drillSpanKeep = 2 * time.Minute

// shutdownRevertTimeout bounds the reverts of a stopping agent, all of
// them together: what is not reverted by then is reverted from the journal
// by the next start.
const shutdownRevertTimeout = 5 * time.Second

// revertContext is the context of one revert: it is not cancelled with
// ctx (a drill goroutine told to stop still reverts what it has begun), but
// it keeps ctx's deadline, so a stopping agent's reverts end together by
// its bound, and lasts at most timeout.
func revertContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	rctx := context.WithoutCancel(ctx)
	if dl, ok := ctx.Deadline(); ok {
		var cancelDL context.CancelFunc
		rctx, cancelDL = context.WithDeadline(rctx, dl)
		tctx, cancel := context.WithTimeout(rctx, timeout)
		return tctx, func() { cancel(); cancelDL() }
	}
	return context.WithTimeout(rctx, timeout)
}

// drillDelivery is one drill key's value as it came off the bus.
type drillDelivery struct {
	key string
	raw []byte
	// deleted is a KV delete or purge of the key.
	deleted bool
	// poll marks a document the agent read itself: finding the generation
	// it has is the steady state, not a stale push.
	poll bool
	// listing, on a delivery with no key, is queued before a complete read
	// of the bucket begins: what is pushed from then on is at least as new
	// as what the read finds.
	listing bool
	// listed, on a delivery with no key, ends a complete read of the
	// bucket: drills it does not name are gone, unless pushed since the
	// read began.
	listed map[string]bool
}

// nodeFault is one fault on this node: injected, or journaled by a previous
// run and waiting to be reverted.
type nodeFault struct {
	rec state.FaultRecord
	inj chaos.Injector
	// reverting is set once the fault should be gone; a failed revert is
	// retried with backoff.
	reverting bool
	backoff   time.Duration
}

// faultSpan is a fault's life on this node, for the status and for tagging
// telemetry.
type faultSpan struct {
	drill, kind, service string
	// backend is the rollout backend an http, tcp or backend_state fault
	// acts on.
	backend      string
	since, until time.Time
	ended        time.Time // zero while active
}

// drillFollower follows every drill on the bus, injects the faults of
// those that target this node, and reverts each at its end by a local
// timer, with or without the bus and the coordinators.
type drillFollower struct {
	// refusals bounds the warnings of ignored documents.
	refusals  refusalLog
	node      string
	labels    map[string]string
	drivers   map[string]driver.Driver // by service
	backends  map[string][]string      // by service: its rollout backend names
	processes map[string]ProcessConfig
	journal   FaultJournal
	// trust verifies drill documents.
	trust *bus.Keyring
	gate  *busGate
	conn  func() *nats.Conn
	// sharedConn: the connection is not the agent's own to drop.
	sharedConn bool
	announce   func()
	changed    func()
	clock      clock.Clock
	log        *slog.Logger
	m          *metrics
	timeout    time.Duration
	resync     time.Duration
	retryMin   time.Duration
	retryMax   time.Duration
	// shutdownWait bounds all of shutdown's reverts together
	// (shutdownRevertTimeout; a seam for tests).
	shutdownWait time.Duration
	// newProxy builds a fault proxy; a seam for tests.
	newProxy func(target string, f *sv1.Fault) *chaos.FaultProxy

	// inbox is unbounded: every document is a drill of its own, and a
	// flood is bounded by the bucket's size.
	inbox   *inbox[drillDelivery]
	pollReq chan struct{}
	// listedSeq is the bucket's last stream sequence when it was last
	// listed in full; 0 before. Only the poll goroutine uses it.
	listedSeq uint64
	dueMu     sync.Mutex
	due       map[string]bool
	dueWake   chan struct{}
	// crashed makes the follower stop as a killed agent would: nothing is
	// reverted, the fault proxies just go away. A test seam.
	crashed atomic.Bool
	// accepted counts documents that passed decoding and fencing.
	accepted atomic.Int64

	// Owned by run's goroutine.
	docs map[string]*sv1.DrillDocument
	// gone are the fences of drills whose key was deleted or went missing
	// from the bucket: a delete is not signed, so it must not let an older
	// document of the drill (before its abort, say) in again.
	gone   map[string]bus.Fence
	faults map[string]*nodeFault
	// pushedDuringListing names the drills pushed since the bucket read
	// under way began; nil when none is. The read cannot know of them:
	// it neither deletes them nor brings back an older value.
	pushedDuringListing map[string]bool
	// done names the drills never to inject again on this node (reverted,
	// journaled before a restart, or refused here), until the drill's end.
	done   map[string]time.Time
	retry  map[string]time.Time // next apply attempt after a failure
	tries  map[string]time.Duration
	timers map[string]*time.Timer

	mu    sync.Mutex
	spans []faultSpan
}

func newDrillFollower(a *Agent, res *resources, journal FaultJournal) *drillFollower {
	f := &drillFollower{
		node:         a.cfg.Node,
		labels:       a.cfg.Labels,
		drivers:      map[string]driver.Driver{},
		backends:     map[string][]string{},
		processes:    a.cfg.Processes,
		journal:      journal,
		gate:         newBusGate(),
		conn:         a.conn,
		sharedConn:   a.sharedConn != nil,
		announce:     a.publishStatusNow,
		changed:      a.statusDirty,
		clock:        a.clock,
		log:          a.log,
		m:            a.m,
		timeout:      a.timing.applyTimeout,
		resync:       a.cfg.Resync,
		retryMin:     a.timing.retryMin,
		retryMax:     a.timing.retryMax,
		shutdownWait: shutdownRevertTimeout,
		newProxy: func(target string, f *sv1.Fault) *chaos.FaultProxy {
			if h := f.GetHttp(); h != nil {
				return chaos.NewHTTPFaultProxy(target, h)
			}
			return chaos.NewTCPFaultProxy(target, f.GetTcp())
		},
		trust:   a.trust,
		inbox:   newInbox[drillDelivery](0),
		pollReq: make(chan struct{}, 1),
		due:     map[string]bool{},
		dueWake: make(chan struct{}, 1),
		docs:    map[string]*sv1.DrillDocument{},
		faults:  map[string]*nodeFault{},
		done:    map[string]time.Time{},
		retry:   map[string]time.Time{},
		tries:   map[string]time.Duration{},
		timers:  map[string]*time.Timer{},
	}
	for _, w := range res.workers {
		f.drivers[w.name] = w.drv
		if p := a.cfg.Services[w.name].Proxy; p != nil {
			f.backends[w.name] = p.Backends()
		}
	}
	return f
}

// onMsg receives a push on a drill's KV key subject, or behind a leaf
// server on its push subject.
func (f *drillFollower) onMsg(m *nats.Msg) {
	if key, ok := strings.CutPrefix(m.Subject, bus.DrillPushSubject("")); ok {
		// A copy of a document written: never a delete.
		f.inbox.put(drillDelivery{key: key, raw: m.Data})
		return
	}
	key, ok := strings.CutPrefix(m.Subject, bus.DrillKeySubject(""))
	if !ok {
		return
	}
	switch m.Header.Get(bus.KVOperationHeader) {
	case bus.KVOperationDelete, bus.KVOperationPurge:
		f.inbox.put(drillDelivery{key: key, deleted: true})
		return
	}
	f.inbox.put(drillDelivery{key: key, raw: m.Data})
}

// requestPoll asks for a read of the whole bucket (on every connect).
func (f *drillFollower) requestPoll() {
	select {
	case f.pollReq <- struct{}{}:
	default:
	}
}

// pollLoop reads the whole drills bucket when asked and every resync
// period, off the drill goroutine: a slow bus must not delay a revert.
func (f *drillFollower) pollLoop(ctx context.Context, js jetstream.JetStream) {
	t := newSpreadTimer(f.resync)
	defer t.Stop()
	var kv jetstream.KeyValue
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.pollReq:
		case <-t.C:
			t.Reset(f.resync)
		}
		if nc := f.conn(); nc == nil || !nc.IsConnected() {
			continue
		}
		kv = f.poll(ctx, js, kv)
	}
}

// poll reads every drill in the bucket and hands them to the drill
// goroutine, then says which keys it saw. A bucket that does not exist yet
// is the normal state of a fleet that never ran a drill.
func (f *drillFollower) poll(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) jetstream.KeyValue {
	if kv == nil {
		gctx, cancel := context.WithTimeout(ctx, busTimeout)
		h, err := js.KeyValue(gctx, bus.DrillsBucket)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, jetstream.ErrBucketNotFound):
			f.log.Debug("drills bucket does not exist yet; no drill has run")
			return nil
		case err != nil:
			f.m.resyncErrors.Inc()
			f.log.Warn("open drills bucket; will retry at the next resync", "err", err)
			return nil
		}
		kv = h
	}
	// Every document in the bucket comes in one batched read, which
	// creates nothing on the servers (a key listing would take a consumer
	// for this node, and fail once the stream has all the consumers it may
	// have); past bus.MaxBatchKeys drills it reads the stream in batches,
	// which creates nothing either.
	// Nothing was written or deleted since the last full read when the
	// bucket's last sequence has not moved: pushes cannot have been missed
	// then.
	seq, err := bucketLastSeq(ctx, kv)
	switch {
	case err != nil:
		f.log.Debug("drills bucket status unreadable; reading it", "err", err)
	case seq != 0 && seq == f.listedSeq:
		return kv
	}
	lctx, cancel := context.WithTimeout(ctx, busTimeout)
	defer cancel()
	// Queued before the read: a push queued after this may be newer than
	// what the read finds, and the drill goroutine lets it win.
	f.inbox.put(drillDelivery{listing: true})
	docs, err := bus.ReadAll(lctx, js, kv)
	if err != nil {
		if ctx.Err() == nil {
			f.m.resyncErrors.Inc()
			f.log.Warn("read drills; will retry at the next resync", "err", err)
		}
		return kv
	}
	listed := map[string]bool{}
	for _, k := range slices.Sorted(maps.Keys(docs)) {
		listed[k] = true
		f.inbox.put(drillDelivery{key: k, raw: docs[k], poll: true})
	}
	f.inbox.put(drillDelivery{listed: listed})
	// The sequence read before the listing: a write during it moves the
	// sequence on, and the next resync lists again.
	f.listedSeq = seq
	return kv
}

// bucketLastSeq is the last sequence of a bucket's stream; 0 when it cannot
// tell.
func bucketLastSeq(ctx context.Context, kv jetstream.KeyValue) (uint64, error) {
	sctx, cancel := context.WithTimeout(ctx, busTimeout)
	defer cancel()
	st, err := kv.Status(sctx)
	if err != nil {
		return 0, err
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok {
		return 0, nil
	}
	return bs.StreamInfo().State.LastSeq, nil
}

// run handles drills until ctx ends. It starts by reverting what the
// journal holds. On the way out it reverts every fault, unless the agent is
// crashing.
func (f *drillFollower) run(ctx context.Context) {
	f.recoverJournal(ctx)
	tick := time.NewTicker(f.resync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			f.shutdown()
			return
		case <-f.inbox.wake:
			for _, d := range f.inbox.drain() {
				f.deliver(ctx, d)
			}
		case <-f.dueWake:
			f.dueMu.Lock()
			due := slices.Sorted(maps.Keys(f.due))
			clear(f.due)
			f.dueMu.Unlock()
			for _, name := range due {
				f.reconcile(ctx, name)
			}
		case <-tick.C:
			f.checkFaults(ctx)
		}
	}
}

// deliver decodes and fences one delivery and acts on what changed.
func (f *drillFollower) deliver(ctx context.Context, d drillDelivery) {
	switch {
	case d.listing:
		f.pushedDuringListing = map[string]bool{}
		return
	case d.listed != nil:
		for _, name := range slices.Sorted(maps.Keys(f.docs)) {
			if !d.listed[name] && !f.pushedDuringListing[name] {
				f.log.Info("drill is no longer in the bucket", "drill", name)
				f.forget(name)
				f.reconcile(ctx, name)
			}
		}
		f.pushedDuringListing = nil
		return
	case d.poll && f.pushedDuringListing[d.key]:
		// Read before a push that came since, which is as new: a
		// deleted drill must not come back.
		return
	case !d.poll && f.pushedDuringListing != nil:
		f.pushedDuringListing[d.key] = true
	}
	if d.deleted {
		if _, ok := f.docs[d.key]; ok {
			f.log.Info("drill deleted from the bucket", "drill", d.key)
		}
		f.forget(d.key)
		f.reconcile(ctx, d.key)
		return
	}
	doc, err := decodeDrill(f.trust, d.raw, d.key, f.clock.Now())
	if err != nil {
		f.reject(bus.RejectReason(err), d.key, 0, err)
		return
	}
	name := doc.GetDrill()
	if gone, ok := f.gone[name]; ok {
		if drillFence(doc).Compare(gone) < 0 {
			if !d.poll {
				f.reject(drillStale, name, doc.GetGeneration(), fmt.Errorf("fence %s is below %s, which the drill had when its key went", drillFence(doc), gone))
			}
			return
		}
		delete(f.gone, name)
	}
	if have := f.docs[name]; have != nil {
		switch c := drillFence(doc).Compare(drillFence(have)); {
		case c == 0 && proto.Equal(doc, have):
			return // the same document signed again
		case c <= 0:
			if !d.poll {
				f.reject(drillStale, name, doc.GetGeneration(), fmt.Errorf("fence %s is not above %s", drillFence(doc), drillFence(have)))
			}
			return
		}
	}
	if n, max := len(doc.GetTargets()), doc.GetSpec().GetMaxNodes(); uint32(n) > max {
		// chaos.Targets refuses it too; the metric and the log say why.
		f.reject(drillOverCap, name, doc.GetGeneration(), fmt.Errorf("%d targets, more than its maxNodes %d", n, max))
	}
	f.docs[name] = doc
	f.accepted.Add(1)
	f.reconcile(ctx, name)
}

// forget drops a drill that left the bucket and keeps its fence in gone.
func (f *drillFollower) forget(name string) {
	if doc := f.docs[name]; doc != nil {
		if f.gone == nil {
			f.gone = map[string]bus.Fence{}
		}
		f.gone[name] = drillFence(doc)
	}
	delete(f.docs, name)
}

func (f *drillFollower) reject(reason, drill string, gen uint64, err error) {
	f.m.drillRejected.WithLabelValues(reason).Inc()
	if reason == drillStale {
		f.log.Debug("drill document ignored", "reason", reason, "drill", drill, "generation", gen, "err", err)
		return
	}
	ok, since := f.refusals.warn(reason, f.clock.Now())
	if !ok {
		return
	}
	args := []any{"reason", reason, "drill", drill, "generation", gen, "err", err}
	if since > 0 {
		args = append(args, "ignored_for_this_reason_since_the_last_warning", since)
	}
	f.log.Warn("drill document ignored", args...)
}

// drillFence is a drill document's fence.
func drillFence(d *sv1.DrillDocument) bus.Fence {
	return bus.Fence{Epoch: d.GetEpoch(), Generation: d.GetGeneration()}
}

// decodeDrill verifies and decodes a drill document and refuses one no
// coordinator would write. key is the bucket key it came from ("" when
// unknown). Errors of the signature envelope are bus's sentinels; the rest
// are ErrDocumentMalformed.
func decodeDrill(trust *bus.Keyring, raw []byte, key string, now time.Time) (*sv1.DrillDocument, error) {
	doc, _, err := trust.OpenDrill(raw, key, now)
	if err != nil {
		return nil, err
	}
	if err := checkDrill(doc, key); err != nil {
		return nil, fmt.Errorf("%w: %w", bus.ErrDocumentMalformed, err)
	}
	return doc, nil
}

// checkDrill refuses a verified drill document no coordinator would write.
func checkDrill(doc *sv1.DrillDocument, key string) error {
	if err := names.Validate(doc.GetDrill()); err != nil {
		return fmt.Errorf("drill name: %w", err)
	}
	if key != "" && key != doc.GetDrill() {
		return fmt.Errorf("document of drill %q under the key of %q", doc.GetDrill(), key)
	}
	if doc.GetGeneration() == 0 {
		return errors.New("generation is 0")
	}
	sp := doc.GetSpec()
	if sp == nil {
		return errors.New("no spec")
	}
	if sp.GetName() != doc.GetDrill() {
		return fmt.Errorf("spec of drill %q in the document of %q", sp.GetName(), doc.GetDrill())
	}
	if err := chaos.ValidateDrill(sp); err != nil {
		return err
	}
	for _, ts := range []*timestamppb.Timestamp{doc.GetStartAt(), doc.GetEndAt()} {
		if ts == nil || ts.CheckValid() != nil {
			return errors.New("start_at and end_at are required")
		}
	}
	start, end := doc.GetStartAt().AsTime(), doc.GetEndAt().AsTime()
	if end.Before(start) || end.Sub(start) > chaos.MaxDuration {
		return fmt.Errorf("runs from %s to %s; want an end not before the start, at most %s later", start.Format(time.RFC3339), end.Format(time.RFC3339), chaos.MaxDuration)
	}
	return nil
}

// wants reports whether the drill's fault should be on this node now, and
// if not, why.
func (f *drillFollower) wants(name string, doc *sv1.DrillDocument, now time.Time) (bool, string) {
	switch {
	case doc == nil:
		return false, "the drill is gone from the bus"
	case !f.done[name].IsZero():
		return false, "done on this node"
	case doc.GetAborted():
		return false, "the drill was aborted"
	case f.drivers[doc.GetSpec().GetService()] == nil:
		return false, "the drill's service is not on this node"
	case !chaos.Targets(doc, f.node, f.labels):
		return false, "the drill does not target this node"
	case now.Before(doc.GetStartAt().AsTime()):
		return false, "the drill has not started"
	case !now.Before(doc.GetEndAt().AsTime()):
		return false, "the drill's duration is over"
	}
	return true, ""
}

// reconcile brings one drill's fault on this node to what the drill wants
// now, and arranges to be called again when that changes.
func (f *drillFollower) reconcile(ctx context.Context, name string) {
	if ctx.Err() != nil {
		return
	}
	now := f.clock.Now()
	doc := f.docs[name]
	want, why := f.wants(name, doc, now)
	nf := f.faults[name]
	switch {
	case nf != nil && nf.reverting:
		// Once a revert has begun it is finished, whatever the drill says.
		if why == "" {
			why = "an earlier revert failed"
		}
		f.revert(ctx, name, nf, why)
	case !want && nf != nil:
		f.revert(ctx, name, nf, why)
	case want && nf == nil:
		if at, ok := f.retry[name]; !ok || !now.Before(at) {
			f.inject(ctx, doc, now)
		}
	}
	f.schedule(name, now)
}

// schedule sets the drill's timer to the next moment its state changes
// by itself: its start, its end, or a retry.
func (f *drillFollower) schedule(name string, now time.Time) {
	var next time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	doc := f.docs[name]
	if nf := f.faults[name]; nf != nil {
		if nf.reverting {
			earliest(now.Add(nf.backoff))
		} else {
			earliest(nf.rec.Until)
			if doc != nil {
				earliest(doc.GetEndAt().AsTime())
			}
		}
	} else if doc != nil && f.done[name].IsZero() {
		if start := doc.GetStartAt().AsTime(); now.Before(start) {
			earliest(start)
		} else if now.Before(doc.GetEndAt().AsTime()) {
			earliest(f.retry[name])
		}
	}
	if t := f.timers[name]; t != nil {
		t.Stop()
		delete(f.timers, name)
	}
	if next.IsZero() {
		return
	}
	f.timers[name] = time.AfterFunc(next.Sub(now), func() {
		f.dueMu.Lock()
		f.due[name] = true
		f.dueMu.Unlock()
		select {
		case f.dueWake <- struct{}{}:
		default:
		}
	})
}

// errNotHere marks a fault this node cannot inject at all; it is not
// retried.
var errNotHere = errors.New("cannot be injected on this node")

// plan builds the journal record and the injector of a drill's fault.
func (f *drillFollower) plan(ctx context.Context, doc *sv1.DrillDocument, now time.Time) (state.FaultRecord, chaos.Injector, error) {
	sp := doc.GetSpec()
	rec := state.FaultRecord{
		Drill: doc.GetDrill(), Generation: doc.GetGeneration(), Kind: faultKind(sp.GetFault()),
		Service: sp.GetService(), Since: now, Until: doc.GetEndAt().AsTime(),
	}
	drv := f.drivers[sp.GetService()]
	switch k := sp.GetFault().GetKind().(type) {
	case *sv1.Fault_Http, *sv1.Fault_Tcp:
		rec.Backend = sp.GetFault().GetHttp().GetBackend()
		if t := sp.GetFault().GetTcp(); t != nil {
			rec.Backend = t.GetBackend()
		}
		if !f.knownBackend(sp.GetService(), rec.Backend) {
			return rec, nil, fmt.Errorf("%w: service %s has no backend %q", errNotHere, sp.GetService(), rec.Backend)
		}
		for _, other := range f.faults {
			if (other.rec.Kind == kindHTTP || other.rec.Kind == kindTCP) && other.rec.Service == rec.Service && other.rec.Backend == rec.Backend {
				return rec, nil, fmt.Errorf("%w: drill %s already has a fault on %s", errNotHere, other.rec.Drill, rec.Backend)
			}
		}
		if hf, ok := drv.(driver.HTTPFaulter); ok {
			if h := sp.GetFault().GetHttp(); h != nil {
				return rec, &proxyHTTPFault{drv: hf, backend: rec.Backend, fault: httpFaultOf(h)}, nil
			}
		}
		sa, ok := drv.(driver.ServerAddresser)
		if !ok {
			return rec, nil, fmt.Errorf("%w: the proxy driver of %s cannot re-point a server", errNotHere, sp.GetService())
		}
		cctx, cancel := context.WithTimeout(ctx, f.timeout)
		orig, err := sa.ServerAddr(cctx, rec.Backend)
		cancel()
		if err != nil {
			return rec, nil, err
		}
		rec.OrigAddr = orig
		fault := sp.GetFault()
		return rec, &proxyFault{drv: sa, backend: rec.Backend, orig: orig,
			newProxy: func(target string) *chaos.FaultProxy { return f.newProxy(target, fault) }}, nil
	case *sv1.Fault_BackendState:
		rec.Backend = k.BackendState.GetBackend()
		ss, ok := drv.(driver.StateSetter)
		if !ok {
			return rec, nil, fmt.Errorf("%w: the proxy driver of %s cannot set a server's state", errNotHere, sp.GetService())
		}
		if !f.knownBackend(sp.GetService(), rec.Backend) {
			return rec, nil, fmt.Errorf("%w: service %s has no backend %q", errNotHere, sp.GetService(), rec.Backend)
		}
		// One state fault a backend at a time: each reverts to the state
		// it found, which an overlapping one would have changed.
		for _, other := range f.faults {
			if other.rec.Kind == kindBackendState && other.rec.Service == rec.Service && other.rec.Backend == rec.Backend {
				return rec, nil, fmt.Errorf("%w: drill %s already has a fault on %s", errNotHere, other.rec.Drill, rec.Backend)
			}
		}
		if sr, ok := drv.(driver.StateReader); ok {
			cctx, cancel := context.WithTimeout(ctx, f.timeout)
			prev, err := sr.ServerState(cctx, rec.Backend)
			cancel()
			if err != nil {
				return rec, nil, err
			}
			rec.PrevState = prev
		}
		return rec, &stateFault{drv: ss, backend: rec.Backend, state: k.BackendState.GetState(), prev: rec.PrevState}, nil
	case *sv1.Fault_Process:
		pc, ok := f.processes[k.Process.GetProcess()]
		if !ok {
			return rec, nil, fmt.Errorf("%w: process %q is not in this agent's config (processes: %s)", errNotHere,
				k.Process.GetProcess(), strings.Join(slices.Sorted(maps.Keys(f.processes)), ", "))
		}
		rec.PIDFile, rec.Action = pc.PIDFile, k.Process.GetAction()
		// One process fault a process at a time: the first one's revert
		// (SIGCONT) would end the second's pause while it is reported
		// active.
		for _, other := range f.faults {
			if other.rec.Kind == kindProcess && other.rec.PIDFile == rec.PIDFile {
				return rec, nil, fmt.Errorf("%w: drill %s already has a fault on process %s", errNotHere, other.rec.Drill, k.Process.GetProcess())
			}
		}
		return rec, &chaos.ProcessSignal{PIDFile: pc.PIDFile, Action: rec.Action}, nil
	case *sv1.Fault_CpuBurn:
		cores := min(int(k.CpuBurn.GetCores()), runtime.NumCPU())
		if cores < int(k.CpuBurn.GetCores()) {
			f.log.Warn("cpu burn asks for more cores than this host has; burning all of them", "drill", rec.Drill, "asked", k.CpuBurn.GetCores(), "cores", cores)
		}
		return rec, &chaos.CPUBurn{Cores: cores}, nil
	case *sv1.Fault_BusDrop:
		if f.sharedConn {
			return rec, nil, fmt.Errorf("%w: bus_drop on an agent whose bus connection is shared with others", errNotHere)
		}
		// One bus drop at a time: the first one's revert lets the bus
		// back, which would end the second while it is reported active.
		for _, other := range f.faults {
			if other.rec.Kind == kindBusDrop {
				return rec, nil, fmt.Errorf("%w: drill %s already drops the bus connection", errNotHere, other.rec.Drill)
			}
		}
		// The fault is reported before the connection goes: afterwards
		// nothing can be said until it is over.
		announce := func() {
			f.addSpan(rec)
			f.announce()
		}
		return rec, &busDropFault{gate: f.gate, conn: f.conn, announce: announce}, nil
	}
	return rec, nil, fmt.Errorf("%w: unknown fault", errNotHere)
}

// knownBackend reports whether the agent's config maps a service's backend
// to a server of its proxy.
func (f *drillFollower) knownBackend(service, backend string) bool {
	return slices.Contains(f.backends[service], backend)
}

// revertOnly rebuilds, from a journal record, what reverts its fault: nil
// for the faults that died with the process that injected them (cpu_burn,
// bus_drop), and an error saying what to restore by hand when this agent
// has nothing to revert it with (the service is gone from its config, or
// its driver lacks the capability).
func (f *drillFollower) revertOnly(rec state.FaultRecord) (chaos.Injector, error) {
	drv := f.drivers[rec.Service]
	why := fmt.Sprintf("the proxy driver of service %s cannot undo it", rec.Service)
	if drv == nil {
		why = fmt.Sprintf("service %s is not in this agent's config", rec.Service)
	}
	switch rec.Kind {
	case kindHTTP, kindTCP:
		if hf, ok := drv.(driver.HTTPFaulter); ok && rec.Kind == kindHTTP && rec.OrigAddr == "" {
			return &proxyHTTPFault{drv: hf, backend: rec.Backend}, nil
		}
		if sa, ok := drv.(driver.ServerAddresser); ok && rec.OrigAddr != "" {
			return &proxyFault{drv: sa, backend: rec.Backend, orig: rec.OrigAddr}, nil
		}
		if rec.OrigAddr != "" {
			return nil, fmt.Errorf("%s; by hand, point the server of backend %s back at %s (it points at a fault proxy that is gone)", why, rec.Backend, rec.OrigAddr)
		}
		return nil, fmt.Errorf("%s; by hand, remove the HTTP fault of backend %s from the proxy", why, rec.Backend)
	case kindBackendState:
		if ss, ok := drv.(driver.StateSetter); ok {
			return &stateFault{drv: ss, backend: rec.Backend, prev: rec.PrevState}, nil
		}
		return nil, fmt.Errorf("%s; by hand, set the server of backend %s back to %s", why, rec.Backend, cmp.Or(rec.PrevState, "ready"))
	case kindProcess:
		return &chaos.ProcessSignal{PIDFile: rec.PIDFile, Action: rec.Action}, nil
	case kindCPUBurn, kindBusDrop:
		// They died with the process that injected them.
		return nil, nil
	}
	return nil, fmt.Errorf("unknown fault kind %q; by hand, undo whatever drill %s did", rec.Kind, rec.Drill)
}

// inject journals a drill's fault and applies it.
func (f *drillFollower) inject(ctx context.Context, doc *sv1.DrillDocument, now time.Time) {
	name := doc.GetDrill()
	kind := faultKind(doc.GetSpec().GetFault())
	log := f.log.With("drill", name, "generation", doc.GetGeneration(), "kind", kind, "service", doc.GetSpec().GetService())
	rec, inj, err := f.plan(ctx, doc, now)
	if errors.Is(err, errNotHere) {
		f.m.faults.WithLabelValues(kind, faultRefused).Inc()
		log.Error("drill targets this node but its fault cannot be injected here; not retrying", "err", err)
		f.done[name] = doc.GetEndAt().AsTime()
		return
	}
	if err == nil {
		// Before the fault touches anything: a crash from here on is
		// reverted by the next start.
		err = f.journal.SaveFault(rec)
	}
	if err == nil {
		actx, cancel := context.WithTimeout(ctx, f.timeout)
		err = inj.Apply(actx)
		cancel()
		if err != nil {
			// Undo whatever part was done; the journal keeps the record
			// until that worked.
			rctx, cancel := revertContext(ctx, f.timeout)
			rerr := inj.Revert(rctx)
			cancel()
			if rerr != nil {
				// Half applied, perhaps: reported until the revert works.
				f.faults[name] = &nodeFault{rec: rec, inj: inj, reverting: true, backoff: f.retryMin}
				f.addSpan(rec)
				f.m.faultsActive.WithLabelValues(kind).Inc()
				log.Error("fault failed to apply and to revert; retrying the revert", "err", err, "revert_err", rerr)
			} else {
				f.endSpan(name, now)
				if derr := f.journal.DeleteFault(name); derr != nil {
					log.Warn("forget a fault that did not apply", "err", derr)
				}
			}
		}
	}
	if err != nil {
		f.m.faults.WithLabelValues(kind, faultFailed).Inc()
		backoff := nextBackoff(f.tries[name], f.retryMin, f.retryMax)
		f.tries[name] = backoff
		f.retry[name] = now.Add(backoff)
		log.Warn("fault not injected; retrying", "err", err, "retry_in", backoff)
		return
	}
	delete(f.retry, name)
	delete(f.tries, name)
	// Reported from when it is in force, which is what the drill's report
	// calls the injection time.
	rec.Since = f.clock.Now()
	f.addSpan(rec)
	f.faults[name] = &nodeFault{rec: rec, inj: inj}
	f.m.faults.WithLabelValues(kind, faultApplied).Inc()
	f.m.faultsActive.WithLabelValues(kind).Inc()
	log.Info("fault injected", "until", rec.Until, "backend", rec.Backend, "original_addr", rec.OrigAddr, "late_by", now.Sub(doc.GetStartAt().AsTime()).Round(time.Millisecond))
	f.changed()
}

// revert takes a fault away and remembers that the drill is done here.
func (f *drillFollower) revert(ctx context.Context, name string, nf *nodeFault, why string) {
	log := f.log.With("drill", name, "generation", nf.rec.Generation, "kind", nf.rec.Kind, "service", nf.rec.Service)
	if !f.done[name].After(nf.rec.Until) {
		f.done[name] = nf.rec.Until
	}
	var err error
	if nf.inj != nil {
		rctx, cancel := revertContext(ctx, f.timeout)
		err = nf.inj.Revert(rctx)
		cancel()
	}
	now := f.clock.Now()
	if err != nil {
		f.m.faults.WithLabelValues(nf.rec.Kind, faultRevertFailed).Inc()
		nf.backoff = nextBackoff(nf.backoff, f.retryMin, f.retryMax)
		level := slog.LevelWarn
		if !nf.reverting {
			level = slog.LevelError
		}
		nf.reverting = true
		log.Log(ctx, level, "fault not reverted; retrying", "why", why, "err", err, "retry_in", nf.backoff)
		return
	}
	nf.rec.Reverted = true
	if jerr := f.journal.SaveFault(nf.rec); jerr != nil {
		// After a crash the fault would be reverted once more: harmless.
		log.Warn("journal the revert", "err", jerr)
	}
	delete(f.faults, name)
	f.endSpan(name, now)
	f.m.faults.WithLabelValues(nf.rec.Kind, faultReverted).Inc()
	f.m.faultsActive.WithLabelValues(nf.rec.Kind).Dec()
	log.Info("fault reverted", "why", why, "after_end", now.Sub(nf.rec.Until).Round(time.Millisecond))
	f.changed()
}

// recoverJournal reverts every fault a previous run journaled and did not
// revert, and remembers the drills it must not inject again.
func (f *drillFollower) recoverJournal(ctx context.Context) {
	recs, damaged, err := f.journal.LoadFaults()
	if err != nil {
		f.log.Error("cannot read the fault journal; faults of a previous run may still be active", "err", err)
		return
	}
	now := f.clock.Now()
	for _, d := range damaged {
		f.m.journalDamaged.Inc()
		f.log.Error("a fault journal record cannot be read; it is moved aside (bucket faults.damaged) and not reverted: "+
			"if a fault of that drill is still on this node, revert it by hand", "key", d.Key, "err", d.Err)
		if err := f.journal.QuarantineFault(d.Key); err != nil {
			f.log.Warn("move the damaged fault record aside; it is read again at the next start", "key", d.Key, "err", err)
		}
		// Its key is most likely the drill's name: not injected again
		// while the drill may still run, as for any journaled fault.
		f.done[d.Key] = now.Add(chaos.MaxDuration)
	}
	for _, rec := range recs {
		if rec.Reverted {
			if now.After(rec.Until.Add(time.Minute)) {
				if err := f.journal.DeleteFault(rec.Drill); err != nil {
					f.log.Warn("forget an old fault record", "drill", rec.Drill, "err", err)
				}
				continue
			}
			f.done[rec.Drill] = rec.Until
			continue
		}
		f.done[rec.Drill] = rec.Until
		inj, err := f.revertOnly(rec)
		if err != nil {
			// The record stays unreverted: a config that drives the
			// service again reverts it at its next start.
			f.m.faults.WithLabelValues(rec.Kind, faultRevertFailed).Inc()
			f.log.Error("a fault journaled by a previous run cannot be reverted by this agent; revert it by hand", "drill", rec.Drill,
				"kind", rec.Kind, "service", rec.Service, "backend", rec.Backend, "since", rec.Since, "until", rec.Until, "original_addr", rec.OrigAddr, "err", err)
			continue
		}
		f.log.Warn("reverting a fault journaled by a previous run; the drill is not injected again", "drill", rec.Drill,
			"kind", rec.Kind, "since", rec.Since, "until", rec.Until, "original_addr", rec.OrigAddr)
		f.faults[rec.Drill] = &nodeFault{rec: rec, inj: inj, reverting: true, backoff: f.retryMin}
		f.m.faultsActive.WithLabelValues(rec.Kind).Inc()
		f.addSpan(rec)
		f.reconcile(ctx, rec.Drill)
	}
}

// checkFaults runs every resync: each drill is reconciled again (a clock
// that jumped, a missed timer), a fault proxy HAProxy lost (restarted or
// reloaded under the agent) is put back, and old spans are forgotten.
func (f *drillFollower) checkFaults(ctx context.Context) {
	for _, name := range slices.Sorted(maps.Keys(f.faults)) {
		nf := f.faults[name]
		pf, ok := nf.inj.(*proxyFault)
		if !ok || nf.reverting {
			continue
		}
		want := pf.proxyAddr()
		cctx, cancel := context.WithTimeout(ctx, f.timeout)
		have, err := pf.drv.ServerAddr(cctx, pf.backend)
		if err == nil && have != want && want != "" {
			log := f.log.With("drill", name, "kind", nf.rec.Kind, "backend", pf.backend)
			log.Warn("the proxy lost the fault proxy's address (restarted or reloaded?); pointing the server at it again", "have", have, "want", want)
			// What the proxy has now is the backend's address after the
			// reload: the revert must restore that one.
			pf.mu.Lock()
			pf.orig = have
			pf.mu.Unlock()
			nf.rec.OrigAddr = have
			if jerr := f.journal.SaveFault(nf.rec); jerr != nil {
				log.Warn("journal the new original address", "err", jerr)
			}
			if err := pf.drv.SetServerAddr(cctx, pf.backend, want); err != nil {
				log.Warn("point the server at the fault proxy again", "err", err)
			}
		}
		cancel()
	}
	for _, name := range slices.Sorted(maps.Keys(f.docs)) {
		f.reconcile(ctx, name)
	}
	for _, name := range slices.Sorted(maps.Keys(f.faults)) {
		if f.docs[name] == nil {
			f.reconcile(ctx, name)
		}
	}
	now := f.clock.Now()
	for name, until := range f.done {
		if now.After(until.Add(time.Minute)) && f.faults[name] == nil {
			delete(f.done, name)
		}
	}
	for name, doc := range f.docs {
		if now.After(doc.GetEndAt().AsTime().Add(drillSpanKeep)) && f.faults[name] == nil {
			// Its fence stays: an older document of the drill (before
			// its abort, whose window may still be open) must not come
			// back in.
			f.forget(name)
		}
	}
	f.mu.Lock()
	f.spans = slices.DeleteFunc(f.spans, func(s faultSpan) bool {
		return !s.ended.IsZero() && now.Sub(s.ended) > drillSpanKeep
	})
	f.mu.Unlock()
}

// shutdown reverts every fault as the agent stops; a crashing agent
// reverts nothing and its fault proxies just go away.
func (f *drillFollower) shutdown() {
	for _, t := range f.timers {
		t.Stop()
	}
	if f.crashed.Load() {
		for _, nf := range f.faults {
			switch inj := nf.inj.(type) {
			case *proxyFault:
				inj.abandon()
			case *chaos.CPUBurn:
				_ = inj.Revert(context.Background())
			}
		}
		return
	}
	// One deadline for every revert: each gets what is left of it, so a
	// proxy that does not answer cannot hold the agent for a timeout per
	// fault.
	ctx, cancel := context.WithTimeout(context.Background(), f.shutdownWait)
	defer cancel()
	for _, name := range slices.Sorted(maps.Keys(f.faults)) {
		f.revert(ctx, name, f.faults[name], "the agent is stopping")
		if nf := f.faults[name]; nf != nil {
			if pf, ok := nf.inj.(*proxyFault); ok {
				pf.abandon()
			}
			f.log.Error("fault could not be reverted before the agent stopped; the next start reverts it from the journal", "drill", name)
		}
	}
}

func (f *drillFollower) addSpan(rec state.FaultRecord) {
	f.mu.Lock()
	f.spans = slices.DeleteFunc(f.spans, func(s faultSpan) bool { return s.drill == rec.Drill })
	f.spans = append(f.spans, faultSpan{drill: rec.Drill, kind: rec.Kind, service: rec.Service, backend: rec.Backend, since: rec.Since, until: rec.Until})
	f.mu.Unlock()
}

func (f *drillFollower) endSpan(drill string, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.spans {
		if f.spans[i].drill == drill && f.spans[i].ended.IsZero() {
			f.spans[i].ended = at
		}
	}
}

// activeFaults lists the faults on this node now, for the status.
func (f *drillFollower) activeFaults() []*sv1.ActiveFault {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*sv1.ActiveFault
	for _, s := range f.spans {
		if s.ended.IsZero() {
			out = append(out, &sv1.ActiveFault{Drill: s.drill, Kind: s.kind, Since: timestamppb.New(s.since), Until: timestamppb.New(s.until)})
		}
	}
	slices.SortFunc(out, func(a, b *sv1.ActiveFault) int { return strings.Compare(a.GetDrill(), b.GetDrill()) })
	return out
}

// holdsBackend reports whether a drill fault active on this node puts
// service's backend in drain or maintenance on purpose, so the agent does
// not take it for drift and undo it. Only that backend: another one held
// out of rotation (by hand, say) is still drift.
func (f *drillFollower) holdsBackend(service, backend string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.spans {
		if s.service == service && s.backend == backend && s.kind == kindBackendState && s.ended.IsZero() {
			return true
		}
	}
	return false
}

// drillDuring names a drill whose fault on this node overlapped a window
// of the service's telemetry; "" when none did. With several, the one
// injected first wins.
func (f *drillFollower) drillDuring(service string, start, end time.Time) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var best *faultSpan
	for i := range f.spans {
		s := &f.spans[i]
		if s.service != service || s.since.After(end) || (!s.ended.IsZero() && s.ended.Before(start)) {
			continue
		}
		if best == nil || s.since.Before(best.since) {
			best = s
		}
	}
	if best == nil {
		return ""
	}
	return best.drill
}

// drillOnBackend names a drill whose fault on this node acted on service's
// backend (http, tcp, backend_state) at some time in [start, end]; "" when
// none did.
func (f *drillFollower) drillOnBackend(service, backend string, start, end time.Time) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.spans {
		if s.service == service && s.backend == backend && !s.since.After(end) && (s.ended.IsZero() || !s.ended.Before(start)) {
			return s.drill
		}
	}
	return ""
}
