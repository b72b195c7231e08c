package agent

import (
	"testing"
	"time"
)

// A fleet started together takes its first resync and heartbeat spread
// over the second half of the period, never sooner, never later.
func TestFirstTick_SpreadOverHalfThePeriod(t *testing.T) {
	const period = 30 * time.Second
	var quarters [4]int
	for range 1000 {
		d := firstTick(period)
		if d < period/2 || d > period {
			t.Fatalf("first tick after %v, want within [%v, %v]", d, period/2, period)
		}
		quarters[min(int(d*4/period), 3)]++
	}
	for _, i := range []int{2, 3} {
		if quarters[i] == 0 {
			t.Errorf("no first tick among 1,000 in quarter %d of the period: %v", i+1, quarters)
		}
	}
}

// A beat goes out unless a change is about to, or a status just went out;
// the gap between two statuses is then at most 1.25 heartbeats: a beat
// left out came within a quarter period of the last status, and the next
// comes a period later.
func TestBeatDue_AtMostOneAndAQuarterHeartbeatsBetweenStatuses(t *testing.T) {
	const hb = 4 * time.Second
	for _, tc := range []struct {
		since   time.Duration
		waiting bool
		want    bool
	}{
		{since: hb, want: true},
		{since: hb / 4, want: true},
		{since: hb/4 - time.Millisecond, want: false},
		{since: 0, want: false},
		{since: 2 * hb, waiting: true, want: false},
	} {
		if got := beatDue(tc.since, hb, tc.waiting); got != tc.want {
			t.Errorf("beatDue(%v since the last status, change waiting %v) = %v, want %v", tc.since, tc.waiting, got, tc.want)
		}
	}
	// Beats every hb from a random phase, statuses at random times between:
	// no gap between statuses is longer than 1.25 hb.
	for phase := time.Duration(0); phase < hb; phase += hb / 7 {
		for change := time.Duration(0); change < 3*hb; change += hb / 11 {
			last, longest := time.Duration(0), time.Duration(0)
			sent := func(at time.Duration) { longest, last = max(longest, at-last), at }
			changed := false
			for beat := phase; beat < 6*hb; beat += hb {
				if !changed && change < beat {
					sent(change)
					changed = true
				}
				if beatDue(beat-last, hb, false) {
					sent(beat)
				}
			}
			if longest > hb+hb/4 {
				t.Fatalf("beats from %v, a change at %v: %v between two statuses, more than 1.25 heartbeats", phase, change, longest)
			}
		}
	}
}
