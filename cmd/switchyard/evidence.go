package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// printEvidence shows why a rollout was rolled back: the summary, and for a
// sequential alarm the test, its statistic against the threshold and the
// guarantee behind it, the counts and the nodes that drove it.
func printEvidence(w io.Writer, ev *sv1.Evidence) {
	fmt.Fprintf(w, "\nRollback evidence: %s\n", ev.GetSummary())
	if s := ev.GetSequential(); s != nil {
		rate := func(e, n uint64) string {
			if n == 0 {
				return "-"
			}
			return fmt.Sprintf("%.2f%%", 100*float64(e)/float64(n))
		}
		fmt.Fprintf(w, "  test:       %s\n", s.GetTest())
		fmt.Fprintf(w, "  method:     %s\n", s.GetMethod())
		fmt.Fprintf(w, "  statistic:  %.2f nats (log of the mixture over start seconds and alternatives) reached the threshold %.2f; leading alternative: the new backend's odds of an event ×%g, %.2f nats from its best start alone\n",
			s.GetStatistic(), s.GetThreshold(), s.GetOddsRatio(), s.GetRunStatistic())
		fmt.Fprintf(w, "  guarantee:  a release no worse than the old backend is rolled back with probability at most %g over %s of canary (at most twice that however long it runs)\n",
			s.GetFalseAlarm(), s.GetHorizon().AsDuration())
		fmt.Fprintf(w, "  evidence:   %s to %s: new backend %d of %d (%s), old backend %d of %d (%s), same nodes; exact binomial p=%.2g\n",
			clock(s.GetSince().AsTime()), clock(s.GetAt().AsTime()),
			s.GetCandidateEvents(), s.GetCandidateRequests(), rate(s.GetCandidateEvents(), s.GetCandidateRequests()),
			s.GetBaselineEvents(), s.GetBaselineRequests(), rate(s.GetBaselineEvents(), s.GetBaselineRequests()), s.GetPValue())
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  NODE\tLLR\tNEW\tNEW RATE\tOLD\tOLD RATE")
		for _, n := range s.GetNodes() {
			fmt.Fprintf(tw, "  %s\t%+.2f\t%d/%d\t%s\t%d/%d\t%s\n", n.GetNode(), n.GetContribution(),
				n.GetCandidateEvents(), n.GetCandidateRequests(), rate(n.GetCandidateEvents(), n.GetCandidateRequests()),
				n.GetBaselineEvents(), n.GetBaselineRequests(), rate(n.GetBaselineEvents(), n.GetBaselineRequests()))
		}
		tw.Flush()
	}
	if len(ev.GetWindows()) > 0 {
		printWindows(w, ev.GetWindows())
	}
}
