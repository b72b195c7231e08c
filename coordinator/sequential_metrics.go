package coordinator

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/coordinator/analysis"
)

var (
	sequentialStatisticDesc = prometheus.NewDesc("switchyard_rollout_sequential_statistic",
		"The sequential judge's statistic (log of the Shiryaev-Roberts mixture of likelihood ratios over start seconds and alternatives, nats) per rollout and test (errors, latency_p50, ...); the rollout is rolled back when it reaches switchyard_rollout_sequential_threshold.",
		[]string{"rollout", "test"}, nil)
	sequentialThresholdDesc = prometheus.NewDesc("switchyard_rollout_sequential_threshold",
		"The alarm threshold (nats) of each sequential test, from the rollout's falseAlarm, horizon and the test's share of the budget.",
		[]string{"rollout", "test"}, nil)
)

// sequentialCollector exports the sequential judge's tests of every
// rollout this coordinator's analysis store follows.
type sequentialCollector struct{ store *analysis.Store }

func (c sequentialCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sequentialStatisticDesc
	ch <- sequentialThresholdDesc
}

func (c sequentialCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.store.SequentialReadings() {
		ch <- prometheus.MustNewConstMetric(sequentialStatisticDesc, prometheus.GaugeValue, r.Statistic, r.Rollout, r.Test)
		ch <- prometheus.MustNewConstMetric(sequentialThresholdDesc, prometheus.GaugeValue, r.Threshold, r.Rollout, r.Test)
	}
}
