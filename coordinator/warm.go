package coordinator

import (
	"context"
	"time"

	"github.com/switchyard/switchyard/coordinator/state"
)

// warmInterval is how often every coordinator brings the analysis of each
// unfinished rollout up to date.
const warmInterval = time.Second

// runAnalysisWarm keeps the analysis of every unfinished rollout current on
// this coordinator, leader or not: the sequential tests read node reports as
// they come, so a new leader decides at once and no coordinator holds more
// than analysis.ReportRetention of reports.
func (s *Server) runAnalysisWarm(ctx context.Context) {
	tick := time.NewTicker(warmInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := s.cfg.Clock.Now()
		for _, r := range s.fsm.State().RolloutsWhere(state.Unfinished) {
			s.analysis.Assess(r, now)
		}
	}
}
