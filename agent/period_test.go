package agent

import (
	"testing"
	"time"
)

// A fleet started together takes its first resync spread over the whole
// period, never later than the period.
func TestFirstResync_SpreadOverThePeriod(t *testing.T) {
	const period = 30 * time.Second
	var quarters [4]int
	for range 1000 {
		d := firstResync(period)
		if d <= 0 || d > period {
			t.Fatalf("first resync after %v, want within (0, %v]", d, period)
		}
		quarters[min(int(d*4/period), 3)]++
	}
	for i, n := range quarters {
		if n == 0 {
			t.Errorf("no first resync among 1,000 in quarter %d of the period: %v", i+1, quarters)
		}
	}
}
