package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// republishEvery is how often, at most, the leader writes every desired state
// again, repairing a bucket that lost a write (a NATS restart with a lagging
// replica) or was written by someone without a trusted key, and signing
// documents again before they expire. Writes of an unchanged generation with
// enough validity left are refused by PutDesired and cost one read.
const republishEvery = 30 * time.Second

// publisher writes the desired state of changed services to the KV bucket.
// The state machine marks services on every replica; only the leader runs
// the publishing loop.
type publisher struct {
	s     *Server
	mu    sync.Mutex
	dirty map[docKey]bool
	// committedAt is when the state machine last marked a service's
	// desired state changed, until it is written.
	committedAt map[string]time.Time
	wake        chan struct{}
	// failingSince is when writes began to fail, zero while they succeed
	// (or this coordinator does not publish); lastErr is the latest failure.
	failingSince time.Time
	lastErr      error
	// suspect are the documents a message landed on that the leader is to
	// read again (see watch); checkAt is when it may next, and checking
	// says a check is scheduled.
	suspect  map[docKey]bool
	checkAt  time.Time
	checking bool
	// written is the value this leader last wrote or found verified, by
	// document: a message of the same bytes is not suspect.
	written map[docKey][]byte
}

// health says whether this coordinator's writes to the bus are failing:
// since when and why; err is nil while they succeed or it writes nothing.
func (p *publisher) health() (since time.Time, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failingSince, p.lastErr
}

// result records the outcome of one round of writes.
func (p *publisher) result(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		p.failingSince, p.lastErr = time.Time{}, nil
		return
	}
	if p.failingSince.IsZero() {
		p.failingSince = time.Now()
	}
	p.lastErr = err
}

// docKey names one published document: a service's desired state or a
// drill.
type docKey struct {
	drill bool
	name  string
}

// push publishes a document just written to its bucket again on its push
// subject, the same signed bytes: agents behind a leaf server, which never
// receives the bucket's own $KV.… subjects, follow these. A failure costs
// those agents the push alone (their resync reads the bucket), so it is
// counted and logged, and the write stands.
func (p *publisher) push(k docKey, value []byte, log *slog.Logger) {
	subject := bus.DesiredPushSubject(k.name)
	if k.drill {
		subject = bus.DrillPushSubject(k.name)
	}
	if err := p.s.nc.Publish(subject, value); err != nil {
		p.s.metrics.pushes.WithLabelValues("failed").Inc()
		log.Warn("document written, but its copy for agents behind leaf servers was not sent; they read it at their next resync", "subject", subject, "err", err)
		return
	}
	p.s.metrics.pushes.WithLabelValues("sent").Inc()
}

func newPublisher(s *Server) *publisher {
	return &publisher{s: s, dirty: map[docKey]bool{}, committedAt: map[string]time.Time{}, wake: make(chan struct{}, 1),
		suspect: map[docKey]bool{}, written: map[docKey][]byte{}}
}

// wrote records value as what the bucket holds, verified, for k.
func (p *publisher) wrote(k docKey, value []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.written[k] = value
}

// suspectEvery is how often, at most, the leader reads again the documents
// messages landed on.
const suspectEvery = time.Second

// watch follows every message that lands on the buckets' keys while this
// coordinator publishes, and has the documents they landed on read again
// (and written again when the bucket no longer holds a verified one), at
// most once every suspectEvery. Only coordinators may write the buckets,
// but whoever may read them through the JetStream API (agents, operators)
// can name a key's subject as the reply subject of an API request, and the
// NATS server then stores its answer there, in place of the signed
// document; without this, it would stay until the periodic round. The
// leader's own writes land there too and cost one read each.
func (p *publisher) watch() (stop func(), err error) {
	var subs []*nats.Subscription
	stop = func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
	}
	for _, w := range []struct {
		drill  bool
		prefix string
	}{{false, bus.DesiredKeySubject("")}, {true, bus.DrillKeySubject("")}} {
		sub, err := p.s.nc.Subscribe(w.prefix+">", func(m *nats.Msg) {
			if m.Header.Get(bus.KVOperationHeader) != "" {
				return // a delete or purge: the leader's own
			}
			p.suspectKey(docKey{w.drill, strings.TrimPrefix(m.Subject, w.prefix)}, m.Data)
		})
		if err != nil {
			stop()
			return nil, err
		}
		subs = append(subs, sub)
	}
	return stop, nil
}

// suspectKey has k read again, now or once suspectEvery has passed since
// the last time, unless value is what this leader wrote there last.
func (p *publisher) suspectKey(k docKey, value []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w, ok := p.written[k]; ok && bytes.Equal(w, value) {
		return
	}
	p.suspect[k] = true
	if p.checking {
		return
	}
	p.checking = true
	time.AfterFunc(time.Until(p.checkAt), func() {
		p.mu.Lock()
		var keys []docKey
		for k := range p.suspect {
			keys = append(keys, k)
		}
		clear(p.suspect)
		p.checking, p.checkAt = false, time.Now().Add(suspectEvery)
		p.mu.Unlock()
		for _, k := range keys {
			p.markKeys(k.drill, []string{k.name})
		}
	})
}

// mark records services whose desired state changed. It never blocks: it is
// called from the state machine.
func (p *publisher) mark(services []string) {
	now := time.Now()
	p.mu.Lock()
	for _, n := range services {
		p.committedAt[n] = now
	}
	p.mu.Unlock()
	p.markKeys(false, services)
}

// committed is when the state machine marked service, and forgets it.
func (p *publisher) committed(service string) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	t := p.committedAt[service]
	delete(p.committedAt, service)
	return t
}

// markDrills records drills whose document changed.
func (p *publisher) markDrills(drills []string) { p.markKeys(true, drills) }

func (p *publisher) markKeys(drill bool, names []string) {
	p.mu.Lock()
	for _, n := range names {
		p.dirty[docKey{drill, n}] = true
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) take() []docKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]docKey, 0, len(p.dirty))
	for k := range p.dirty {
		out = append(out, k)
	}
	clear(p.dirty)
	return out
}

func (p *publisher) markAll() {
	st := p.s.fsm.State()
	p.mark(st.Services())
	p.markDrills(st.PublishedDrills())
}

// run publishes until ctx ends. On start it republishes every service: a new
// leader cannot know what its predecessor managed to write.
func (p *publisher) run(ctx context.Context) {
	s := p.s
	// A coordinator that stops leading stops publishing; its failures are
	// not its health any more, nor what it found in the buckets.
	defer p.result(nil)
	defer s.fleet.clearConflict("")
	var kv, drillsKV jetstream.KeyValue
	// ensure creates the buckets when missing; on failure it keeps the
	// handles it had.
	ensure := func() error {
		d, err := bus.EnsureDesiredBucket(ctx, s.js, s.replicas)
		if err != nil {
			return err
		}
		dr, err := bus.EnsureDrillsBucket(ctx, s.js, s.replicas)
		if err != nil {
			return err
		}
		kv, drillsKV = d, dr
		return nil
	}
	for {
		err := ensure()
		if err == nil {
			break
		}
		p.result(err)
		s.log.Warn("KV buckets unavailable; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	if stop, err := p.watch(); err != nil {
		s.log.Warn("cannot follow the buckets' keys; documents written there by others are replaced at the periodic round", "err", err)
	} else {
		defer stop()
	}
	p.markAll()
	// The first round of a new leader pushes the documents it finds
	// already written as well: the leader before may have been killed
	// between a write and its push, and agents behind a leaf server would
	// wait for their resync.
	first := true
	tick := time.NewTicker(republishInterval(s.docs.Signer.Validity()))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.markAll()
		case <-p.wake:
		}
		var failed []docKey
		var lastErr error
		for _, k := range p.take() {
			var (
				res   bus.PutResult
				ds    *sv1.DesiredState
				err   error
				log   = s.log
				start = time.Now()
			)
			if k.drill {
				doc := s.fsm.State().DrillDocument(k.name)
				if doc == nil {
					continue
				}
				res, err = s.docs.PutDrill(ctx, drillsKV, doc, start)
				log = log.With("drill", k.name, "epoch", doc.GetEpoch(), "generation", doc.GetGeneration())
			} else {
				ds = s.fsm.State().Desired(k.name)
				if ds == nil {
					continue
				}
				res, err = s.docs.PutDesired(ctx, kv, ds, start)
				log = log.With("service", k.name, "epoch", ds.GetEpoch(), "generation", ds.GetGeneration(), "rollout", ds.GetRolloutId())
			}
			if res.ReplacedUnverified {
				// Someone without a trusted key wrote the bucket.
				s.metrics.publishes.WithLabelValues("replaced_unverified").Inc()
				log.Warn("the bucket held a document no trusted key signed; overwritten with the current one")
			}
			if res.Value != nil && (err == nil || errors.Is(err, bus.ErrStaleGeneration)) {
				p.wrote(k, res.Value)
			}
			if err == nil || (first && errors.Is(err, bus.ErrStaleGeneration) && res.Value != nil) {
				p.push(k, res.Value, log)
			}
			if !k.drill && !errors.Is(err, bus.ErrFenceConflict) {
				s.fleet.clearConflict(k.name)
			}
			switch {
			case err == nil && res.Renewed:
				s.metrics.publishes.WithLabelValues("renewed").Inc()
				log.Debug("document signed again before it expires")
			case err == nil:
				acked := time.Now()
				s.metrics.publishes.WithLabelValues("written").Inc()
				s.metrics.publishSeconds.Observe(acked.Sub(start).Seconds())
				if !k.drill {
					s.stages.wrote(k.name, DecisionTiming{Fence: bus.Fence{Epoch: ds.GetEpoch(), Generation: ds.GetGeneration()},
						IssuedAt: ds.GetIssuedAt().AsTime(), CommittedAt: p.committed(k.name), SignedAt: start, AckedAt: acked})
				}
				log.Info("desired state published")
			case errors.Is(err, bus.ErrFenceConflict):
				// Not retried at once: only a higher fence gets past it.
				// The periodic round tries again, and says so again.
				s.metrics.publishes.WithLabelValues("conflict").Inc()
				if !k.drill {
					s.fleet.setConflict(k.name, bus.Fence{Epoch: ds.GetEpoch(), Generation: ds.GetGeneration()})
				}
				err = fmt.Errorf("%w; nodes that applied that fence hold the other document and refuse this one, so none of them counts as converged. "+
					"Raise the epoch (switchyard coordinator raise-epoch) to move the fleet to this cluster's documents", err)
				log.Error("the bucket holds another document of this fence (entries a recovery lost); not overwriting it", "err", err)
				lastErr = err
			case errors.Is(err, bus.ErrStaleGeneration):
				s.metrics.publishes.WithLabelValues("stale").Inc()
				log.Debug("desired state already published", "detail", err)
			default:
				s.metrics.publishes.WithLabelValues("error").Inc()
				log.Warn("publish desired state failed; will retry", "err", err)
				failed = append(failed, k)
				lastErr = err
			}
		}
		first = false
		p.result(lastErr)
		if len(failed) > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			// A bucket that went away while this coordinator leads (a NATS
			// server restarted without its store, a bucket deleted by
			// hand) fails every write until it exists again: create it
			// again, as a new leader would. Idempotent when it exists.
			if err := ensure(); err != nil {
				p.result(err)
				s.log.Warn("KV buckets unavailable; retrying", "err", err)
			}
			for _, k := range failed {
				p.markKeys(k.drill, []string{k.name})
			}
		}
	}
}
