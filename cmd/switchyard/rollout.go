package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const rolloutUsage = `Usage:
  switchyard rollout apply -f FILE [--nats URL] [--timeout D] [-o json]
  switchyard rollout status [NAME] [--nats URL] [-o json]
  switchyard rollout abort NAME [--reason TEXT] [--nats URL] [-o json]
`

// clientFlags are the flags of every verb that talks to the coordinators.
type clientFlags struct {
	nats     string
	timeout  time.Duration
	output   string
	operator string
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.nats, "nats", envOr("SWITCHYARD_NATS", "nats://127.0.0.1:4222"), "NATS URL (env SWITCHYARD_NATS)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for the coordinators")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	fs.StringVar(&c.operator, "operator", envOr("SWITCHYARD_OPERATOR", defaultOperator()), "who is asking (env SWITCHYARD_OPERATOR)")
}

func (c *clientFlags) check(stderr io.Writer) error {
	if c.output != "table" && c.output != "json" {
		return usageErr(stderr, "-o %q: want table or json", c.output)
	}
	return nil
}

func (c *clientFlags) connect() (*nats.Conn, error) {
	nc, err := nats.Connect(c.nats, nats.Name("switchyard-cli"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to nats at %s (set --nats or SWITCHYARD_NATS): %w", c.nats, err)
	}
	return nc, nil
}

func defaultOperator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		return name + "@" + h
	}
	return name
}

// parseInterleaved parses flags that may come after positional arguments
// ("status web-1 -o json"), returning the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runRollout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, rolloutUsage)
		return errUsage
	}
	switch args[0] {
	case "apply":
		return rolloutApply(ctx, args[1:], stdout, stderr)
	case "status":
		return rolloutStatus(ctx, args[1:], stdout, stderr)
	case "abort":
		return rolloutAbort(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, rolloutUsage)
		return nil
	}
	return usageErr(stderr, "switchyard rollout: unknown verb %q\n\n%s", args[0], rolloutUsage)
}

func rolloutApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout apply", stderr)
	var c clientFlags
	c.register(fs)
	file := fs.String("f", "", "rollout spec file (YAML); - reads standard input")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(stderr); err != nil {
		return err
	}
	if *file == "" || len(pos) > 0 {
		return usageErr(stderr, "switchyard rollout apply: want -f FILE and no other arguments")
	}
	var data []byte
	if *file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(*file)
	}
	if err != nil {
		return fmt.Errorf("read spec: %w", err)
	}
	sp, err := spec.Parse(data)
	if err != nil {
		return fmt.Errorf("%s is not a valid rollout spec; nothing was sent:\n%w", *file, indent(err))
	}
	in := &sv1.Intent{Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}
	return sendIntent(ctx, c, in, stdout)
}

func rolloutAbort(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout abort", stderr)
	var c clientFlags
	c.register(fs)
	reason := fs.String("reason", "", "why, for the record")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(stderr); err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr(stderr, "switchyard rollout abort: want exactly one rollout NAME")
	}
	in := &sv1.Intent{Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: pos[0], Reason: *reason}}}
	return sendIntent(ctx, c, in, stdout)
}

// errRefused is returned when the coordinators refused an intent.
var errRefused = errors.New("refused")

func sendIntent(ctx context.Context, c clientFlags, in *sv1.Intent, stdout io.Writer) error {
	nc, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	in.Id = nuid.Next()
	in.Operator = c.operator
	in.CreatedAt = timestamppb.Now()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	res, err := bus.SendIntent(ctx, nc, bus.IntentKindRollout, in)
	if err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, res)
	} else if res.GetAccepted() {
		what := "applied"
		if in.GetAbortRollout() != nil {
			what = "abort committed"
		}
		fmt.Fprintf(stdout, "rollout %s: %s at generation %d\n", res.GetRolloutId(), what, res.GetIndex())
		if res.GetDuplicate() {
			fmt.Fprintln(stdout, "(this intent had been applied before; nothing changed)")
		}
	}
	if !res.GetAccepted() {
		return fmt.Errorf("%w by the coordinator (%s):\n%s", errRefused, res.GetCode(), indent(errors.New(res.GetError())))
	}
	return nil
}

func rolloutStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout status", stderr)
	var c clientFlags
	c.register(fs)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(stderr); err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageErr(stderr, "switchyard rollout status: want at most one rollout NAME")
	}
	q := &sv1.RolloutsQuery{}
	if len(pos) == 1 {
		q.Rollout = pos[0]
	}
	nc, err := c.connect()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var ans sv1.RolloutsAnswer
	if err := bus.Query(ctx, nc, bus.QueryRollouts, q, &ans); err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, &ans)
		return nil
	}
	if q.Rollout != "" && len(ans.GetRollouts()) == 1 {
		printRolloutDetail(stdout, ans.GetRollouts()[0])
		return nil
	}
	printRolloutTable(stdout, ans.GetRollouts())
	return nil
}

func printJSON(w io.Writer, m proto.Message) {
	b, _ := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	fmt.Fprintln(w, string(b))
}

func printRolloutTable(w io.Writer, rs []*sv1.RolloutView) {
	if len(rs) == 0 {
		fmt.Fprintln(w, "no rollouts")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLLOUT\tSERVICE\tFROM\tTO\tPHASE\tGENERATION\tCONVERGED\tUPDATED")
	for _, v := range rs {
		r := v.GetRollout()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.GetId(), r.GetSpec().GetService(), r.GetSpec().GetFrom(),
			r.GetSpec().GetTo(), state.PhaseName(r.GetPhase()), r.GetGeneration(), convergence(v), ago(r.GetUpdatedAt()))
	}
	tw.Flush()
}

func convergence(v *sv1.RolloutView) string {
	live := 0
	for _, n := range v.GetNodes() {
		if !n.GetStale() {
			live++
		}
	}
	return fmt.Sprintf("%d/%d", v.GetConverged(), live)
}

func printRolloutDetail(w io.Writer, v *sv1.RolloutView) {
	r := v.GetRollout()
	fmt.Fprintf(w, "Rollout:     %s\n", r.GetId())
	fmt.Fprintf(w, "Service:     %s (%s -> %s, blue-green)\n", r.GetSpec().GetService(), r.GetSpec().GetFrom(), r.GetSpec().GetTo())
	fmt.Fprintf(w, "Phase:       %s\n", state.PhaseName(r.GetPhase()))
	if r.GetReason() != "" {
		fmt.Fprintf(w, "Reason:      %s\n", r.GetReason())
	}
	fmt.Fprintf(w, "Generation:  %d\n", r.GetGeneration())
	fmt.Fprintf(w, "Converged:   %s live nodes\n", convergence(v))
	fmt.Fprintf(w, "Operator:    %s\n\n", r.GetOperator())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPPLIED\tWEIGHTS\tDRIVER\tSEEN\tMESSAGE")
	for _, n := range v.GetNodes() {
		seen := fmt.Sprintf("%.0fs ago", n.GetSecondsSinceSeen())
		if n.GetStale() {
			seen += " (stale)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", n.GetNode(), n.GetAppliedGeneration(), weights(n.GetWeights()),
			strings.TrimPrefix(strings.ToLower(n.GetDriver().String()), "driver_health_"), seen, n.GetMessage())
	}
	tw.Flush()
	fmt.Fprintln(w, "\nHistory:")
	for _, e := range r.GetHistory() {
		fmt.Fprintf(w, "  %s  #%d  %-12s  %s\n", e.GetAt().AsTime().Local().Format("15:04:05"), e.GetIndex(), state.PhaseName(e.GetPhase()), e.GetMessage())
	}
}

func weights(w map[string]uint32) string {
	keys := make([]string, 0, len(w))
	for k := range w {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, w[k])
	}
	return strings.Join(parts, " ")
}

func ago(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return time.Since(ts.AsTime()).Round(time.Second).String() + " ago"
}

func indent(err error) error {
	return errors.New("  " + strings.ReplaceAll(err.Error(), "\n", "\n  "))
}
