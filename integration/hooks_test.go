package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// webhookServer is a webhook receiver in the test process: it records every
// call by path and answers with accept's verdict.
type webhookServer struct {
	URL string

	mu     sync.Mutex
	calls  map[string][]map[string]any
	accept map[string]bool
	srv    *http.Server
}

func startWebhookServer(t *testing.T, ln net.Listener) *webhookServer {
	t.Helper()
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	}
	w := &webhookServer{URL: "http://" + ln.Addr().String(), calls: map[string][]map[string]any{}, accept: map[string]bool{}}
	w.srv = &http.Server{Handler: http.HandlerFunc(w.serve), ReadHeaderTimeout: 5 * time.Second}
	go w.srv.Serve(ln)
	t.Cleanup(func() { w.srv.Close() })
	return w
}

func (w *webhookServer) serve(rw http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	var body map[string]any
	if err := json.Unmarshal(b, &body); err != nil {
		body = map[string]any{"undecodable": string(b)}
	}
	body["idempotency_key"] = r.Header.Get("Idempotency-Key")
	w.mu.Lock()
	w.calls[r.URL.Path] = append(w.calls[r.URL.Path], body)
	ok := w.accept[r.URL.Path]
	w.mu.Unlock()
	if !ok {
		http.Error(rw, "load test still running", http.StatusPreconditionFailed)
		return
	}
	io.WriteString(rw, "go ahead")
}

func (w *webhookServer) setAccept(path string, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.accept[path] = ok
}

func (w *webhookServer) callsTo(path string) []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]map[string]any(nil), w.calls[path]...)
}

func historyText(v *sv1.RolloutView) string {
	var lines []string
	for _, e := range v.GetRollout().GetHistory() {
		lines = append(lines, e.GetMessage())
	}
	return strings.Join(lines, "\n")
}

const gatedCanary = `
version: v1
name: web-gated
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 30
hooks:
  webhooks:
    - name: load-test
      point: prePromotion
      url: %[1]s/gate
      timeout: 2s
      retries: 0
      recheck: 1s
    - name: announce
      point: postRollout
      url: %[1]s/done
`

// TestHooks_GatingPrePromotionWebhookHoldsTheRolloutUntilItAccepts: the
// gate refuses, so the rollout stays at its step with traffic split, and
// is asked again; once it accepts, the rollout is promoted and completes,
// and the post-rollout webhook hears of it once.
func TestHooks_GatingPrePromotionWebhookHoldsTheRolloutUntilItAccepts(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be})
	hook := startWebhookServer(t, nil)
	hook.setAccept("/done", true)

	if _, err := f.Apply(ctx, writeSpec(t, "gated", fmt.Sprintf(gatedCanary, hook.URL))); err != nil {
		t.Fatal(err)
	}
	// Refused at least twice (asked again after recheck), the rollout
	// waits at its only step with green at 30% on every node.
	view, err := f.WaitRollout(ctx, "web-gated", func(v *sv1.RolloutView) error {
		if n := len(hook.callsTo("/gate")); n < 2 {
			return fmt.Errorf("gate asked %d times", n)
		}
		if !strings.Contains(v.GetWaiting(), "webhook load-test at pre-promotion") {
			return fmt.Errorf("waiting for %q", v.GetWaiting())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r := view.GetRollout()
	if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || r.GetStep() != 0 {
		t.Fatalf("refused gate let the rollout move: %s step %d", r.GetPhase(), r.GetStep())
	}
	for _, n := range view.GetNodes() {
		if n.GetWeights()["green"] != 30 {
			t.Fatalf("node %s weights %v while the gate refuses, want green 30", n.GetNode(), n.GetWeights())
		}
	}
	st, err := f.Run(ctx, "rollout", "status", "web-gated")
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("status: %v %+v", err, st)
	}
	for _, want := range []string{"Waiting for: webhook load-test at pre-promotion", "Webhooks:", "load-test  pre-promotion  1     failed   1         412 Precondition Failed: load test still running"} {
		if !strings.Contains(st.Stdout, want) {
			t.Fatalf("rollout status lacks %q:\n%s", want, st.Stdout)
		}
	}
	body := hook.callsTo("/gate")[0]
	if body["rollout"] != "web-gated" || body["service"] != "web" || body["point"] != "prePromotion" || body["phase"] != "progressing" ||
		body["idempotency_key"] != body["id"] || body["from"] != "blue" || body["to"] != "green" {
		t.Fatalf("gate body %v", body)
	}

	hook.setAccept("/gate", true)
	if _, err := f.WaitRollout(ctx, "web-gated", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	// The post-rollout webhook is due once the rollout completed.
	view, err = f.WaitRollout(ctx, "web-gated", func(v *sv1.RolloutView) error {
		if !strings.Contains(historyText(v), "webhook announce at post-rollout succeeded") {
			return errors.New("post-rollout webhook outcome not recorded yet")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	hist := historyText(view)
	for _, want := range []string{
		"webhook load-test at pre-promotion failed after 1 attempt(s): 412 Precondition Failed: load test still running",
		"webhook load-test at pre-promotion succeeded after 1 attempt(s): 200 OK: go ahead",
		"promoted", "completed",
		"webhook announce at post-rollout succeeded",
	} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}
	if err := harness.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
		if n := len(hook.callsTo("/done")); n != 1 {
			return fmt.Errorf("post-rollout webhook called %d times", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

const rollbackHooked = `
version: v1
name: web-hooked-bad
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 40
      - pause: {duration: 10m}
analysis:
  window: 3s
  minRequests: 20
hooks:
  webhooks:
    - name: page-oncall
      point: rollback
      url: %s/rollback
      timeout: 1s
      retries: 10
`

// TestHooks_RollbackWebhookOnceWithEvidenceAcrossLeaderKill: guardrails
// roll back, the leader commits the decision and cannot reach the webhook
// (nothing listens yet); it is SIGKILLed before any call arrives. The next
// leader makes the due call: the receiver gets it exactly once, with the
// guardrail's evidence, and the outcome is in the rollout's history.
func TestHooks_RollbackWebhookOnceWithEvidenceAcrossLeaderKill(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	cp := startControlPlane(t, ctx)
	c, f := cp.cluster, cp.fleet
	stop := load(ctx, t, f, 60)
	defer stop()

	// Reserve an address: the webhook has no listener until the leader is
	// dead. The harness's port set keeps it from every fleet of a test
	// running beside this one.
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	if _, err := f.Apply(ctx, writeSpec(t, "hooked-bad", fmt.Sprintf(rollbackHooked, "http://"+addr))); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-hooked-bad", atStep(f, 1)); err != nil {
		t.Fatal(err)
	}
	setGreen(t, f, 0.3)
	if _, err := f.WaitRollout(ctx, "web-hooked-bad", func(v *sv1.RolloutView) error {
		if p := v.GetRollout().GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK && p != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
			return fmt.Errorf("phase %s", p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen again on the webhook's address: %v", err)
	}
	hook := startWebhookServer(t, ln)
	hook.setAccept("/rollback", true)
	if _, err := c.WaitLeader(ctx, leader); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, "web-hooked-bad", func(v *sv1.RolloutView) error {
		if !strings.Contains(historyText(v), "webhook page-oncall at rollback succeeded") {
			return errors.New("rollback webhook outcome not recorded yet")
		}
		return f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)(v)
	})
	if err != nil {
		t.Fatal(err)
	}
	// Recorded, so no leader calls it again: still once over the next
	// twenty leader ticks.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if n := len(hook.callsTo("/rollback")); n > 1 {
			t.Fatalf("rollback webhook called %d times", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	calls := hook.callsTo("/rollback")
	if len(calls) != 1 {
		t.Fatalf("rollback webhook called %d times, want 1", len(calls))
	}
	body := calls[0]
	ev, _ := body["evidence"].(map[string]any)
	// The sequential judge's alarm carries its statistic; the windows judge
	// carries the failing windows. Either is the evidence.
	seq, _ := ev["sequential"].(map[string]any)
	windows, _ := ev["windows"].([]any)
	if body["phase"] != "rolling-back" && body["phase"] != "rolled-back" || ev["guardrail"] != "error_rate" || (seq["statistic"] == nil && len(windows) < 2) {
		t.Fatalf("rollback body %v", body)
	}
	if !strings.Contains(fmt.Sprint(body["reason"]), "guardrail error_rate breached") {
		t.Fatalf("rollback reason %v", body["reason"])
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatal(err)
	}
	t.Logf("history:\n%s", historyText(view))
}

const preTrafficCanary = `
version: v1
name: web-warm
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 50
      - pause: {duration: 10m}
hooks:
  agent:
    preTraffic: [warm-green]
`

// hookScript writes an executable script; the agent runs it without a
// shell of its own.
func hookScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHooks_FailingPreTrafficHookKeepsThatNodeOnBlue: edge-2's warm-up
// fails; it stays on blue while the others take their step, and the
// reason (exit code, output) is in `rollout status`. A spec naming a hook
// the agents lack is refused, naming the field and the nodes.
func TestHooks_FailingPreTrafficHookKeepsThatNodeOnBlue(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, be := binaries(t)
	dir := t.TempDir()
	ok := hookScript(t, dir, "warm-ok", "echo warmed\n")
	bad := hookScript(t, dir, "warm-bad", "echo 'cache node unreachable' >&2\nexit 7\n")
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be,
		Hooks: func(i int) map[string]harness.AgentHook {
			cmd := ok
			if i == 1 {
				cmd = bad
			}
			return map[string]harness.AgentHook{"warm-green": {Command: []string{cmd}, Timeout: "10s"}}
		}})

	// Bad input first: a hook no agent has.
	missing := strings.Replace(strings.Replace(preTrafficCanary, "warm-green]", "warm-green, flush-cdn]", 1), "web-warm", "web-missing", 1)
	plan, err := f.Run(ctx, "rollout", "plan", "-f", writeSpec(t, "missing-plan", missing))
	if err != nil || plan.ExitCode != 0 {
		t.Fatalf("plan: %v %+v", err, plan)
	}
	if !strings.Contains(plan.Stdout, "agent hook flush-cdn is not in the agent config of edge-1, edge-2, edge-3: apply would be refused") ||
		strings.Contains(plan.Stdout, "agent hook warm-green is not") {
		t.Fatalf("plan does not say which nodes lack which hook:\n%s", plan.Stdout)
	}
	res, err := f.Run(ctx, "rollout", "apply", "-f", writeSpec(t, "missing", missing))
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode == 0 || !strings.Contains(res.Stderr+res.Stdout, `spec.hooks.agent.preTraffic[1]: hook "flush-cdn" is not in the agent config of node(s) edge-1, edge-2, edge-3`) {
		t.Fatalf("apply naming a missing hook: exit %d\n%s%s", res.ExitCode, res.Stdout, res.Stderr)
	}

	if _, err := f.Apply(ctx, writeSpec(t, "warm", preTrafficCanary)); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, "web-warm", func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 {
			return fmt.Errorf("at step %d", v.GetRollout().GetStep()+1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range view.GetNodes() {
		want := uint32(50)
		if n.GetNode() == "edge-2" {
			want = 0
		}
		if n.GetWeights()["green"] != want {
			t.Fatalf("node %s weights %v, want green %d", n.GetNode(), n.GetWeights(), want)
		}
	}
	if err := f.WaitServing(ctx, 1, harness.Blue, samples); err != nil {
		t.Fatal(err)
	}
	if got := f.Sample(ctx, 0, 40); got[harness.Green] == 0 {
		t.Fatalf("edge-1 sends nothing to green: %v", got)
	}
	st, err := f.Run(ctx, "rollout", "status", "web-warm")
	if err != nil || st.ExitCode != 0 {
		t.Fatalf("status: %v %+v", err, st)
	}
	for _, want := range []string{"pre-traffic hook warm-green failed at generation", "exit code 7", "cache node unreachable", "node kept on blue",
		"Converged:   2/3 live nodes", "Held:        edge-2 (applied generation", "once fixed, switchyard rollout retry web-warm runs it again)"} {
		if !strings.Contains(st.Stdout, want) {
			t.Fatalf("rollout status lacks %q:\n%s", want, st.Stdout)
		}
	}
	fl, err := f.Run(ctx, "fleet", "status")
	if err != nil || fl.ExitCode != 0 || !strings.Contains(fl.Stdout, "2/3 live nodes converged, held by a failed pre-traffic hook: edge-2") {
		t.Fatalf("fleet status does not name the held node: %v %+v", err, fl)
	}

	// Promoted, edge-2's hook runs again for the generation that gives it
	// all of green, fails again, and the node stays on blue: the rollout
	// completes without it, and says so instead of "green serves every
	// wave".
	if res, err := f.Run(ctx, "rollout", "promote", "--full", "web-warm"); err != nil || res.ExitCode != 0 {
		t.Fatalf("promote: %v %+v", err, res)
	}
	view, err = f.WaitRollout(ctx, "web-warm", func(v *sv1.RolloutView) error {
		if p := v.GetRollout().GetPhase(); p != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
			return fmt.Errorf("phase %v", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h := view.GetRollout().GetHistory()
	if last := h[len(h)-1].GetMessage(); last != "completed: green serves every wave but on edge-2, kept on blue by a failed pre-traffic hook" {
		t.Fatalf("completion: %q", last)
	}
	if view.GetConverged() != 2 || !slices.Equal(view.GetHeld(), []string{"edge-2"}) {
		t.Fatalf("completed rollout: converged %d, held %v; want 2, [edge-2]", view.GetConverged(), view.GetHeld())
	}
	if err := f.WaitServing(ctx, 1, harness.Blue, samples); err != nil {
		t.Fatal(err)
	}

	// The cache node is fixed. No later generation of web-warm comes, and
	// a new rollout from blue is refused (the service serves green): the
	// operator retries the rollout. edge-2's hook runs again, passes, and
	// edge-2 takes green; the others have green already, move nothing and
	// run no hook.
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho warmed\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	completedGen := view.GetRollout().GetGeneration()
	if res, err := f.Run(ctx, "rollout", "retry", "web-warm", "--reason", "cache node fixed", "--wait"); err != nil || res.ExitCode != 0 {
		t.Fatalf("retry: %v %+v", err, res)
	}
	view, err = f.WaitRollout(ctx, "web-warm", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatal(err)
	}
	if len(view.GetHeld()) != 0 || view.GetRollout().GetGeneration() <= completedGen {
		t.Fatalf("after the retry: held %v, generation %d (completed at %d)", view.GetHeld(), view.GetRollout().GetGeneration(), completedGen)
	}
	h = view.GetRollout().GetHistory()
	if last := h[len(h)-1].GetMessage(); !strings.HasPrefix(last, "retried: generation ") || !strings.HasSuffix(last, "run it again; reason: cache node fixed") {
		t.Fatalf("the retry's history line: %q", last)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	// edge-2 ran the hook again for the retry's generation, and it passed;
	// the others ran none for it.
	for _, n := range view.GetNodes() {
		var ran []string
		for _, r := range n.GetHookRuns() {
			if r.GetPoint() == "preTraffic" && r.GetGeneration() == view.GetRollout().GetGeneration() {
				ran = append(ran, r.GetState())
			}
		}
		want := []string{}
		if n.GetNode() == "edge-2" {
			want = []string{"succeeded"}
		}
		if !slices.Equal(ran, want) && !(len(ran) == 0 && len(want) == 0) {
			t.Fatalf("%s's pre-traffic runs for the retry's generation: %v, want %v", n.GetNode(), ran, want)
		}
	}
}

const slowHookCanary = `
version: v1
name: web-slow-warm
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 50
      - pause: {duration: 10m}
hooks:
  agent:
    preTraffic: [warm-green]
`

// TestHooks_AgentKilledMidHookDoesNotRunItAgain: the agent is SIGKILLed
// while its pre-traffic hook runs; restarted, it finds the run in its
// journal, does not start the hook again, keeps the node on blue and says
// why.
func TestHooks_AgentKilledMidHookDoesNotRunItAgain(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, be := binaries(t)
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	// exec: the sleeping process is the hook itself, so it dies with the
	// agent instead of outliving the test.
	slow := hookScript(t, dir, "warm-slow", fmt.Sprintf("echo run >> %q\nexec sleep 120\n", runs))
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 1, Service: "web", Switchyard: sy, Backend: be,
		Hooks: func(int) map[string]harness.AgentHook {
			return map[string]harness.AgentHook{"warm-green": {Command: []string{slow}, Timeout: "5m"}}
		}})
	if _, err := f.Apply(ctx, writeSpec(t, "slow", slowHookCanary)); err != nil {
		t.Fatal(err)
	}
	countRuns := func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "run\n")
	}
	if err := harness.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
		if countRuns() != 1 {
			return errors.New("hook not started")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := f.KillAgent(0); err != nil {
		t.Fatal(err)
	}
	if err := f.StartAgent(ctx, 0); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, "web-slow-warm", func(v *sv1.RolloutView) error {
		// Held on blue by its interrupted hook: it took the generation,
		// but does not serve it, so it is named, not counted converged.
		if v.GetConverged() != 0 || !slices.Equal(v.GetHeld(), []string{"edge-1"}) || len(v.GetNodes()) != 1 ||
			!strings.Contains(v.GetNodes()[0].GetMessage(), "interrupted") {
			return fmt.Errorf("nodes %s", harness.NodeSummary(v))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := countRuns(); n != 1 {
		t.Fatalf("hook ran %d times, want 1", n)
	}
	if w := view.GetNodes()[0].GetWeights(); w["green"] != 0 || w["blue"] != 100 {
		t.Fatalf("weights after an interrupted pre-traffic hook %v, want blue only", w)
	}
	if err := f.WaitServing(ctx, 0, harness.Blue, samples); err != nil {
		t.Fatal(err)
	}
}
