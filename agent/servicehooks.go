package agent

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/agent/hooks"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// hookRequest is a hook run for a document on this node.
func (w *serviceWorker) hookRequest(ds *sv1.DesiredState, hook, point string) hooks.Request {
	return hooks.Request{Service: w.name, Node: w.node, Hook: hook, Point: point, RolloutID: ds.GetRolloutId(),
		Generation: ds.GetGeneration(), From: ds.GetFromBackend(), To: ds.GetToBackend()}
}

// preTraffic runs the document's pre-traffic hooks when it would give the
// new backend its first weight on this node. A failing hook keeps the node
// on the old backend: it returns the weights to apply and, when held, the
// failed run.
func (w *serviceWorker) preTraffic(ctx context.Context, ds *sv1.DesiredState, before, weights map[string]uint32) (map[string]uint32, *sv1.HookRun) {
	from, to := ds.GetFromBackend(), ds.GetToBackend()
	names := ds.GetAgentHooks().GetPreTraffic()
	if w.hooks == nil || len(names) == 0 || to == "" || from == "" || !rolloutMoving(ds) || before[to] > 0 || weights[to] == 0 {
		return weights, nil
	}
	for _, name := range names {
		run := w.hooks.Run(ctx, w.hookRequest(ds, name, hooks.PreTraffic))
		w.noteRun(run)
		if run.GetState() == hooks.StateSucceeded {
			continue
		}
		held := maps.Clone(weights)
		held[from] += held[to]
		held[to] = 0
		w.log.Warn("pre-traffic hook failed; this node stays on the old backend for this generation",
			"generation", ds.GetGeneration(), "rollout", ds.GetRolloutId(), "hook", name, "exit_code", run.GetExitCode(),
			"from", from, "weights", held)
		return held, run
	}
	return weights, nil
}

// afterApply runs post-traffic hooks once the node's new backend weight
// rose, and rollback hooks once a node that took part in the rollout
// applied its rollback. Their failures are reported, never acted on. They
// may run for minutes, so the proxy is read back and the status sent
// before them: the node reports the generation its proxy does meanwhile.
func (w *serviceWorker) afterApply(ctx context.Context, ds *sv1.DesiredState, prevRollout string, before, weights map[string]uint32, held *sv1.HookRun) {
	if w.hooks == nil {
		return
	}
	var point string
	var names []string
	switch {
	case rolloutMoving(ds) && held == nil && weights[ds.GetToBackend()] > before[ds.GetToBackend()]:
		point, names = hooks.PostTraffic, ds.GetAgentHooks().GetPostTraffic()
	case rollingBack(ds) && prevRollout == ds.GetRolloutId():
		point, names = hooks.Rollback, ds.GetAgentHooks().GetRollback()
	}
	if len(names) == 0 {
		return
	}
	if err := w.checkProxy(ctx); err != nil {
		// The check stays asked for: the step checks again after the
		// hooks, and reports the failure then.
		if ctx.Err() == nil {
			w.log.Debug("proxy check before the hooks failed", "err", err)
		}
	} else {
		w.setHealth(sv1.DriverHealth_DRIVER_HEALTH_OK, w.okMessage())
	}
	w.sendStatus()
	for _, name := range names {
		w.noteRun(w.hooks.Run(ctx, w.hookRequest(ds, name, point)))
	}
}

// rollbackArrived reports whether a document that rolls back ds's rollout
// (or belongs to another rollout) arrived while ds's pre-traffic hooks ran;
// if so, the inbox is taken, as the service's goroutine would take it, and
// the newest document is pending in place of ds. A newer step of the same
// rollout is left in the inbox: ds is applied first, as it would have
// been, and the hooks that ran for it do not run again for that step.
func (w *serviceWorker) rollbackArrived(ds *sv1.DesiredState) bool {
	if w.inbox == nil {
		return false
	}
	found := false
	for _, d := range w.inbox.peek() {
		next, h, err := w.trust.OpenDesired(d.raw, w.name, w.clock.Now())
		if err == nil && h.Fence.Compare(documentFence(ds)) > 0 && (rollingBack(next) || next.GetRolloutId() != ds.GetRolloutId()) {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	for _, d := range w.inbox.drain() {
		w.consider(d)
	}
	return w.pending != nil && w.pending != ds
}

func rolloutMoving(ds *sv1.DesiredState) bool {
	p := ds.GetPhase()
	return ds.GetRolloutId() != "" && (p == sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || p == sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED)
}

func rollingBack(ds *sv1.DesiredState) bool {
	p := ds.GetPhase()
	return ds.GetRolloutId() != "" && (p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK || p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)
}

// noteRun keeps the latest run of each hook and point of the current
// rollout for the status.
func (w *serviceWorker) noteRun(run *sv1.HookRun) {
	kept := w.hookRuns[:0:0]
	for _, r := range w.hookRuns {
		if r.GetRolloutId() == run.GetRolloutId() && !(r.GetHook() == run.GetHook() && r.GetPoint() == run.GetPoint()) {
			kept = append(kept, r)
		}
	}
	w.hookRuns = append(kept, proto.CloneOf(run))
	w.hookRunsSeq++
}

// hookHoldMessage is the status line of a node a pre-traffic hook keeps on
// the old backend.
func hookHoldMessage(h *sv1.HookRun, from string) string {
	msg := fmt.Sprintf("pre-traffic hook %s failed at generation %d (exit code %d", h.GetHook(), h.GetGeneration(), h.GetExitCode())
	if h.GetError() != "" {
		msg += ": " + h.GetError()
	}
	msg += ")"
	// The output's lines (and a progress bar's carriage returns) are
	// joined: the message is a column of rollout status's node table.
	if out := strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, h.GetOutput())), " "); out != "" {
		if len(out) > 200 {
			cut := len(out) - 200
			for cut < len(out) && !utf8.RuneStart(out[cut]) {
				cut++ // the status is a protobuf string: UTF-8 only
			}
			out = "…" + out[cut:]
		}
		msg += "; output: " + out
	}
	if from != "" {
		msg += "; node kept on " + from
	}
	return msg
}
