package coordinator

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/switchyard/switchyard/bus"
)

// republishEvery is how often the leader writes every desired state again,
// repairing a bucket that lost a write (a NATS restart with a lagging
// replica). Writes of an unchanged generation are refused by PutDesired and
// cost one read.
const republishEvery = 30 * time.Second

// publisher writes the desired state of changed services to the KV bucket.
// The state machine marks services on every replica; only the leader runs
// the publishing loop.
type publisher struct {
	s     *Server
	mu    sync.Mutex
	dirty map[string]bool
	wake  chan struct{}
}

func newPublisher(s *Server) *publisher {
	return &publisher{s: s, dirty: map[string]bool{}, wake: make(chan struct{}, 1)}
}

// mark records services whose desired state changed. It never blocks: it is
// called from the state machine.
func (p *publisher) mark(services []string) {
	p.mu.Lock()
	for _, svc := range services {
		p.dirty[svc] = true
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *publisher) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.dirty))
	for svc := range p.dirty {
		out = append(out, svc)
	}
	clear(p.dirty)
	return out
}

// run publishes until ctx ends. On start it republishes every service: a new
// leader cannot know what its predecessor managed to write.
func (p *publisher) run(ctx context.Context) {
	s := p.s
	kv, err := bus.EnsureDesiredBucket(ctx, s.js, 1)
	for err != nil {
		s.log.Warn("desired-state bucket unavailable; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		kv, err = bus.EnsureDesiredBucket(ctx, s.js, 1)
	}
	p.mark(s.fsm.State().Services())
	tick := time.NewTicker(republishEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.mark(s.fsm.State().Services())
		case <-p.wake:
		}
		var failed []string
		for _, svc := range p.take() {
			ds := s.fsm.State().Desired(svc)
			if ds == nil {
				continue
			}
			start := time.Now()
			_, err := bus.PutDesired(ctx, kv, ds)
			log := s.log.With("service", svc, "generation", ds.GetGeneration(), "rollout", ds.GetRolloutId())
			switch {
			case err == nil:
				s.metrics.publishes.WithLabelValues("written").Inc()
				s.metrics.publishSeconds.Observe(time.Since(start).Seconds())
				log.Info("desired state published")
			case errors.Is(err, bus.ErrStaleGeneration):
				s.metrics.publishes.WithLabelValues("stale").Inc()
				log.Debug("desired state already published", "detail", err)
			default:
				s.metrics.publishes.WithLabelValues("error").Inc()
				log.Warn("publish desired state failed; will retry", "err", err)
				failed = append(failed, svc)
			}
		}
		if len(failed) > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(500 * time.Millisecond):
			}
			p.mark(failed)
		}
	}
}
