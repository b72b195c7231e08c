package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the coordinator's Prometheus metrics, registered on the
// registry the caller injects.
type metrics struct {
	intentsAccepted prometheus.Counter
	intentsRejected *prometheus.CounterVec
	// refusalsNotRecorded counts refusals answered and counted but left
	// to the audit's summary record (see refusals.go).
	refusalsNotRecorded *prometheus.CounterVec
	publishes           *prometheus.CounterVec
	publishSeconds      prometheus.Histogram
	raftApply           prometheus.Histogram
	raftApplyFailures   *prometheus.CounterVec
	isLeader            prometheus.Gauge
	statusRejected      *prometheus.CounterVec
	statuses            prometheus.Counter
	telemetry           prometheus.Counter
	telemetryRejected   prometheus.Counter
	// telemetryForged counts reports whose node or service is not the
	// one their subject names (another node's credentials published them).
	telemetryForged  prometheus.Counter
	telemetryRefused *prometheus.CounterVec
	decisions        *prometheus.CounterVec
	peerRejected     prometheus.Counter
	joinFailures     prometheus.Counter
	diverged         *prometheus.GaugeVec
	divergences      *prometheus.CounterVec
	webhookCalls     *prometheus.CounterVec
	webhookSeconds   *prometheus.HistogramVec
	queries          *prometheus.CounterVec
	eventStreams     prometheus.Gauge
	viewerRefused    *prometheus.CounterVec
	queriesMalformed prometheus.Counter
	// repliesRefused counts answers not sent to a reply subject outside
	// the inboxes.
	repliesRefused prometheus.Counter
	notifications  *prometheus.CounterVec
	decisionStages *prometheus.HistogramVec
	// pushes counts the copies of written documents published on their
	// push subjects, for agents behind leaf servers.
	pushes *prometheus.CounterVec
	// rolloutsForgotten counts the finished rollouts the leader's
	// retention forgot.
	rolloutsForgotten prometheus.Counter
	drillsForgotten   prometheus.Counter
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
		refusalsNotRecorded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_intent_refusals_not_recorded_total",
			Help: "Intents refused before commit that were counted in a summary audit record instead of one record each (more than 10 a second), by reason.",
		}, []string{"reason"}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_desired_publishes_total",
			Help: "Desired-state and drill document writes to the KV buckets, by result: written, renewed (signed again before expiry), stale (bucket already holds it or newer), replaced_unverified (the bucket held a document no trusted key signed), conflict (the bucket holds another verified document of the same fence: a lineage a recovery lost; raise the epoch), error.",
		}, []string{"result"}),
		publishSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_coordinator_desired_publish_seconds",
			Help:    "Time to write one desired state to the KV bucket.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_document_pushes_total",
			Help: "Copies of the desired-state and drill documents written, published on switchyard.desired.<service> and switchyard.drills.<drill> for agents behind leaf servers, by result: sent, failed (those agents read the document at their next resync).",
		}, []string{"result"}),
		raftApply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "switchyard_coordinator_raft_apply_seconds",
			Help:    "Time from proposing a Raft entry to its application on the leader.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		raftApplyFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_raft_apply_failures_total",
			Help: "Raft entries this coordinator proposed that were not committed, by reason: not_leader (leadership lost or moving; the next leader takes over), error (the log could not be written: a full or failing disk under --data-dir, or a timeout).",
		}, []string{"reason"}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_is_leader",
			Help: "1 while this coordinator leads the Raft cluster.",
		}),
		statusRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_agent_status_rejected_total",
			Help: "Agent status messages refused, by reason: malformed (did not decode, names no node, or names a service twice), wrong_subject (the node named is not the one whose subject carried it: another node's credentials sent it).",
		}, []string{"reason"}),
		statuses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_agent_status_total",
			Help: "Agent status messages received.",
		}),
		telemetry: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_health_reports_total",
			Help: "Agent health reports merged into analysis windows.",
		}),
		telemetryRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_health_reports_rejected_total",
			Help: "Agent health reports refused, by reason: malformed (did not decode or were inconsistent), wrong_subject (the report's node or service is not the one its subject names: published with another node's credentials), clock_ahead (the report's window ends more than 5 s ahead of this coordinator's clock: the node's clock is wrong).",
		}, []string{"reason"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_rollout_decisions_total",
			Help: "Rollout decisions committed by the leader's controller, by action: advance, promote, finish, rollback, confirm-rollback.",
		}, []string{"action"}),
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_queries_total",
			Help: "Read queries by how they were answered: current (leader, leadership verified), stale (asked for with --stale, from this replica), declined (not verified current; the client asks again).",
		}, []string{"result"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_notifications_total",
			Help: "Notifications by receiver and outcome: sent (a 2xx answer, retries included), failed (retries ran out), dropped (the receiver's queue was full).",
		}, []string{"target", "outcome"}),
		queriesMalformed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_queries_malformed_total",
			Help: "Read queries refused because they did not decode (neither the query's protobuf nor its JSON); answered with an error.",
		}),
		repliesRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_replies_refused_total",
			Help: "Query answers and intent results not sent because the request named a reply subject outside the inboxes (_INBOX.>): " +
				"a request that would have had the coordinator publish where only coordinators may (a bucket, the audit stream, the intents).",
		}),
		peerRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_cluster_peers_rejected_total",
			Help: "Raft and HTTPS connections whose TLS handshake failed, and cluster changes without a certificate from the cluster CA or not sent as JSON.",
		}),
		joinFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_cluster_join_failures_total",
			Help: "Attempts to find or join the cluster that failed (peers unreachable, refused, or not trusted).",
		}),
		diverged: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_nodes_diverged",
			Help: "Live nodes of a service that hold a document newer than the current one (a higher epoch or generation than this cluster published); never counted as converged.",
		}, []string{"service"}),
		divergences: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_node_divergences_total",
			Help: "Times a node was first seen holding a document newer than the current one, by service.",
		}, []string{"service"}),
		webhookCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_webhook_calls_total",
			Help: "Webhook calls the leader finished and recorded, by hook point and outcome (succeeded, failed).",
		}, []string{"point", "outcome"}),
		webhookSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchyard_coordinator_webhook_call_seconds",
			Help:    "Time of one webhook call including its retries, by hook point.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"point"}),
		eventStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_event_streams",
			Help: "Open read API live streams (/v1/events), such as dashboards.",
		}),
		viewerRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_viewer_refused_total",
			Help: "Read API and dashboard requests refused for want of a viewer token or cluster certificate, by reason: missing, wrong.",
		}, []string{"reason"}),
		rolloutsForgotten: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_rollouts_forgotten_total",
			Help: "Finished rollouts this coordinator's retention forgot while it led (--forget-finished-after); switchyard_coordinator_rollouts{state=\"forgotten\"} counts every replica's tombstones.",
		}),
	}
	m.drillsForgotten = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchyard_coordinator_drills_forgotten_total",
		Help: "Ended drills this coordinator's retention forgot while it led (--forget-finished-after), their documents purged from the drills bucket.",
	})
	m.decisionStages = newDecisionStageSeconds()
	reg.MustRegister(m.eventStreams, m.viewerRefused, m.decisionStages, m.rolloutsForgotten, m.drillsForgotten)
	reg.MustRegister(m.peerRejected, m.joinFailures, m.diverged, m.divergences, m.queries, m.queriesMalformed, m.repliesRefused, m.notifications)
	reg.MustRegister(m.intentsAccepted, m.intentsRejected, m.refusalsNotRecorded, m.publishes, m.publishSeconds, m.pushes,
		m.raftApply, m.raftApplyFailures, m.isLeader, m.statusRejected, m.statuses, m.telemetry, m.telemetryRefused, m.decisions,
		m.webhookCalls, m.webhookSeconds)
	for _, r := range []string{"malformed", "wrong_subject"} {
		m.statusRejected.WithLabelValues(r)
	}
	for _, r := range []string{"written", "renewed", "stale", "replaced_unverified", "conflict", "error"} {
		m.publishes.WithLabelValues(r)
	}
	for _, r := range []string{"sent", "failed"} {
		m.pushes.WithLabelValues(r)
	}
	for _, r := range []string{"missing", "wrong"} {
		m.viewerRefused.WithLabelValues(r)
	}
	for _, r := range []string{queryCurrent, queryStale, queryDeclined} {
		m.queries.WithLabelValues(r)
	}
	// Every action starts at 0 so the first rollback is an increase alerts
	// can see.
	for _, a := range []string{"advance", "promote", "finish", "rollback", "confirm-rollback"} {
		m.decisions.WithLabelValues(a)
	}
	for _, r := range []string{"malformed", "invalid", "not_found", "conflict", "blast_radius"} {
		m.intentsRejected.WithLabelValues(r)
	}
	for _, r := range []string{"malformed", "unsigned", "bad_signature", "unknown_key"} {
		m.refusalsNotRecorded.WithLabelValues(r)
	}
	m.telemetryRejected = m.telemetryRefused.WithLabelValues("malformed")
	m.telemetryForged = m.telemetryRefused.WithLabelValues("wrong_subject")
	return m
}
