package rollout

import (
	"fmt"
	"time"

	"github.com/switchyard/switchyard/coordinator/analysis"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// fixedJudge is a Flagger-style judge with the defaults its documented
// examples use: one check per interval on the last interval (success rate
// under 99% or p99 over 500 ms fails a check) and a rollback once threshold
// checks failed.
type fixedJudge struct {
	store     *analysis.Store
	interval  time.Duration
	maxErr    float64
	maxP99    time.Duration
	threshold int
	// checked and failed carry the count over closed checks, whose verdicts
	// never change.
	checked time.Time
	failed  int
}

func (f *fixedJudge) Assess(r *sv1.Rollout, now time.Time) analysis.Assessment {
	start := r.GetCreatedAt().AsTime()
	first := start.Add(f.interval)
	if !f.checked.IsZero() {
		first = f.checked.Add(f.interval)
	}
	for check := first; !check.After(now.Add(-analysis.Grace)); check = check.Add(f.interval) {
		f.checked = check
		g := f.store.Window(r.GetSpec().GetService(), r.GetId(), r.GetSpec().GetTo(), analysis.AnyWave, check.Add(-f.interval), check)
		if g.Requests == 0 {
			continue
		}
		rate := float64(g.Errors) / float64(g.Requests)
		p99 := time.Duration(g.Latency.Quantile(0.99) * float64(time.Second))
		if rate > f.maxErr || p99 > f.maxP99 {
			f.failed++
			if f.failed >= max(f.threshold, 1) {
				return analysis.Assessment{Breach: &sv1.Evidence{Guardrail: "fixed", Summary: fmt.Sprintf("%d failed checks; last at %s: errors %.2f%%, p99 %s", f.failed, check.Sub(start), 100*rate, p99)}}
			}
		}
	}
	return analysis.Assessment{}
}
