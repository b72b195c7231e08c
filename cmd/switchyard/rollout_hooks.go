package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// printPlanHooks lists every hook a rollout would run: where, when, and
// what it does to the rollout.
func printPlanHooks(w io.Writer, sp *sv1.RolloutSpec, live []*sv1.NodeView, withFleet bool) {
	wh := sp.GetHooks().GetWebhooks()
	a := sp.GetHooks().GetAgent()
	if len(wh) == 0 && len(spec.AgentHookNames(sp)) == 0 {
		return
	}
	fmt.Fprintln(w, "\nHooks:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  HOOK\tWHERE\tWHEN\tEFFECT")
	for _, h := range wh {
		effect := "notifies; never waited for"
		if h.GetGating() {
			onFail := "holds at the point and asks again after " + h.GetRecheck().AsDuration().String()
			switch h.GetOnFailure() {
			case sv1.HookFailure_HOOK_FAILURE_ROLLBACK:
				onFail = "rolls back"
			case sv1.HookFailure_HOOK_FAILURE_PAUSE:
				onFail = "pauses until resumed, then asks again"
			}
			effect = "gates: the rollout waits for a 2xx; on failure it " + onFail
		}
		fmt.Fprintf(tw, "  webhook %s\tleader: POST %s\t%s\t%s (timeout %s, %d retries)\n", h.GetName(), h.GetUrl(),
			pointWhen(h.GetPoint()), effect, h.GetTimeout().AsDuration(), h.GetRetries())
	}
	for _, l := range []struct {
		names        []string
		when, effect string
	}{
		{a.GetPreTraffic(), "before a node's " + sp.GetTo() + " weight first rises above 0", "a failure keeps that node on " + sp.GetFrom()},
		{a.GetPostTraffic(), "after a node applied a step that raised " + sp.GetTo(), "reported in status"},
		{a.GetRollback(), "when a node that took part applies the rollback", "reported in status"},
	} {
		for _, n := range l.names {
			fmt.Fprintf(tw, "  agent hook %s\tevery node of %s, by name in its agent config\t%s\t%s\n", n, sp.GetService(), l.when, l.effect)
		}
	}
	tw.Flush()
	if !withFleet {
		return
	}
	for _, name := range spec.AgentHookNames(sp) {
		var lack []string
		for _, n := range live {
			if !slices.Contains(n.GetHooks(), name) {
				lack = append(lack, n.GetNode())
			}
		}
		if len(lack) > 0 {
			fmt.Fprintf(w, "  agent hook %s is not in the agent config of %s: apply would be refused\n", name, strings.Join(lack, ", "))
		}
	}
}

func pointWhen(p sv1.HookPoint) string {
	switch p {
	case sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT:
		return "before any traffic moves"
	case sv1.HookPoint_HOOK_POINT_PRE_WAVE:
		return "before each wave after the first"
	case sv1.HookPoint_HOOK_POINT_PRE_STEP:
		return "before each step after a wave's first"
	case sv1.HookPoint_HOOK_POINT_PRE_PROMOTION:
		return "before all traffic moves"
	case sv1.HookPoint_HOOK_POINT_POST_ROLLOUT:
		return "after completion"
	case sv1.HookPoint_HOOK_POINT_ROLLBACK:
		return "when a rollback starts"
	}
	return spec.PointName(p)
}

// printHookCalls shows a rollout's webhook calls and its nodes' agent hook
// runs.
func printHookCalls(w io.Writer, v *sv1.RolloutView) {
	calls := v.GetRollout().GetHookCalls()
	if len(calls) > 0 {
		fmt.Fprintln(w, "\nWebhooks:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  WEBHOOK\tAT\tCALL\tOUTCOME\tATTEMPTS\tANSWER")
		for _, c := range calls {
			outcome := strings.TrimPrefix(strings.ToLower(c.GetOutcome().String()), "hook_outcome_")
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%s\t%d\t%s\n", c.GetWebhook(), c.GetKey(), c.GetSeq(), outcome, c.GetAttempts(), c.GetDetail())
		}
		tw.Flush()
	}
	var runs [][2]any
	for _, n := range v.GetNodes() {
		for _, r := range n.GetHookRuns() {
			runs = append(runs, [2]any{n.GetNode(), r})
		}
	}
	if len(runs) == 0 {
		return
	}
	fmt.Fprintln(w, "\nAgent hooks:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tHOOK\tPOINT\tGENERATION\tSTATE\tEXIT\tWHY")
	for _, nr := range runs {
		r := nr[1].(*sv1.HookRun)
		why := r.GetError()
		if out := strings.TrimSpace(r.GetOutput()); out != "" && r.GetState() == "failed" {
			if i := strings.LastIndexAny(out, "\r\n"); i >= 0 {
				out = out[i+1:]
			}
			why += "; last output line: " + out
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%d\t%s\n", nr[0], r.GetHook(), r.GetPoint(), r.GetGeneration(), r.GetState(), r.GetExitCode(), strings.TrimPrefix(why, "; "))
	}
	tw.Flush()
}
