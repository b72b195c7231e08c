package coordinator

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/coordinator/analysis"
)

var (
	sequentialStatisticDesc = prometheus.NewDesc("switchyard_rollout_sequential_statistic",
		"The sequential judge's statistic (CUSUM of the log-likelihood ratio, nats) per rollout, test (errors, latency_p50, ...) and alternative (the odds ratio the detector is tuned to); the rollout is rolled back when it reaches switchyard_rollout_sequential_threshold.",
		[]string{"rollout", "test", "odds_ratio"}, nil)
	sequentialThresholdDesc = prometheus.NewDesc("switchyard_rollout_sequential_threshold",
		"The alarm threshold (nats) of each sequential detector, from the rollout's falseAlarm, horizon and the detector's share of the budget.",
		[]string{"rollout", "test", "odds_ratio"}, nil)
)

// sequentialCollector exports the sequential judge's detectors of every
// rollout this coordinator's analysis store follows.
type sequentialCollector struct{ store *analysis.Store }

func (c sequentialCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- sequentialStatisticDesc
	ch <- sequentialThresholdDesc
}

func (c sequentialCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.store.SequentialReadings() {
		odds := formatOdds(r.OddsRatio)
		ch <- prometheus.MustNewConstMetric(sequentialStatisticDesc, prometheus.GaugeValue, r.Statistic, r.Rollout, r.Test, odds)
		ch <- prometheus.MustNewConstMetric(sequentialThresholdDesc, prometheus.GaugeValue, r.Threshold, r.Rollout, r.Test, odds)
	}
}

func formatOdds(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
