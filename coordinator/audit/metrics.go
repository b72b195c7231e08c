package audit

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the audit export's Prometheus metrics.
type Metrics struct {
	exported   prometheus.Counter
	duplicates prometheus.Counter
	errors     prometheus.Counter
	backlog    prometheus.Gauge
}

// NewMetrics registers the audit metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		exported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_audit_records_exported_total",
			Help: "Audit records this coordinator published to the audit stream while leading.",
		}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_audit_records_duplicate_total",
			Help: "Audit record publishes the stream already held (deduplicated by Nats-Msg-Id), after a leader change or a lost acknowledgement.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_audit_export_errors_total",
			Help: "Failed rounds of the audit export (stream unavailable, publish failed); the records stay in the replicated state.",
		}),
		backlog: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchyard_coordinator_audit_export_backlog",
			Help: "Audit records committed but not yet known to be in the audit stream (on the leader).",
		}),
	}
	for _, c := range []prometheus.Collector{m.exported, m.duplicates, m.errors, m.backlog} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
