package agent

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/bus"
)

// Apply results, the values of the "result" label of applies_total.
const (
	resultOK = "ok"
	// resultError: the driver failed; the agent retries.
	resultError = "error"
	// resultRefused: the driver does not know a backend the document names;
	// retried only on resync or when a newer document arrives.
	resultRefused = "refused"
	// resultNoWave: the node is in no wave and the document has no default
	// weights, so the proxy keeps its weights.
	resultNoWave = "no_wave"
)

// Reasons a document is rejected, the values of the "reason" label of
// documents_rejected_total: those of bus.RejectReason (malformed, too_large,
// unsigned, unknown_key, bad_signature, wrong_kind, wrong_key, expired) and
// the agent's own below.
const (
	reasonMalformed = "malformed"
	// reasonStale: verified, but its fence is not above the one the agent
	// holds (a replayed or reordered document).
	reasonStale = "stale"
	// reasonConflict: verified, the same fence as the one the agent holds,
	// different content.
	reasonConflict = "conflict"
)

// rejectReasons lists every reason label, to create the series at zero.
func rejectReasons() []string {
	return append(bus.RejectReasons(), reasonStale, reasonConflict)
}

// Telemetry report results, the values of the "result" label of
// telemetry_reports_total.
const (
	reportPublished = "published"
	// reportDisconnected: the bus was down; the report is dropped, not
	// queued, since a late window is worth less than none.
	reportDisconnected = "disconnected"
	// reportNoData: neither "show stat" nor a log socket gave numbers for
	// the window (the proxy is down, or it is the first read of counters).
	reportNoData = "no_data"
	reportError  = "error"
)

// Probe kinds and results, the labels of probes_total.
const (
	probePreflight = "preflight"
	probeSynthetic = "synthetic"
	probeOK        = "ok"
	probeFailed    = "failed"
)

// Chaos fault results, the values of the "result" label of faults_total.
const (
	faultApplied  = "applied"
	faultReverted = "reverted"
	// faultFailed: applying failed; the agent undoes what it did and
	// retries with backoff until the drill ends.
	faultFailed = "failed"
	// faultRevertFailed: reverting failed; the agent retries with backoff
	// and keeps reporting the fault active.
	faultRevertFailed = "revert_failed"
	// faultRefused: the fault cannot be injected on this node (a backend,
	// process or driver capability it does not have); not retried.
	faultRefused = "refused"
)

// Reasons a drill document is ignored, the values of the "reason" label of
// drill_documents_rejected_total.
const (
	drillMalformed = "malformed"
	drillStale     = "stale"
	// drillOverCap: the document lists more targets than its own maxNodes;
	// the agent does not inject it.
	drillOverCap = "over_cap"
)

// metrics are the agent's Prometheus metrics, registered on the registry the
// caller injects.
type metrics struct {
	applies           *prometheus.CounterVec
	applySeconds      *prometheus.HistogramVec
	applyStages       *prometheus.HistogramVec
	rejected          *prometheus.CounterVec
	documentExpired   *prometheus.GaugeVec
	appliedEpoch      *prometheus.GaugeVec
	drift             *prometheus.CounterVec
	observedMatch     *prometheus.GaugeVec
	appliedGeneration *prometheus.GaugeVec
	driverDegraded    *prometheus.GaugeVec
	stateSaveErrors   *prometheus.CounterVec
	busReconnects     prometheus.Counter
	resyncErrors      prometheus.Counter
	busConnected      prometheus.Gauge
	silentServersLeft prometheus.Counter
	// fleetIgnored counts messages on the fleet subjects that are not the
	// coordinators' (theirs carry no body).
	fleetIgnored    prometheus.Counter
	busRefused      *prometheus.CounterVec
	reports         *prometheus.CounterVec
	logLines        *prometheus.CounterVec
	probes          *prometheus.CounterVec
	localRollbacks  *prometheus.CounterVec
	droppedLogLines *prometheus.CounterVec
	faultsActive    *prometheus.GaugeVec
	faults          *prometheus.CounterVec
	drillRejected   *prometheus.CounterVec
	journalDamaged  prometheus.Counter
	inboxDropped    *prometheus.CounterVec
	hookRuns        *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		applies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_applies_total",
			Help: "Attempts to apply a desired state or repair drift on the local proxy, by service and result (ok, error, refused, no_wave).",
		}, []string{"service", "result"}),
		applySeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchyard_agent_apply_seconds",
			Help:    "Time the proxy driver took to apply weights, successful or not.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"service"}),
		applyStages: newApplyStageSeconds(),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_documents_rejected_total",
			Help: "Desired-state documents refused, by service and reason (malformed, too_large, unsigned, unknown_key, bad_signature, wrong_kind, wrong_key, expired, stale, conflict).",
		}, []string{"service", "reason"}),
		documentExpired: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_agent_document_expired",
			Help: "1 while the applied desired state's signature validity has ended and no renewed document arrived (the node keeps its weights), else 0.",
		}, []string{"service"}),
		appliedEpoch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_agent_applied_epoch",
			Help: "Coordinator cluster epoch of the applied desired state, 0 before the first.",
		}, []string{"service"}),
		drift: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_drift_total",
			Help: "Times the proxy was read back not doing what was applied (restarted, reloaded, a weight or state changed by hand) and the agent set it back.",
		}, []string{"service"}),
		observedMatch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_agent_observed_match",
			Help: "1 while the service's proxy, as last read back, does what the agent applied; 0 while it differs or cannot be read.",
		}, []string{"service"}),
		appliedGeneration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_agent_applied_generation",
			Help: "Generation of the desired state applied to the local proxy, 0 before the first.",
		}, []string{"service"}),
		driverDegraded: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_agent_driver_degraded",
			Help: "1 while the agent cannot drive the service's proxy and is retrying, else 0.",
		}, []string{"service"}),
		stateSaveErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_state_save_errors_total",
			Help: "Applied states the agent set on its proxy but failed to persist locally.",
		}, []string{"service"}),
		busReconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_agent_bus_reconnects_total",
			Help: "Times the agent reconnected to NATS (each followed by a resync).",
		}),
		resyncErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_agent_resync_errors_total",
			Help: "Failed reads of a desired state from the bucket during a resync.",
		}),
		fleetIgnored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_agent_fleet_messages_ignored_total",
			Help: "Messages on switchyard.fleet.* (the leader's beacon, a coordinator's status ask) ignored because they carry a body, " +
				"which the coordinators' never do: a JetStream API answer someone had the NATS server send there.",
		}),
		silentServersLeft: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_agent_bus_silent_servers_left_total",
			Help: "Times the agent left its NATS server for another because, with no leader's beacon for two intervals, the server did not answer a ping within 2 s.",
		}),
		busConnected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_agent_bus_connected",
			Help: "1 while the agent is connected to NATS, else 0.",
		}),
		busRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_bus_refused_total",
			Help: "What the NATS server refused this agent, by reason: permission (a publish or subscription its creds do not allow), authorization (creds refused or revoked), other.",
		}, []string{"reason"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_telemetry_reports_total",
			Help: "HealthReport windows by service and result (published, disconnected, no_data, error).",
		}, []string{"service", "result"}),
		logLines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_request_log_lines_total",
			Help: "Datagrams read from HAProxy log sockets by result (counted, not_request, unknown_backend, unknown_server).",
		}, []string{"result"}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_probes_total",
			Help: "HTTP probes the agent made to backends, by service, backend, kind (preflight, synthetic) and result (ok, failed).",
		}, []string{"service", "backend", "kind", "result"}),
		localRollbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_local_rollbacks_total",
			Help: "Times the local guard moved this node back to the old backend while the bus was lost.",
		}, []string{"service"}),
		droppedLogLines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_request_log_lines_dropped_total",
			Help: "Request log lines the proxy of a service failed to send (HAProxy DroppedLogs, all its log targets); raise net.unix.max_dgram_qlen if it grows.",
		}, []string{"service"}),
		faultsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "switchyard_agent_faults_active",
			Help: "Chaos faults injected on this node and not yet reverted, by kind.",
		}, []string{"kind"}),
		faults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_faults_total",
			Help: "Chaos fault injections and reverts on this node, by kind and result (applied, reverted, failed, revert_failed, refused).",
		}, []string{"kind", "result"}),
		drillRejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_drill_documents_rejected_total",
			Help: "Drill documents refused, by reason (malformed, too_large, unsigned, unknown_key, bad_signature, wrong_kind, wrong_key, expired, stale, over_cap).",
		}, []string{"reason"}),
		journalDamaged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_agent_fault_journal_damaged_total",
			Help: "Fault journal records that could not be decoded at start and were moved aside (bucket faults.damaged); a fault they described is not reverted by the agent.",
		}),
		inboxDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_inbox_dropped_total",
			Help: "Desired-state documents a busy service dropped unread (the oldest of 64 waiting) to make room for a newer one; the next resync reads the newest again.",
		}, []string{"service"}),
		hookRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_hook_runs_total",
			Help: "Agent hook runs that ended, by point (preTraffic, postTraffic, rollback) and outcome (succeeded, failed).",
		}, []string{"point", "outcome"}),
	}
	var errs []error
	for _, c := range []prometheus.Collector{
		m.applies, m.applySeconds, m.applyStages, m.rejected, m.drift, m.observedMatch, m.appliedGeneration, m.documentExpired, m.appliedEpoch,
		m.driverDegraded, m.stateSaveErrors, m.busReconnects, m.resyncErrors,
		m.busConnected, m.silentServersLeft, m.fleetIgnored, m.busRefused, m.reports, m.logLines, m.probes, m.localRollbacks, m.droppedLogLines,
		m.faultsActive, m.faults, m.drillRejected, m.journalDamaged, m.inboxDropped, m.hookRuns,
	} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register agent metrics: %w", err)
	}
	for _, k := range faultKinds {
		m.faultsActive.WithLabelValues(k)
		for _, r := range []string{faultApplied, faultReverted, faultFailed, faultRevertFailed, faultRefused} {
			m.faults.WithLabelValues(k, r)
		}
	}
	for _, r := range append(bus.RejectReasons(), drillStale, drillOverCap) {
		m.drillRejected.WithLabelValues(r)
	}
	return m, nil
}

// initService creates a service's series so that they read 0 before the
// first event rather than being absent.
func (m *metrics) initService(service string) {
	for _, r := range []string{resultOK, resultError, resultRefused, resultNoWave} {
		m.applies.WithLabelValues(service, r)
	}
	for _, r := range rejectReasons() {
		m.rejected.WithLabelValues(service, r)
	}
	m.documentExpired.WithLabelValues(service)
	m.appliedEpoch.WithLabelValues(service)
	m.drift.WithLabelValues(service)
	m.observedMatch.WithLabelValues(service)
	m.appliedGeneration.WithLabelValues(service)
	m.driverDegraded.WithLabelValues(service)
	m.stateSaveErrors.WithLabelValues(service)
	for _, r := range []string{reportPublished, reportDisconnected, reportNoData, reportError} {
		m.reports.WithLabelValues(service, r)
	}
	m.localRollbacks.WithLabelValues(service)
	m.droppedLogLines.WithLabelValues(service)
	m.inboxDropped.WithLabelValues(service)
	for _, s := range applyStages {
		m.applyStages.WithLabelValues(service, s)
	}
}

// serviceSeries are the series of one service that move on every apply,
// looked up once: a lookup by label values hashes them every time.
type serviceSeries struct {
	appliesOK, appliesError, appliesRefused, appliesNoWave prometheus.Counter
	applySeconds                                           prometheus.Observer
	appliedGeneration, appliedEpoch                        prometheus.Gauge
	documentExpired, driverDegraded                        prometheus.Gauge
	// observedMatch is set on every read-back (four times a second by
	// default, and after every apply).
	observedMatch prometheus.Gauge
	stages        map[string]prometheus.Observer
}

func (m *metrics) seriesOf(service string) *serviceSeries {
	s := &serviceSeries{
		appliesOK:         m.applies.WithLabelValues(service, resultOK),
		appliesError:      m.applies.WithLabelValues(service, resultError),
		appliesRefused:    m.applies.WithLabelValues(service, resultRefused),
		appliesNoWave:     m.applies.WithLabelValues(service, resultNoWave),
		applySeconds:      m.applySeconds.WithLabelValues(service),
		appliedGeneration: m.appliedGeneration.WithLabelValues(service),
		appliedEpoch:      m.appliedEpoch.WithLabelValues(service),
		documentExpired:   m.documentExpired.WithLabelValues(service),
		driverDegraded:    m.driverDegraded.WithLabelValues(service),
		observedMatch:     m.observedMatch.WithLabelValues(service),
		stages:            make(map[string]prometheus.Observer, len(applyStages)),
	}
	for _, st := range applyStages {
		s.stages[st] = m.applyStages.WithLabelValues(service, st)
	}
	return s
}

// applies is the applies_total series of result.
func (s *serviceSeries) applies(result string) prometheus.Counter {
	switch result {
	case resultOK:
		return s.appliesOK
	case resultError:
		return s.appliesError
	case resultRefused:
		return s.appliesRefused
	default:
		return s.appliesNoWave
	}
}
