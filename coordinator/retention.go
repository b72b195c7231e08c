package coordinator

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// DefaultForgetRolloutsAfter is how long a finished rollout stays in the
// replicated state (Config.ForgetRolloutsAfter when zero): 90 days.
const DefaultForgetRolloutsAfter = 90 * 24 * time.Hour

// KeepRollouts as Config.ForgetRolloutsAfter turns the retention off: the
// state keeps every rollout.
const KeepRollouts time.Duration = -1

// forgetBatch bounds the rollouts one ForgetEntry names, so that a first
// pass over years of rollouts is many small entries, not one huge one.
const forgetBatch = 500

// retentionEvery is how often the leader looks for rollouts to forget
// when they are kept for after: every minute, or a tenth of after when
// that is shorter, never more often than the controller's tick.
func retentionEvery(after, tick time.Duration) time.Duration {
	return max(min(time.Minute, after/10), tick)
}

// runRetention is the leader's routine that forgets finished rollouts
// older than Config.ForgetRolloutsAfter, beyond the newest
// state.KeepFinishedPerService of each service; every replica applies the
// same ForgetEntry. Without it the state grows by every rollout ever
// applied (operations.md has the figures).
func (s *Server) runRetention(ctx context.Context) {
	after := s.cfg.ForgetRolloutsAfter
	if after < 0 {
		return
	}
	t := time.NewTicker(retentionEvery(after, s.cfg.TickInterval))
	defer t.Stop()
	for {
		s.forgetOldRollouts(ctx, after)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// appliesForget is what a coordinator that applies a ForgetEntry says in
// PeerInfo.Applies.
const appliesForget = "forget"

// membersApply names the members of the Raft configuration that did not
// say, on /v1/cluster/self at one of the --retry-join addresses, that they
// apply entries of kind what: a coordinator of an older release stops at
// an entry it does not know (operations.md, the upgrade order), so during
// a rolling upgrade the leader must not write one on its own.
func (s *Server) membersApply(ctx context.Context, what string) []string {
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return []string{"(the Raft configuration could not be read)"}
	}
	missing := map[string]bool{}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) != s.cfg.NodeID {
			missing[string(srv.ID)] = true
		}
	}
	for _, addr := range s.cfg.RetryJoin {
		if len(missing) == 0 {
			break
		}
		var p PeerInfo
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := s.cluster.getJSON(actx, addr, "/v1/cluster/self", &p)
		cancel()
		if err == nil && slices.Contains(p.Applies, what) {
			delete(missing, p.ID)
		}
	}
	return slices.Sorted(maps.Keys(missing))
}

// forgetOldRollouts forgets, a batch at a time, every finished rollout the
// retention lets go.
func (s *Server) forgetOldRollouts(ctx context.Context, after time.Duration) {
	checked := false
	for ctx.Err() == nil {
		now := s.cfg.Clock.Now()
		ids := s.fsm.State().ForgetCandidates(now.Add(-after), forgetBatch)
		if len(ids) == 0 {
			return
		}
		if !checked {
			if older := s.membersApply(ctx, appliesForget); len(older) > 0 {
				if !s.retentionWaiting {
					s.log.Warn("finished rollouts are due to be forgotten, but not every coordinator said it can apply that; waiting (upgrade every coordinator to this release, and list each in --retry-join)",
						"due", len(ids), "coordinators", strings.Join(older, ","))
				}
				s.retentionWaiting = true
				return
			}
			checked, s.retentionWaiting = true, false
		}
		resp, index, err := s.raftApply(fsm.ForgetType, &sv1.ForgetEntry{
			Rollouts:  ids,
			StampedAt: timestamppb.New(now),
			Reason:    fmt.Sprintf("finished more than %s ago, beyond the newest %d of their service", after, state.KeepFinishedPerService),
		})
		if err != nil {
			s.log.Warn("could not forget finished rollouts; trying again at the next pass", "rollouts", len(ids), "err", err)
			return
		}
		s.metrics.rolloutsForgotten.Add(float64(len(resp.Forgot)))
		s.log.Info("forgot finished rollouts from the replicated state; what they did stays in the audit trail",
			"count", len(resp.Forgot), "index", index, "first", ids[0], "last", ids[len(ids)-1], "older_than", after)
		if len(resp.Forgot) < len(ids) {
			// Something changed between the choice and the commit; the
			// next pass chooses again.
			return
		}
	}
}

// rolloutsCollector reports how many rollouts this replica holds and how
// many it forgot.
type rolloutsCollector struct{ s *Server }

var rolloutsDesc = prometheus.NewDesc("switchyard_coordinator_rollouts",
	"Rollouts in this coordinator's replicated state, by state: held (with spec and history) or forgotten (a tombstone left by the retention, --forget-rollouts-after).",
	[]string{"state"}, nil)

func (c rolloutsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rolloutsDesc }

func (c rolloutsCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.s.fsm
	if f == nil {
		return
	}
	held, forgotten := f.State().RolloutCounts()
	ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(held), "held")
	ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(forgotten), "forgotten")
}
