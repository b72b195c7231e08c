package analysis

import (
	"fmt"
	"testing"
	"time"
)

// Once the telemetry kept is full, a fleet that does not change holds as
// much as it did a second before: the size gauge (and the memory per node
// an operator reads from it) stays put instead of drifting down by what it
// never counted of each window cell as it goes.
func TestStore_SizeGaugeHoldsSteadyOnceRetentionIsFull(t *testing.T) {
	t0 := int64(1_700_000_000)
	retention := int64(Retention / time.Second)
	s := NewStore()
	sizes := map[int64]Size{}
	for sec := t0 + 1; sec <= t0+retention+900; sec++ {
		var batch []*Report
		for n := range 20 {
			batch = append(batch, &Report{Node: fmt.Sprintf("edge-%d", n), Service: "web", Rollout: "r1", Generation: 5, End: sec,
				Backends: []BackendReport{{Backend: "blue", Requests: 40}, {Backend: "green", Requests: 40}}})
		}
		s.AddReports(batch)
		if sec == t0+retention+300 || sec == t0+retention+900 {
			sizes[sec] = s.Size()
		}
	}
	if a, b := sizes[t0+retention+300], sizes[t0+retention+900]; a != b {
		t.Errorf("the same fleet 10 minutes apart: %+v, then %+v", a, b)
	}
}
