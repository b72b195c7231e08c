package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/rollout"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/desired"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// stamp and clock print a time as the audit log and the JSON API do: in
// UTC, marked so, whatever the machine's zone, so the lines of every
// command can be laid side by side.
func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func clock(t time.Time) string { return t.UTC().Format(time.TimeOnly) + " UTC" }

// clockMillis is clock to the millisecond.
func clockMillis(t time.Time) string { return t.UTC().Format("15:04:05.000") + " UTC" }

// position says where a rollout is: wave, step and the new backend's share.
func position(r *sv1.Rollout) string { return spec.Position(r) }

func printWindows(w io.Writer, wins []*sv1.WindowEvidence) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  WINDOW\tVERDICT\tNEW REQ\tNEW ERR\tNEW P\tOLD REQ\tOLD ERR\tOLD P\tWHY")
	for _, e := range wins {
		c, b := e.GetCandidate(), e.GetBaseline()
		fmt.Fprintf(tw, "  %s\t%s\t%d\t%.2f%%\t%.0fms\t%d\t%.2f%%\t%.0fms\t%s\n",
			clock(e.GetStart().AsTime()), e.GetVerdict(),
			c.GetRequests(), 100*c.GetErrorRate(), 1000*c.GetLatencySeconds(),
			b.GetRequests(), 100*b.GetErrorRate(), 1000*b.GetLatencySeconds(), e.GetReason())
	}
	tw.Flush()
}

func printHistory(w io.Writer, r *sv1.Rollout) {
	for _, e := range r.GetHistory() {
		who := ""
		if e.GetOperator() != "" {
			who = " (" + e.GetOperator() + ")"
		}
		fmt.Fprintf(w, "  %s  #%-6d %-12s %s%s\n", stamp(e.GetAt().AsTime()), e.GetIndex(),
			state.PhaseName(e.GetPhase()), e.GetMessage(), who)
	}
}

func rolloutHistory(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout history", stderr)
	var c clientFlags
	c.register(fs)
	c.registerStale(fs, stderr)
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr(stderr, "switchyard rollout history: want exactly one rollout NAME")
	}
	ans, err := queryRollouts(ctx, c, &sv1.RolloutsQuery{Rollout: pos[0]})
	if err != nil {
		return err
	}
	r := ans.GetRollouts()[0].GetRollout()
	if c.output == "json" {
		printJSON(stdout, r)
		return nil
	}
	printHistory(stdout, r)
	if ev := r.GetEvidence(); ev != nil {
		printEvidence(stdout, ev)
	}
	return nil
}

// rolloutPlan is a dry run: it validates the spec, asks a coordinator which
// nodes run the service, and shows what each wave would select, with no
// side effects.
func rolloutPlan(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout plan", stderr)
	var c clientFlags
	c.register(fs)
	file := fs.String("f", "", "rollout spec file (YAML); - reads standard input")
	offline := fs.Bool("offline", false, "do not ask the coordinators for the fleet")
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if *file == "" || len(pos) > 0 {
		return usageErr(stderr, "switchyard rollout plan: want -f FILE and no other arguments")
	}
	sp, err := readSpec(*file)
	if err != nil {
		return err
	}
	var nodes []*sv1.NodeView
	if !*offline {
		var ans sv1.FleetAnswer
		if err := query(ctx, c, bus.QueryFleet, &sv1.FleetQuery{Service: sp.GetService()}, &ans); err != nil {
			return fmt.Errorf("%w (use --offline to plan without the fleet)", err)
		}
		nodes = ans.GetNodes()
	}
	if c.output == "json" {
		printJSON(stdout, sp)
		return nil
	}
	printPlan(stdout, sp, nodes, !*offline)
	return nil
}

func printPlan(w io.Writer, sp *sv1.RolloutSpec, nodes []*sv1.NodeView, withFleet bool) {
	fmt.Fprintf(w, "Rollout %s: %s from %s to %s, %s\n", sp.GetName(), sp.GetService(), sp.GetFrom(), sp.GetTo(), strategyName(sp))
	a := sp.GetAnalysis()
	fmt.Fprintf(w, "\nGuardrails: windows of %s; rollback after %d failing windows in a row; a window with fewer than %d requests to %s is inconclusive; confidence %g%%\n",
		a.GetWindow().AsDuration(), a.GetBreachWindows(), a.GetMinRequests(), sp.GetTo(), 100*a.GetConfidence())
	if spec.Method(a) == spec.MethodSequential {
		fmt.Fprintf(w, "  judge: sequential, %s against %s on the same nodes on every report; a release no worse than %s is rolled back with probability at most %g over %s of canary (at most twice that however long it runs); an analysis step needs %g%% confidence that %s is not %g%% worse\n",
			sp.GetTo(), sp.GetFrom(), sp.GetFrom(), spec.FalseAlarm(a), spec.HorizonOf(sp), 100*spec.PassConfidence(a), sp.GetTo(), 100*spec.NonInferiority(a))
	}
	if e := a.GetErrorRate(); e != nil {
		// The judges read a max of 0 as no absolute limit, not as 0%.
		limit := "no absolute limit"
		if e.GetMax() > 0 {
			limit = fmt.Sprintf("at most %.2f%%", 100*e.GetMax())
		}
		if e.GetMaxIncrease() > 0 || spec.Method(a) == spec.MethodWindows {
			fmt.Fprintf(w, "  error rate: %s, and at most %.2f points above %s\n", limit, 100*e.GetMaxIncrease(), sp.GetFrom())
		} else {
			fmt.Fprintf(w, "  error rate: %s, and no worse than %s\n", limit, sp.GetFrom())
		}
	}
	if l := a.GetLatency(); l != nil {
		var limits []string
		if l.GetMax() != nil {
			limits = append(limits, fmt.Sprintf("at most %s", l.GetMax().AsDuration()))
		}
		if l.GetMaxIncrease() != nil {
			limits = append(limits, fmt.Sprintf("at most %s above %s", l.GetMaxIncrease().AsDuration(), sp.GetFrom()))
		}
		if spec.Method(a) == spec.MethodSequential {
			limits = append(limits, fmt.Sprintf("no slower than %s anywhere in the distribution", sp.GetFrom()))
		}
		if len(limits) == 0 {
			limits = append(limits, "no limit set")
		}
		fmt.Fprintf(w, "  latency p%g: %s\n", 100*l.GetQuantile(), strings.Join(limits, ", "))
	}
	if q := a.GetSaturation(); q != nil && q.GetMaxQueue() > 0 {
		fmt.Fprintf(w, "  saturation: at most %d queued requests on a node\n", q.GetMaxQueue())
	}
	fmt.Fprintf(w, "  health checks: %s weighted but down on a node (HAProxy's health checks failing) where %s is not fails a window, whatever its requests\n",
		sp.GetTo(), sp.GetFrom())

	plan := spec.Compile(sp)
	taken := map[string]bool{}
	var live []*sv1.NodeView
	for _, n := range nodes {
		if !n.GetStale() {
			live = append(live, n)
		}
	}
	for i, pw := range plan {
		wv := pw.Wave
		var sel []string
		for k, v := range wv.GetSelector() {
			sel = append(sel, k+"="+v)
		}
		sort.Strings(sel)
		desc := "every node"
		if len(sel) > 0 {
			desc = strings.Join(sel, ",")
		}
		gate := ""
		if wv.GetManualGate() {
			gate = ", waits for approval"
		}
		fmt.Fprintf(w, "\nWave %d/%d %s (%s, %g%%%s)", i+1, len(plan), wv.GetName(), desc, float64(wv.GetBasisPoints())/100, gate)
		if withFleet {
			var picked []string
			ww := &sv1.WaveWeights{Selector: wv.GetSelector(), BasisPoints: wv.GetBasisPoints()}
			for _, n := range live {
				if !taken[n.GetNode()] && desired.InWave(sp.GetName(), n.GetNode(), n.GetLabels(), ww) {
					taken[n.GetNode()] = true
					picked = append(picked, n.GetNode())
				}
			}
			fmt.Fprintf(w, ": %d of %d live nodes", len(picked), len(live))
			if len(picked) > 0 {
				fmt.Fprintf(w, ": %s", strings.Join(picked, ", "))
			}
		}
		fmt.Fprintln(w)
		for j, st := range pw.Steps {
			fmt.Fprintf(w, "  %d. %s\n", j+1, spec.DescribeStep(st))
		}
	}
	if withFleet {
		var rest []string
		for _, n := range live {
			if !taken[n.GetNode()] {
				rest = append(rest, n.GetNode())
			}
		}
		if len(rest) > 0 {
			fmt.Fprintf(w, "\nIn no wave (their weights stay as they are): %s\n", strings.Join(rest, ", "))
		}
	}
	if d := spec.KeepWarm(sp); d > 0 {
		fmt.Fprintf(w, "\nAfter promotion %s is kept warm for %s.\n", sp.GetFrom(), d)
	}
	printPlanHooks(w, sp, live, withFleet)
}

func readSpec(file string) (*sv1.RolloutSpec, error) {
	var (
		data []byte
		err  error
	)
	if file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	sp, err := spec.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s is not a valid rollout spec; nothing was sent:\n%w", file, indent(err))
	}
	return sp, nil
}

// minWatchInterval is the shortest refresh of rollout watch: each refresh
// is a query the leader answers, and a shorter one would only load it.
const minWatchInterval = 100 * time.Millisecond

// errRolledBack is returned by watch when the rollout ended rolled back, so
// a pipeline can fail on it.
var errRolledBack = errors.New("rolled back")

func rolloutWatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout watch", stderr)
	var c clientFlags
	c.register(fs)
	every := fs.Duration("interval", time.Second, "refresh interval, at least "+minWatchInterval.String())
	through := fs.Bool("through-approvals", false, "keep watching while the rollout waits for an approval (default: return then, saying what to approve)")
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr(stderr, "switchyard rollout watch: want exactly one rollout NAME")
	}
	if *every < minWatchInterval {
		return usageErr(stderr, "--interval %s: want %s or more, e.g. 1s", *every, minWatchInterval)
	}
	tty := isTerminal(stdout)
	last := ""
	s := &session{c: c}
	defer s.close()
	for {
		// The text view shows counts, not nodes: it asks for the summary,
		// which leaves the node list (a few hundred bytes a node) out of
		// every refresh. The JSON lines are the whole view.
		var ans sv1.RolloutsAnswer
		err := s.query(ctx, bus.QueryRollouts, &sv1.RolloutsQuery{Rollout: pos[0], Summary: c.output != "json"}, &ans)
		if err != nil {
			if ctx.Err() != nil {
				// Interrupted mid-query: a watch ends on Ctrl-C, as it
				// does between queries.
				return nil
			}
			return err
		}
		v := ans.GetRollouts()[0]
		frame := renderWatch(v)
		if frame != last && c.output == "json" {
			// One line per change, each what GET /v1/rollouts/NAME holds.
			b, _ := protojson.Marshal(v)
			fmt.Fprintln(stdout, string(b))
			last = frame
		} else if frame != last {
			if tty {
				fmt.Fprint(stdout, "\033[H\033[2J")
			} else {
				fmt.Fprintln(stdout, "---", clock(time.Now()))
			}
			fmt.Fprint(stdout, frame)
			last = frame
		}
		switch v.GetRollout().GetPhase() {
		case sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
			return nil
		case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
			return fmt.Errorf("rollout %s %w: %s", pos[0], errRolledBack, v.GetRollout().GetReason())
		}
		if w := v.GetWaiting(); !*through && strings.HasPrefix(w, "approval") && int(v.GetConverged()) >= liveNodes(v) {
			// Nothing more happens until a person acts: say what to do.
			fmt.Fprintf(stdout, "\nwaiting for %s: switchyard rollout approve %s\n", w, pos[0])
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func bar(done, total int) string {
	const width = 20
	if total <= 0 {
		total = 1
	}
	n := min(width, done*width/total)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

// phaseOf names a rollout's phase for people. The paused mark outlives a
// promotion or rollback of a paused rollout in the replicated record, where
// no resume can clear it; it is shown only while the rollout progresses.
func phaseOf(r *sv1.Rollout) string {
	phase := state.PhaseName(r.GetPhase())
	if r.GetPaused() && r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		phase += " (paused)"
	}
	return phase
}

func renderWatch(v *sv1.RolloutView) string {
	var b strings.Builder
	r := v.GetRollout()
	sp := r.GetSpec()
	fmt.Fprintf(&b, "%s  %s: %s -> %s  %s  generation %d  converged %s\n\n", r.GetId(), sp.GetService(), sp.GetFrom(), sp.GetTo(), phaseOf(r), r.GetGeneration(), convergence(v))
	plan := spec.Compile(sp)
	for i, pw := range plan {
		done := 0
		switch {
		case i < int(r.GetWave()) || r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED || r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
			done = len(pw.Steps)
		case i == int(r.GetWave()):
			done = int(r.GetStep())
		}
		cur := ""
		if i == int(r.GetWave()) && r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING && done < len(pw.Steps) {
			cur = "  now: " + spec.DescribeStep(pw.Steps[done])
		}
		fmt.Fprintf(&b, "  wave %-12s %s %d/%d steps%s\n", pw.Wave.GetName(), bar(done, len(pw.Steps)), done, len(pw.Steps), cur)
	}
	if wins := v.GetWindows(); len(wins) > 0 {
		e := wins[len(wins)-1]
		c, bl := e.GetCandidate(), e.GetBaseline()
		q := 100 * sp.GetAnalysis().GetLatency().GetQuantile()
		fmt.Fprintf(&b, "\n  %-6s error rate %6.2f%%  p%g %6.0fms  %d requests\n", sp.GetTo(), 100*c.GetErrorRate(), q, 1000*c.GetLatencySeconds(), c.GetRequests())
		fmt.Fprintf(&b, "  %-6s error rate %6.2f%%  p%g %6.0fms  %d requests\n", sp.GetFrom(), 100*bl.GetErrorRate(), q, 1000*bl.GetLatencySeconds(), bl.GetRequests())
		fmt.Fprintf(&b, "  last window: %s (%s)\n", e.GetVerdict(), e.GetReason())
	}
	if v.GetAnalysis() != "" {
		fmt.Fprintf(&b, "  %s\n", v.GetAnalysis())
	}
	if v.GetWaiting() != "" {
		fmt.Fprintf(&b, "\n  waiting for %s\n", v.GetWaiting())
	}
	if r.GetReason() != "" {
		fmt.Fprintf(&b, "\n  %s\n", r.GetReason())
	}
	return b.String()
}

// rolloutSimulate replays telemetry against a spec offline, through the
// same controller code as the live leader.
func rolloutSimulate(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout simulate", stderr)
	file := fs.String("f", "", "rollout spec file (YAML)")
	telemetry := fs.String("telemetry", "", "recorded telemetry: one protojson HealthReport per line")
	applyDelay := fs.Duration("apply-delay", time.Second, "how long a simulated node takes to apply a new generation")
	tick := fs.Duration("tick", 250*time.Millisecond, "controller tick")
	output := fs.String("o", "table", "output: table or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" || *telemetry == "" || fs.NArg() > 0 {
		return usageErr(stderr, "switchyard rollout simulate: want -f SPEC and --telemetry FILE")
	}
	if err := checkOutput(stderr, *output); err != nil {
		return err
	}
	if *applyDelay < 0 {
		return usageErr(stderr, "--apply-delay %s: want 0 (nodes apply at once) or more, e.g. 1s", *applyDelay)
	}
	if *tick <= 0 {
		return usageErr(stderr, "--tick %s: want a duration above zero, e.g. 250ms", *tick)
	}
	sp, err := readSpec(*file)
	if err != nil {
		return err
	}
	f, err := os.Open(*telemetry)
	if err != nil {
		return fmt.Errorf("--telemetry: %w", err)
	}
	defer f.Close()
	rec, err := rollout.ReadRecording(f)
	if err != nil {
		return fmt.Errorf("--telemetry %s: %w", *telemetry, err)
	}
	res, err := rollout.Simulate(sp, rec, rollout.SimOptions{Start: rec.Start(), ApplyDelay: *applyDelay, Tick: *tick})
	if err != nil {
		return err
	}
	if *output == "json" {
		printJSON(stdout, res.Final)
		return nil
	}
	fmt.Fprintf(stdout, "Simulated %s against %d nodes from %s\n\n", sp.GetName(), len(rec.Nodes()), *telemetry)
	for _, e := range res.Events {
		fmt.Fprintf(stdout, "  +%7.2fs  %-16s %-12s %s\n", e.Offset.Seconds(), e.Action, state.PhaseName(e.Phase), e.Message)
	}
	fmt.Fprintf(stdout, "\nEnds %s at %s.\n", state.PhaseName(res.Final.GetPhase()), position(res.Final))
	if ev := res.Final.GetEvidence(); ev != nil {
		printEvidence(stdout, ev)
	}
	return nil
}
