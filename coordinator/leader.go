package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/fsm"
)

// ErrNotLeader is returned for a write attempted on a coordinator that does
// not lead (or no longer does).
var ErrNotLeader = errors.New("this coordinator is not the leader")

// applyTimeout bounds one proposal; on a healthy LAN cluster it takes
// milliseconds.
const applyTimeout = 10 * time.Second

// raftApply proposes one entry and waits until this node has applied it.
// Every write to the replicated state goes through here. Losing leadership
// while waiting is reported as ErrNotLeader: the entry may or may not
// commit, and callers that must not repeat it rely on the FSM's dedup.
func (s *Server) raftApply(t fsm.MessageType, body proto.Message) (fsm.Response, uint64, error) {
	b, err := fsm.Encode(t, body)
	if err != nil {
		return fsm.Response{}, 0, err
	}
	start := time.Now()
	f := s.raft.Apply(b, applyTimeout)
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
			errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, raft.ErrRaftShutdown) {
			s.metrics.raftApplyFailures.WithLabelValues("not_leader").Inc()
			return fsm.Response{}, 0, fmt.Errorf("%w: %v", ErrNotLeader, err)
		}
		// The leader could not write its log (a full disk, a failing
		// one): raft steps it down, and this is what says why.
		s.metrics.raftApplyFailures.WithLabelValues("error").Inc()
		s.log.Error("raft entry not committed: this coordinator could not write it; check the disk under its data dir",
			"data_dir", s.cfg.DataDir, "err", err)
		return fsm.Response{}, 0, fmt.Errorf("raft apply: %w", err)
	}
	s.metrics.raftApply.Observe(time.Since(start).Seconds())
	resp, _ := f.Response().(fsm.Response)
	return resp, f.Index(), nil
}

// monitorLeadership starts leader-only work when this node gains leadership
// and stops it when it loses it.
func (s *Server) monitorLeadership(ctx context.Context) {
	type term struct {
		cancel context.CancelFunc
		done   chan struct{}
	}
	var cur *term
	stop := func() {
		if cur == nil {
			return
		}
		cur.cancel()
		<-cur.done
		cur = nil
		s.metrics.isLeader.Set(0)
		s.log.Info("leadership lost; leader work stopped")
	}
	defer stop()
	for {
		select {
		case <-ctx.Done():
			return
		case isLeader := <-s.leaderCh:
			if !isLeader {
				stop()
				continue
			}
			if cur != nil {
				continue
			}
			lctx, cancel := context.WithCancel(ctx)
			t := &term{cancel: cancel, done: make(chan struct{})}
			cur = t
			go func() {
				defer close(t.done)
				s.leaderLoop(lctx)
			}()
		}
	}
}

// leaderLoop runs while this node leads. It first waits for every earlier
// entry to be applied (Barrier), so decisions read the full state, then runs
// the leader's routines until leadership ends.
func (s *Server) leaderLoop(ctx context.Context) {
	for {
		err := s.raft.Barrier(applyTimeout).Error()
		if err == nil {
			break
		}
		s.log.Warn("barrier after gaining leadership failed", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
		if s.raft.State() != raft.Leader {
			return
		}
	}
	s.metrics.isLeader.Set(1)
	s.established.Store(true)
	defer s.established.Store(false)
	s.log.Info("leadership established")
	s.bootstrapAcl(ctx)

	routines := map[string]func(context.Context){
		"publisher": s.publisher.run,
		"intents":   s.consumeIntents,
		"rollouts":  s.runRollouts,
		"drills":    s.runDrills,
		"webhooks":  s.runWebhooks,
		"audit":     s.exportAudit,
		"notify":    s.runNotify,
		"beacon":    s.runBeacon,
		"retention": s.runRetention,
	}
	var wg sync.WaitGroup
	for name, run := range routines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.log.Debug("leader routine started", "routine", name)
			run(ctx)
			s.log.Debug("leader routine stopped", "routine", name)
		}()
	}
	wg.Wait()
}

// runBeacon tells the fleet every bus.BeaconInterval that a leader leads:
// an agent that stops hearing it (a PoP cut off from the hub behind its
// leaf server, no leader elected) may act on its own (its local guard).
func (s *Server) runBeacon(ctx context.Context) {
	t := time.NewTicker(bus.BeaconInterval)
	defer t.Stop()
	for {
		if err := s.nc.Publish(bus.BeaconSubject, nil); err != nil {
			s.log.Debug("publish the leader's beacon", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
