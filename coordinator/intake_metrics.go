package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/coordinator/analysis"
)

// intakeMetrics are the telemetry intake's counters; merged and rejected
// are the coordinator's long-standing health report counters.
type intakeMetrics struct {
	merged, rejected prometheus.Counter
	forged           prometheus.Counter
	// clockAhead counts reports refused for a window ending ahead of this
	// coordinator's clock; late, reports merged after the judge may have
	// read their second; scaled, latency sketches scaled down to their
	// requests.
	clockAhead, late, scaled prometheus.Counter
	// drilled counts reports a rollout's judge left out because a drill's
	// fault was on the node.
	drilled   prometheus.Counter
	shedTotal *prometheus.CounterVec
	shedQueue prometheus.Counter
	shedSlow  prometheus.Counter
	shedStale prometheus.Counter
}

func newIntakeMetrics(reg prometheus.Registerer, m *metrics, in func() *intake) (*intakeMetrics, error) {
	im := &intakeMetrics{merged: m.telemetry, rejected: m.telemetryRejected, forged: m.telemetryForged,
		clockAhead: m.telemetryRefused.WithLabelValues("clock_ahead"),
		late: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_health_reports_late_total",
			Help: "Health reports merged more than 1.5 s (the judge's grace) after the second they end in, by this coordinator's clock: the window judge may have read that second without them. Steadily climbing, some node's clock is behind (see the coordinator's log) or reports queue on the way.",
		}),
		scaled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_health_report_sketches_scaled_total",
			Help: "Backends' latency sketches that held more samples than their requests allow (requests + 1/8 + 64) and were scaled down to that many before they were merged, so one node's latencies weigh no more than its requests.",
		}),
		drilled: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_coordinator_health_reports_drill_unjudged_total",
			Help: "Health reports of a drill's target node, sent while the drill's fault was on it, that the rollout judge left out (missing data for the rollout, never a pass or a breach): a drill's injected failures are not the release's. A rollback drill's reports for its own rollout are judged.",
		}),
		shedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_coordinator_reports_shed_total",
			Help: "Health reports dropped before they were merged because intake could not keep up, by reason: queue_full (the decode workers' queue was full: its oldest report made room), waited_too_long (a report waited over a second for a worker and would have come after the judge read its second), slow_consumer (the NATS client dropped them). The windows they belong to are missing data and never pass.",
		}, []string{"reason"}),
	}
	im.shedQueue = im.shedTotal.WithLabelValues(shedQueueFull)
	im.shedSlow = im.shedTotal.WithLabelValues(shedSlowConsumer)
	im.shedStale = im.shedTotal.WithLabelValues(shedWaitedTooLong)
	queued := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchyard_coordinator_health_reports_queued",
		Help: "Health reports received and waiting to be decoded and merged.",
	}, func() float64 { return float64(in().queue.len()) })
	for _, c := range []prometheus.Collector{im.shedTotal, queued, im.late, im.scaled, im.drilled} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return im, nil
}

func (m *intakeMetrics) shed(reason string) prometheus.Counter {
	switch reason {
	case shedSlowConsumer:
		return m.shedSlow
	case shedWaitedTooLong:
		return m.shedStale
	}
	return m.shedQueue
}

var (
	storeNodesDesc = prometheus.NewDesc("switchyard_coordinator_analysis_nodes",
		"Nodes whose health reports the analysis store holds for the newest second, over every service.", nil, nil)
	storeSecondsDesc = prometheus.NewDesc("switchyard_coordinator_analysis_seconds",
		"Seconds of telemetry the analysis store keeps, summed over services and series (at most 15 minutes each).", nil, nil)
	storeReportsDesc = prometheus.NewDesc("switchyard_coordinator_analysis_reports",
		"Node reports the analysis store keeps for the sequential tests.", nil, nil)
	storeBytesDesc = prometheus.NewDesc("switchyard_coordinator_analysis_bytes",
		"Estimate of the memory the analysis store holds (windows, node series, reports and their sketches); divided by switchyard_coordinator_analysis_nodes it is the memory per node.", nil, nil)
)

// storeCollector exports the analysis store's size.
type storeCollector struct{ store *analysis.Store }

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- storeNodesDesc
	ch <- storeSecondsDesc
	ch <- storeReportsDesc
	ch <- storeBytesDesc
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	sz := c.store.Size()
	ch <- prometheus.MustNewConstMetric(storeNodesDesc, prometheus.GaugeValue, float64(sz.Nodes))
	ch <- prometheus.MustNewConstMetric(storeSecondsDesc, prometheus.GaugeValue, float64(sz.Seconds))
	ch <- prometheus.MustNewConstMetric(storeReportsDesc, prometheus.GaugeValue, float64(sz.Reports))
	ch <- prometheus.MustNewConstMetric(storeBytesDesc, prometheus.GaugeValue, float64(sz.Bytes))
}
