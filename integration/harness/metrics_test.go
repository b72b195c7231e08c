package harness

import "testing"

func TestMetrics_Value(t *testing.T) {
	const text = `# HELP switchyard_coordinator_intents_rejected_total Intents refused.
# TYPE switchyard_coordinator_intents_rejected_total counter
switchyard_coordinator_intents_rejected_total{reason="invalid"} 2
switchyard_coordinator_intents_rejected_total{kind="rollout",reason="malformed"} 1
switchyard_coordinator_intents_accepted_total 4
odd_metric{msg="a \"quoted\" value, with } brace"} 7 1700000000000
`
	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
		ok     bool
	}{
		{"switchyard_coordinator_intents_rejected_total", map[string]string{"reason": "malformed"}, 1, true},
		{"switchyard_coordinator_intents_rejected_total", map[string]string{"reason": "invalid"}, 2, true},
		{"switchyard_coordinator_intents_rejected_total", map[string]string{"reason": "conflict"}, 0, false},
		{"switchyard_coordinator_intents_accepted_total", nil, 4, true},
		{"switchyard_coordinator_intents_accepted", nil, 0, false},
		{"odd_metric", map[string]string{"msg": `a "quoted" value, with } brace`}, 7, true},
	} {
		got, ok := MetricValue(text, tc.name, tc.labels)
		if got != tc.want || ok != tc.ok {
			t.Errorf("MetricValue(%s, %v) = %v, %v; want %v, %v", tc.name, tc.labels, got, ok, tc.want, tc.ok)
		}
	}
}
