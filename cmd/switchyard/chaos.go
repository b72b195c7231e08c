package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/coordinator/drill"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/desired"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const chaosUsage = `Usage:
  switchyard chaos run -f DRILL.yaml [--dry-run]   schedule a drill (--dry-run: show what each node would do)
  switchyard chaos status [NAME]                   drills, their targets and reports
  switchyard chaos abort NAME [--reason TEXT]      end one drill now
  switchyard chaos stop-all [--reason TEXT]        the kill switch: end every drill now
Common flags: --nats URL (env SWITCHYARD_NATS), --timeout D, -o table|json.
abort and stop-all wait, after the commit, until the bus carries the ended drills' documents,
which agents revert on (--publish-timeout D, 0 to skip; exit 3 when they do not get there).
`

func runChaos(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, chaosUsage)
		return errUsage
	}
	switch args[0] {
	case "run":
		return chaosRun(ctx, args[1:], stdout, stderr)
	case "status":
		return chaosStatus(ctx, args[1:], stdout, stderr)
	case "abort", "stop-all":
		return chaosEnd(ctx, args[0], args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, chaosUsage)
		return nil
	}
	return usageErr(stderr, "switchyard chaos: unknown verb %q\n\n%s", args[0], chaosUsage)
}

func chaosRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("chaos run", stderr)
	var c clientFlags
	c.register(fs)
	file := fs.String("f", "", "drill spec (YAML)")
	dry := fs.Bool("dry-run", false, "print the concrete action per selected node and change nothing")
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if *file == "" || len(pos) > 0 {
		return usageErr(stderr, "switchyard chaos run: want -f DRILL.yaml and no other arguments")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return fmt.Errorf("read drill: %w", err)
	}
	sp, err := chaos.ParseDrill(data)
	if err != nil {
		return fmt.Errorf("%s is not a valid drill; nothing was sent:\n%w", *file, indent(err))
	}
	if *dry {
		return chaosDryRun(ctx, c, sp, stdout)
	}
	return sendIntent(ctx, c, bus.IntentKindChaos, &sv1.Intent{Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}, "drill "+sp.GetName(), stdout)
}

// chaosDryRun asks the coordinators for the fleet and prints what the drill
// would do on each node it selects, with the cap check, and sends nothing.
func chaosDryRun(ctx context.Context, c clientFlags, sp *sv1.DrillSpec, stdout io.Writer) error {
	var fleet sv1.FleetAnswer
	if err := query(ctx, c, bus.QueryFleet, &sv1.FleetQuery{Service: sp.GetService()}, &fleet); err != nil {
		return err
	}
	var live []chaos.Node
	for _, n := range fleet.GetNodes() {
		if !n.GetStale() {
			live = append(live, chaos.Node{ID: n.GetNode(), Labels: n.GetLabels()})
		}
	}
	fmt.Fprintf(stdout, "Drill %s on %s (dry run: nothing is sent)\n", sp.GetName(), sp.GetService())
	targets := chaos.Select(sp, live)
	if id := sp.GetRollout(); id != "" {
		ans, err := queryRollouts(ctx, c, &sv1.RolloutsQuery{Rollout: id})
		if err != nil {
			return err
		}
		r := ans.GetRollouts()[0].GetRollout()
		fmt.Fprintf(stdout, "Rollback drill inside %s (%s): the targets are the nodes of its current wave when it starts.\n", id, state.PhaseName(r.GetPhase()))
		targets = chaos.Select(sp, currentWave(r, live))
	}
	if err := chaos.CheckCap(sp, len(targets), len(live)); err != nil {
		return fmt.Errorf("the coordinators would refuse this drill: %w", err)
	}
	fmt.Fprintf(stdout, "Caps: at most %d nodes and %g%% of %d live nodes\n\n", sp.GetMaxNodes(), float64(sp.GetMaxBasisPoints())/100, len(live))
	action := drill.Describe(sp.GetFault(), sp.GetDuration().AsDuration())
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tACTION")
	for _, t := range targets {
		fmt.Fprintf(tw, "%s\t%s\n", t, action)
	}
	tw.Flush()
	if sp.GetStartAfter() != nil {
		fmt.Fprintf(stdout, "\nStarts %s after it is committed.\n", sp.GetStartAfter().AsDuration())
	}
	return nil
}

func chaosEnd(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("chaos "+verb, stderr)
	var c clientFlags
	c.register(fs)
	reason := fs.String("reason", "", "why, for the record")
	fs.DurationVar(&c.publishWait, "publish-timeout", defaultPublishWait,
		"after the commit, how long to wait for the ended drills' documents to reach the bus, where agents read them (0: do not wait)")
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	in := &sv1.Intent{}
	q := &sv1.DrillsQuery{}
	switch verb {
	case "abort":
		if len(pos) != 1 {
			return usageErr(stderr, "switchyard chaos abort: want exactly one drill NAME")
		}
		in.Action = &sv1.Intent_AbortDrill{AbortDrill: &sv1.AbortDrill{Drill: pos[0], Reason: *reason}}
		verb = "abort of " + pos[0]
		q.Drill = pos[0]
	default:
		if len(pos) != 0 {
			return usageErr(stderr, "switchyard chaos stop-all: takes no arguments")
		}
		in.Action = &sv1.Intent_StopAllDrills{StopAllDrills: &sv1.StopAllDrills{Reason: *reason}}
	}
	if err := sendIntent(ctx, c, bus.IntentKindChaos, in, verb, stdout); err != nil || c.publishWait <= 0 {
		return err
	}
	return awaitDrillsEnded(ctx, c, q, stdout)
}

// awaitDrillsEnded waits, up to --publish-timeout, until the drills bucket
// carries the document that ends each drill the coordinators have ended
// and whose fault would still be on: agents revert when they read it, and
// before that only at the drill's own end.
func awaitDrillsEnded(ctx context.Context, c clientFlags, q *sv1.DrillsQuery, stdout io.Writer) error {
	var ans sv1.DrillsAnswer
	if err := query(ctx, c, bus.QueryDrills, q, &ans); err != nil {
		return fmt.Errorf("committed; could not ask which drills ended, so whether the bus carries their end is not known: %w", err)
	}
	now := time.Now()
	want := map[string]*sv1.Drill{}
	for _, v := range ans.GetDrills() {
		d := v.GetDrill()
		if !state.DrillLive(d.GetPhase()) && d.GetGeneration() > 0 && d.GetEndAt().AsTime().After(now) {
			want[d.GetId()] = d
		}
	}
	if len(want) == 0 {
		return nil
	}
	nc, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := c.security.sec.JetStream(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	wctx, cancel := context.WithTimeout(ctx, c.publishWait)
	defer cancel()
	var lastErr error
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		if kv, err := js.KeyValue(wctx, bus.DrillsBucket); err != nil {
			if wctx.Err() == nil {
				lastErr = fmt.Errorf("open bucket %s: %w", bus.DrillsBucket, err)
			}
		} else {
			for id, d := range want {
				e, err := kv.Get(wctx, id)
				if err != nil {
					if wctx.Err() == nil {
						lastErr = fmt.Errorf("read %s: %w", id, err)
					}
					continue
				}
				if f, err := bus.PeekFence(e.Value()); err == nil && f.Generation >= d.GetGeneration() {
					delete(want, id)
				}
			}
		}
		if len(want) == 0 {
			if c.output != "json" {
				fmt.Fprintln(stdout, "published: the bus carries the end of every drill it stopped; agents revert as they read it")
			}
			return nil
		}
		select {
		case <-wctx.Done():
			var lines []string
			for _, id := range slices.Sorted(maps.Keys(want)) {
				lines = append(lines, fmt.Sprintf("%s (its fault would end by itself at %s)", id, clock(want[id].GetEndAt().AsTime())))
			}
			why := ""
			if lastErr != nil {
				// Operator identities issued by an earlier release may
				// not read the drills bucket until the account is pushed.
				why = "; last error reading the bus: " + lastErr.Error() +
					" (an operator identity whose account predates this release cannot read the drills bucket: run switchyard auth push)"
			}
			return fmt.Errorf("%w: committed, but the end of %s did not reach the bus within %s (--publish-timeout)%s. "+
				"Agents revert when they read it: until then their faults go on. The leader keeps retrying, see its /healthz and logs; "+
				"to end the faults on a node now, restart its agent (systemctl restart switchyard-agent)",
				bus.ErrNotPublished, strings.Join(lines, ", "), c.publishWait, why)
		case <-t.C:
		}
	}
}

func chaosStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("chaos status", stderr)
	var c clientFlags
	c.register(fs)
	c.registerStale(fs, stderr)
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageErr(stderr, "switchyard chaos status: want at most one drill NAME")
	}
	q := &sv1.DrillsQuery{}
	if len(pos) == 1 {
		q.Drill = pos[0]
	}
	var ans sv1.DrillsAnswer
	if err := query(ctx, c, bus.QueryDrills, q, &ans); err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, &ans)
		return nil
	}
	if ks := ans.GetKillSwitch(); ks.GetLiveDrills() > 0 {
		fmt.Fprintf(stdout, "Kill switch: %d live drill(s) (running: %s); switchyard chaos stop-all ends them\n\n",
			ks.GetLiveDrills(), orDash(strings.Join(ks.GetRunning(), ",")))
	}
	if len(ans.GetDrills()) == 0 {
		fmt.Fprintln(stdout, "no drills")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DRILL\tSERVICE\tPHASE\tTARGETS\tACTIVE\tENDS\tREPORT")
	for _, v := range ans.GetDrills() {
		d := v.GetDrill()
		ends := "-"
		if d.GetEndAt() != nil {
			ends = clock(d.GetEndAt().AsTime())
		}
		rep := d.GetAbortReason()
		if d.GetReport() != nil {
			rep = d.GetReport().GetVerdict() + ": " + d.GetReport().GetSummary()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.GetId(), d.GetSpec().GetService(), state.DrillPhaseName(d.GetPhase()),
			orDash(strings.Join(d.GetTargets(), ",")), orDash(strings.Join(v.GetActive(), ",")), ends, rep)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if q.Drill != "" && len(ans.GetDrills()) == 1 {
		printDrillInjections(stdout, ans.GetDrills()[0].GetDrill())
	}
	return nil
}

// printDrillInjections lists, for one drill with a report, when each target
// reported its fault active, and the targets that never did.
func printDrillInjections(w io.Writer, d *sv1.Drill) {
	rep := d.GetReport()
	if rep == nil || len(d.GetTargets()) == 0 {
		return
	}
	at := map[string]string{}
	for _, in := range rep.GetInjected() {
		at[in.GetNode()] = clockMillis(in.GetAt().AsTime())
	}
	fmt.Fprintf(w, "\nTargets of %s, and when each reported the fault active:\n", d.GetId())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tFAULT ACTIVE FROM")
	for _, t := range d.GetTargets() {
		fmt.Fprintf(tw, "%s\t%s\n", t, cmp.Or(at[t], "never reported (not injected, or not heard from while it was)"))
	}
	tw.Flush()
	for _, l := range []struct {
		what string
		ts   *timestamppb.Timestamp
	}{
		{"rollback decided", rep.GetDetectedAt()},
		{"every live node rolled back", rep.GetRolledBackAt()},
		{"traffic recovered", rep.GetRecoveredAt()},
	} {
		if l.ts != nil {
			fmt.Fprintf(w, "%s at %s\n", l.what, clockMillis(l.ts.AsTime()))
		}
	}
}

// currentWave lists the live nodes whose wave is the rollout's current one:
// the first wave, in spec order, that takes them.
func currentWave(r *sv1.Rollout, live []chaos.Node) []chaos.Node {
	plan := spec.Compile(r.GetSpec())
	var out []chaos.Node
	for _, n := range live {
		for i, pw := range plan {
			ww := &sv1.WaveWeights{Selector: pw.Wave.GetSelector(), BasisPoints: pw.Wave.GetBasisPoints()}
			if desired.InWave(r.GetId(), n.ID, n.Labels, ww) {
				if int32(i) == r.GetWave() {
					out = append(out, n)
				}
				break
			}
		}
	}
	return out
}
