package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the coordinator's Prometheus metrics, registered on the
// registry the caller injects.
type metrics struct {
	intentsAccepted   prometheus.Counter
	intentsRejected   *prometheus.CounterVec
	publishes         *prometheus.CounterVec
	publishSeconds    prometheus.Histogram
	raftApply         prometheus.Histogram
	isLeader          prometheus.Gauge
	statusRejected    prometheus.Counter
	statuses          prometheus.Counter
	telemetry         prometheus.Counter
	telemetryRejected prometheus.Counter
	decisions         *prometheus.CounterVec
	queries           *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		intentsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_intents_accepted_total",
			Help: "Intents committed and accepted by the leader.",
		}),
		intentsRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_intents_rejected_total",
			Help: "Intents refused, by reason: malformed, invalid, not_found, conflict, blast_radius.",
		}, []string{"reason"}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_desired_publishes_total",
			Help: "Desired-state writes to the KV bucket, by result: written, stale (bucket already newer), error.",
		}, []string{"result"}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_coordinator_desired_publish_seconds",
			Help:    "Time to write one desired state to the KV bucket.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		raftApply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_coordinator_raft_apply_seconds",
			Help:    "Time from proposing a Raft entry to its application on the leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_is_leader",
			Help: "1 while this coordinator leads the Raft cluster.",
		}),
		statusRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_agent_status_rejected_total",
			Help: "Agent status messages that did not decode.",
		}),
		statuses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_agent_status_total",
			Help: "Agent status messages received.",
		}),
		telemetry: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_health_reports_total",
			Help: "Agent health reports merged into analysis windows.",
		}),
		telemetryRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_health_reports_rejected_total",
			Help: "Agent health reports that did not decode or were inconsistent.",
		}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_rollout_decisions_total",
			Help: "Rollout decisions committed by the leader's controller, by action: advance, promote, finish, rollback, confirm-rollback.",
		}, []string{"action"}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_queries_total",
			Help: "Read queries by how they were answered: current (leader, leadership verified), stale (asked for with --stale, from this replica), declined (not verified current; the client asks again).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.queries, m.intentsAccepted, m.intentsRejected, m.publishes, m.publishSeconds,
		m.raftApply, m.isLeader, m.statusRejected, m.statuses, m.telemetry, m.telemetryRejected, m.decisions)
	for _, r := range []string{queryCurrent, queryStale, queryDeclined} {
		m.queries.WithLabelValues(r)
	}
	for _, r := range []string{"malformed", "invalid", "not_found", "conflict", "blast_radius"} {
		m.intentsRejected.WithLabelValues(r)
	}
	return m
}
