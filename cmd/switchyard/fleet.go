package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const fleetUsage = `Usage:
  switchyard fleet status [SERVICE]   the fleet by service, wave and node: applied generation,
                                      desired and observed weights, driver health, stale nodes
Flags: --nats URL, --nats-creds FILE, --nats-ca FILE, --timeout D, -o table|json, --stale.
-o json prints what GET /v1/fleet answers (docs/api.md).
`

func runFleet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, fleetUsage)
		return errUsage
	}
	switch args[0] {
	case "status":
		return fleetStatus(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, fleetUsage)
		return nil
	}
	return usageErr(stderr, "switchyard fleet: unknown verb %q\n\n%s", args[0], fleetUsage)
}

// registerStale adds --stale to a read verb.
func (c *clientFlags) registerStale(fs interface {
	BoolVar(*bool, string, bool, string)
}, notice io.Writer) {
	fs.BoolVar(&c.stale, "stale", false, "accept an answer from any coordinator's own replica, which may lag the leader (said on stderr)")
	c.notice = notice
}

func fleetStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("fleet status", stderr)
	var c clientFlags
	c.register(fs)
	c.registerStale(fs, stderr)
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageErr(stderr, "switchyard fleet status: want at most one SERVICE")
	}
	q := &sv1.FleetStatusQuery{}
	if len(pos) == 1 {
		q.Service = pos[0]
	}
	var ans sv1.FleetStatus
	if err := query(ctx, c, bus.QueryFleetStatus, q, &ans); err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, &ans)
		return nil
	}
	printFleet(stdout, &ans)
	return nil
}

func printFleet(w io.Writer, ans *sv1.FleetStatus) {
	if len(ans.GetServices()) == 0 {
		fmt.Fprintln(w, "no services")
		return
	}
	for i, s := range ans.GetServices() {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "Service %s: desired %d/%d", s.GetService(), s.GetEpoch(), s.GetGeneration())
		if s.GetRollout() != "" {
			fmt.Fprintf(w, " (rollout %s)", s.GetRollout())
		}
		fmt.Fprintf(w, ", %d/%d live nodes converged", s.GetConverged(), s.GetLive())
		if len(s.GetHeldNodes()) > 0 {
			fmt.Fprintf(w, ", held by a failed pre-traffic hook: %s", strings.Join(s.GetHeldNodes(), ","))
		}
		if len(s.GetStaleNodes()) > 0 {
			fmt.Fprintf(w, ", stale: %s", strings.Join(s.GetStaleNodes(), ","))
		}
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "WAVE\tNODE\tAPPLIED (EPOCH/GEN)\tWEIGHTS\tOBSERVED\tDRIVER\tSEEN\tMESSAGE")
		for _, wv := range s.GetWaves() {
			for _, n := range wv.GetNodes() {
				seen := seenAgo(n)
				msg := n.GetMessage()
				switch {
				case n.GetDiverged():
					msg = strings.TrimSpace("DIVERGED " + msg)
				case n.GetDocumentExpired():
					msg = strings.TrimSpace("EXPIRED " + msg)
				}
				if d := n.GetDrift(); d != "" {
					msg = strings.TrimSpace(msg + " drift: " + d)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\n", wv.GetWave(), n.GetNode(), n.GetAppliedEpoch(), n.GetAppliedGeneration(),
					weights(n.GetWeights()), observedWeights(n), strings.TrimPrefix(strings.ToLower(n.GetDriver().String()), "driver_health_"),
					seen, orDash(msg))
			}
		}
		tw.Flush()
	}
}

// seenAgo says how long ago a node was last heard from, to the nearest
// second as rollout status and the dashboard say it, marked when stale.
func seenAgo(n *sv1.NodeView) string {
	seen := fmt.Sprintf("%.0fs ago", n.GetSecondsSinceSeen())
	switch {
	case n.GetStopped():
		// Its agent said it was shutting down: not a silence.
		seen += " (stopped)"
	case n.GetStale():
		seen += " (stale)"
	}
	return seen
}

// rolloutSeries prints a rollout's per-backend error rate and latency
// quantiles over its life, as GET /v1/rollouts/NAME/series answers.
func rolloutSeries(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout series", stderr)
	var c clientFlags
	c.register(fs)
	c.registerStale(fs, stderr)
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr(stderr, "switchyard rollout series: want exactly one rollout NAME")
	}
	var ans sv1.RolloutSeries
	if err := query(ctx, c, bus.QuerySeries, &sv1.SeriesQuery{Rollout: pos[0]}, &ans); err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, &ans)
		return nil
	}
	fmt.Fprintf(stdout, "Rollout %s (%s), one row per %ds\n", ans.GetRollout(), ans.GetService(), ans.GetStepSeconds())
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tBACKEND\tROLE\tREQUESTS\tERRORS\tERROR RATE\tP50\tP90\tP99")
	for _, b := range ans.GetBackends() {
		for _, p := range b.GetPoints() {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%.2f%%\t%.1fms\t%.1fms\t%.1fms\n", clock(p.GetAt().AsTime()),
				b.GetBackend(), b.GetRole(), p.GetRequests(), p.GetErrors(), 100*p.GetErrorRate(),
				1000*p.GetP50Seconds(), 1000*p.GetP90Seconds(), 1000*p.GetP99Seconds())
		}
	}
	return tw.Flush()
}
