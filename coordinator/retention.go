package coordinator

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// DefaultForgetFinishedAfter is how long a finished rollout or ended drill
// stays in the replicated state (Config.ForgetFinishedAfter when zero): 90
// days.
const DefaultForgetFinishedAfter = 90 * 24 * time.Hour

// KeepFinished as Config.ForgetFinishedAfter turns the retention off: the
// state keeps every rollout and drill.
const KeepFinished time.Duration = -1

// forgetBatch bounds the names one ForgetEntry carries, so that a first
// pass over years of rollouts is many small entries, not one huge one.
const forgetBatch = 500

// retentionEvery is how often the leader looks for what to forget when
// what ended is kept for after: every minute, or a tenth of after when that
// is shorter, never more often than the controller's tick.
func retentionEvery(after, tick time.Duration) time.Duration {
	return max(min(time.Minute, after/10), tick)
}

// runRetention is the leader's routine that forgets finished rollouts and
// ended drills older than Config.ForgetFinishedAfter, beyond the newest
// state.KeepFinishedPerService of each service; every replica applies the
// same ForgetEntry. Without it the state grows by every rollout and drill
// ever applied (operations.md has the figures).
func (s *Server) runRetention(ctx context.Context) {
	after := s.cfg.ForgetFinishedAfter
	if after < 0 {
		return
	}
	t := time.NewTicker(retentionEvery(after, s.cfg.TickInterval))
	defer t.Stop()
	s.sweepForgottenDrills(ctx)
	// warned is set while what is due waits for a member, which is said
	// once, not every pass.
	warned := false
	for {
		s.forgetFinished(ctx, after, &warned)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// appliesForget is what a coordinator that applies a ForgetEntry says in
// PeerInfo.Applies and CoordinatorAnswer.Applies.
const appliesForget = "forget"

// applies lists the kinds of Raft entry, added after the first release,
// that this coordinator applies.
func applies() []string { return []string{appliesForget} }

// membersWait is how long the leader waits for the members to say what
// they apply, on the bus and then on each --retry-join address.
const membersWait = 2 * time.Second

// membersApply names the members of the Raft configuration that did not
// say that they apply entries of kind what: a coordinator of an older
// release stops at an entry it does not know (operations.md, the upgrade
// order), so during a rolling upgrade the leader must not write one on its
// own. Every coordinator answers on the bus (QueryCoordinators), wherever
// it was added from; one that cannot be heard there (its NATS connection
// down, or of the release before, which answered on HTTP alone) is asked
// on /v1/cluster/self at the leader's --retry-join addresses.
func (s *Server) membersApply(ctx context.Context, what string) []string {
	return s.membersApplyAt(ctx, what, s.cfg.RetryJoin)
}

func (s *Server) membersApplyAt(ctx context.Context, what string, httpAddrs []string) []string {
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
	if len(missing) > 0 && s.nc != nil {
		gctx, cancel := context.WithTimeout(ctx, membersWait)
		err := bus.Gather(gctx, s.nc, bus.QueryCoordinators, &sv1.CoordinatorsQuery{}, func(data []byte, err error) bool {
			var ans sv1.CoordinatorAnswer
			if err == nil && proto.Unmarshal(data, &ans) == nil && slices.Contains(ans.GetApplies(), what) {
				delete(missing, ans.GetId())
			}
			return len(missing) == 0
		})
		cancel()
		if err != nil && len(missing) > 0 {
			s.log.Debug("not every member answered on the bus what it applies", "missing", len(missing), "err", err)
		}
	}
	for _, addr := range httpAddrs {
		if len(missing) == 0 {
			break
		}
		var p PeerInfo
		actx, cancel := context.WithTimeout(ctx, membersWait)
		err := s.cluster.getJSON(actx, addr, "/v1/cluster/self", &p)
		cancel()
		if err == nil && slices.Contains(p.Applies, what) {
			delete(missing, p.ID)
		}
	}
	return slices.Sorted(maps.Keys(missing))
}

// answerCoordinators is this coordinator's answer to a CoordinatorsQuery.
func (s *Server) answerCoordinators(*sv1.CoordinatorsQuery) (*sv1.CoordinatorAnswer, error) {
	return &sv1.CoordinatorAnswer{Id: s.cfg.NodeID, Applies: applies()}, nil
}

// forgetFinished forgets, a batch at a time, every finished rollout and
// ended drill the retention lets go, and takes the forgotten drills'
// documents out of the drills bucket.
func (s *Server) forgetFinished(ctx context.Context, after time.Duration, warned *bool) {
	checked := false
	for ctx.Err() == nil {
		now := s.cfg.Clock.Now()
		st := s.fsm.State()
		rollouts := st.ForgetCandidates(now.Add(-after), forgetBatch)
		var drills []string
		if len(rollouts) < forgetBatch {
			drills = st.DrillForgetCandidates(now.Add(-after), forgetBatch-len(rollouts))
		}
		if len(rollouts)+len(drills) == 0 {
			return
		}
		if !checked {
			if older := s.membersApply(ctx, appliesForget); len(older) > 0 {
				if !*warned {
					s.log.Warn("finished rollouts or drills are due to be forgotten, but not every coordinator said it can apply that; waiting (upgrade every coordinator to this release; one that is down or off the bus is waited for)",
						"rollouts", len(rollouts), "drills", len(drills), "coordinators", strings.Join(older, ","))
				}
				*warned = true
				return
			}
			checked, *warned = true, false
		}
		resp, index, err := s.raftApply(fsm.ForgetType, &sv1.ForgetEntry{
			Rollouts:  rollouts,
			Drills:    drills,
			StampedAt: timestamppb.New(now),
			Reason:    fmt.Sprintf("ended more than %s ago, beyond the newest %d of their service", after, state.KeepFinishedPerService),
		})
		if err != nil {
			s.log.Warn("could not forget finished rollouts and drills; trying again at the next pass", "rollouts", len(rollouts), "drills", len(drills), "err", err)
			return
		}
		got := resp.Forgot
		s.metrics.rolloutsForgotten.Add(float64(len(got.Rollouts)))
		s.metrics.drillsForgotten.Add(float64(len(got.Drills)))
		s.log.Info("forgot finished rollouts and drills from the replicated state; what they did stays in the audit trail",
			"rollouts", len(got.Rollouts), "drills", len(got.Drills), "index", index, "older_than", after)
		var published []string
		for _, d := range got.Drills {
			if s.fsm.State().ForgottenDrill(d).GetGeneration() > 0 {
				published = append(published, d)
			}
		}
		s.purgeDrillDocuments(ctx, published)
		if len(got.Rollouts) < len(rollouts) || len(got.Drills) < len(drills) {
			// Something changed between the choice and the commit; the
			// next pass chooses again.
			return
		}
	}
}

// purgeDrillDocuments takes the documents of forgotten drills out of the
// drills bucket, so that agents, which read the whole bucket when it
// changed, do not read them for ever (agents drop a drill whose key is
// purged). A document left behind (the bucket unreachable, a leader gone
// before it purged) is harmless, and sweepForgottenDrills purges it later.
func (s *Server) purgeDrillDocuments(ctx context.Context, drills []string) {
	if len(drills) == 0 || s.js == nil {
		return
	}
	kv, err := s.js.KeyValue(ctx, bus.DrillsBucket)
	if err != nil {
		s.log.Warn("could not open the drills bucket to purge forgotten drills' documents; the next leader term tries again", "drills", len(drills), "err", err)
		return
	}
	purged := 0
	for _, d := range drills {
		pctx, cancel := context.WithTimeout(ctx, applyTimeout)
		err := kv.Purge(pctx, d)
		cancel()
		if err != nil {
			s.log.Warn("could not purge a forgotten drill's document; the next leader term tries again", "drill", d, "err", err)
			continue
		}
		purged++
	}
	s.log.Debug("purged forgotten drills' documents", "purged", purged, "of", len(drills))
}

// sweepForgottenDrills purges the documents of forgotten drills still in
// the drills bucket; the leader runs it once a term.
func (s *Server) sweepForgottenDrills(ctx context.Context) {
	if s.js == nil {
		return
	}
	if _, forgotten := s.fsm.State().DrillCounts(); forgotten == 0 {
		return
	}
	kv, err := s.js.KeyValue(ctx, bus.DrillsBucket)
	if err != nil {
		return // none yet, or unreachable: the next term looks again
	}
	rctx, cancel := context.WithTimeout(ctx, applyTimeout)
	docs, err := bus.ReadAll(rctx, s.js, kv)
	cancel()
	if err != nil {
		s.log.Debug("could not read the drills bucket for forgotten drills' documents", "err", err)
		return
	}
	var left []string
	for k := range docs {
		if s.fsm.State().ForgottenDrill(k) != nil {
			left = append(left, k)
		}
	}
	s.purgeDrillDocuments(ctx, left)
}

// rolloutsCollector reports how many rollouts and drills this replica
// holds and how many it forgot.
type rolloutsCollector struct{ s *Server }

var (
	rolloutsDesc = prometheus.NewDesc("switchyard_coordinator_rollouts",
		"Rollouts in this coordinator's replicated state, by state: held (with spec and history) or forgotten (a tombstone left by the retention, --forget-finished-after).",
		[]string{"state"}, nil)
	drillsDesc = prometheus.NewDesc("switchyard_coordinator_drills",
		"Drills in this coordinator's replicated state, by state: held or forgotten (a tombstone left by the retention, --forget-finished-after).",
		[]string{"state"}, nil)
)

func (c rolloutsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rolloutsDesc
	ch <- drillsDesc
}

func (c rolloutsCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.s.fsm
	if f == nil {
		return
	}
	held, forgotten := f.State().RolloutCounts()
	ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(held), "held")
	ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(forgotten), "forgotten")
	held, forgotten = f.State().DrillCounts()
	ch <- prometheus.MustNewConstMetric(drillsDesc, prometheus.GaugeValue, float64(held), "held")
	ch <- prometheus.MustNewConstMetric(drillsDesc, prometheus.GaugeValue, float64(forgotten), "forgotten")
}
