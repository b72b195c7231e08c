package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/switchyard/switchyard/agent/hooks"
	"github.com/switchyard/switchyard/internal/clock"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// rolloutDoc is a progressing rollout document naming agent hooks.
func rolloutDoc(gen uint64, green uint32, phase sv1.RolloutPhase, h *sv1.AgentHooks) *sv1.DesiredState {
	return &sv1.DesiredState{Service: "web", Generation: gen, RolloutId: "r1", Phase: phase, FromBackend: "blue", ToBackend: "green",
		DefaultWeights: map[string]uint32{"blue": 100 - green, "green": green}, AgentHooks: h}
}

// countingHook is a hook command that appends its point and generation to
// a file and exits with code.
func countingHook(t *testing.T, dir, name string, code int) (HookConfig, string) {
	t.Helper()
	out := filepath.Join(dir, name+".runs")
	return HookConfig{Command: []string{"/bin/sh", "-c", `echo "$SWITCHYARD_POINT $SWITCHYARD_GENERATION" >> "$0"; echo "warming failed: cache unreachable" >&2; exit ` + fmt.Sprint(code), out},
		Timeout: 5 * time.Second}, out
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(string(b), " ", "_"))
}

func TestAgent_FailingPreTrafficHookKeepsNodeOnOldBackend(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	dir := t.TempDir()
	warm, runs := countingHook(t, dir, "warm", 3)
	cfg.Hooks = map[string]HookConfig{"warm-green": warm}
	drv := newFakeDriver()
	statuses := b.statuses(t, cfg.Node)
	a := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	b.put(t, defaults(3, map[string]uint32{"blue": 100, "green": 0}))
	a.waitApplied(t, "web", 3)

	hooks := &sv1.AgentHooks{PreTraffic: []string{"warm-green"}}
	b.put(t, rolloutDoc(4, 20, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, hooks))
	if w := a.waitApplied(t, "web", 4); w["green"] != 0 || w["blue"] != 100 {
		t.Fatalf("weights with a failed pre-traffic hook %v, want all on blue", w)
	}
	st := waitStatus(t, statuses, "hook failure in status", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 4 && len(s.GetHookRuns()) == 1
	})
	s := serviceStatus(st, "web")
	run := s.GetHookRuns()[0]
	if run.GetExitCode() != 3 || run.GetState() != "failed" || !strings.Contains(run.GetOutput(), "cache unreachable") {
		t.Fatalf("hook run %v", run)
	}
	if !strings.Contains(s.GetMessage(), "pre-traffic hook warm-green failed at generation 4 (exit code 3") || !strings.Contains(s.GetMessage(), "node kept on blue") {
		t.Fatalf("status message %q", s.GetMessage())
	}
	if got := st.GetHooks(); len(got) != 1 || got[0] != "warm-green" {
		t.Fatalf("status hook names %v", got)
	}
	// A restart finds the run journaled and does not run it again.
	a.stop(t)
	a = startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	a.waitApplied(t, "web", 4)
	b.put(t, rolloutDoc(5, 20, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, hooks))
	a.waitApplied(t, "web", 5)
	if got := lines(t, runs); strings.Join(got, ",") != "preTraffic_4,preTraffic_5" {
		t.Fatalf("hook runs %v, want one per generation", got)
	}
	if n := a.metric(t, "switchyard_agent_hook_runs_total", "point", "preTraffic", "outcome", "failed"); n != 1 {
		t.Fatalf("failed runs metric after restart = %v, want 1 (generation 5)", n)
	}
}

func TestAgent_HooksRunBeforeTrafficAfterStepAndOnRollback(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	dir := t.TempDir()
	pre, preRuns := countingHook(t, dir, "pre", 0)
	post, postRuns := countingHook(t, dir, "post", 0)
	back, backRuns := countingHook(t, dir, "back", 0)
	cfg.Hooks = map[string]HookConfig{"pre": pre, "post": post, "back": back}
	drv := newFakeDriver()
	a := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	hooks := &sv1.AgentHooks{PreTraffic: []string{"pre"}, PostTraffic: []string{"post"}, Rollback: []string{"back"}}
	b.put(t, rolloutDoc(4, 20, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, hooks))
	if w := a.waitApplied(t, "web", 4); w["green"] != 20 {
		t.Fatalf("weights %v", w)
	}
	b.put(t, rolloutDoc(5, 50, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, hooks))
	a.waitApplied(t, "web", 5)
	b.put(t, rolloutDoc(6, 0, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, hooks))
	a.waitApplied(t, "web", 6)
	waitFor(t, 5*time.Second, "rollback hook", func() error {
		if len(lines(t, backRuns)) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	if got := strings.Join(lines(t, preRuns), ","); got != "preTraffic_4" {
		t.Errorf("pre-traffic runs %s, want once, before green first had weight", got)
	}
	if got := strings.Join(lines(t, postRuns), ","); got != "postTraffic_4,postTraffic_5" {
		t.Errorf("post-traffic runs %s, want after each step that raised green", got)
	}
	if got := strings.Join(lines(t, backRuns), ","); got != "rollback_6" {
		t.Errorf("rollback runs %s", got)
	}
}

func TestAgent_ConfigRefusesBadHooks(t *testing.T) {
	cases := []struct {
		name string
		hook HookConfig
		says string
	}{
		{"no command", HookConfig{}, "hooks.warm.command: required"},
		{"missing program", HookConfig{Command: []string{"/nonexistent/warm"}}, `hooks.warm.command[0]: "/nonexistent/warm" is not an executable file`},
		{"not on path", HookConfig{Command: []string{"no-such-program-anywhere"}}, "is not found on PATH"},
		{"timeout", HookConfig{Command: []string{"/bin/true"}, Timeout: 2 * time.Hour}, "hooks.warm.timeout: 2h0m0s is out of range, want 1s..1h0m0s"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t, "nats://127.0.0.1:1")
			cfg.Hooks = map[string]HookConfig{"warm": c.hook}
			cfg.setDefaults()
			err := cfg.Validate()
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("err = %v, want %q", err, c.says)
			}
		})
	}
}

// A hook's program named on PATH is resolved when the config is taken, as
// it was checked: what a hook runs does not change with PATH afterwards.
func TestAgent_HookProgramOnPathIsResolvedAtLoad(t *testing.T) {
	dir := t.TempDir()
	prog := filepath.Join(dir, "warm-cache")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	cfg := testConfig(t, "nats://127.0.0.1:1")
	cfg.Hooks = map[string]HookConfig{"warm": {Command: []string{"warm-cache", "--all"}, Timeout: time.Second}}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	table := cfg.hookTable()
	t.Setenv("PATH", "/nonexistent")
	if got := table["warm"].Command; len(got) != 2 || got[0] != prog || got[1] != "--all" {
		t.Fatalf("hook runs %q, want %q resolved at load", got, []string{prog, "--all"})
	}
	if cfg.Hooks["warm"].Command[0] != "warm-cache" {
		t.Fatal("resolving changed the config as written")
	}
}

// The hold message quotes the end of the hook's output in the status, a
// protobuf string: its cut must not split a character.
func TestAgent_HookHoldMessageIsValidUTF8(t *testing.T) {
	run := &sv1.HookRun{Hook: "warm-green", Generation: 7, ExitCode: 3, Output: strings.Repeat("é", 150) + "!"}
	msg := hookHoldMessage(run, "blue")
	if !utf8.ValidString(msg) {
		t.Fatalf("hold message %q is not UTF-8", msg)
	}
	if !strings.HasSuffix(msg, "éé!; node kept on blue") {
		t.Fatalf("hold message %q", msg)
	}
}

// A hook's output has many lines, often with CRLF or a progress bar's
// carriage returns: the status message, a column of rollout status's node
// table, carries it on one line.
func TestAgent_HookHoldMessageIsOneLine(t *testing.T) {
	run := &sv1.HookRun{Hook: "warm-green", Generation: 7, ExitCode: 3, Error: "exit status 3",
		Output: "warming 1000 keys\r\n 10%\r 55%\r\n\terror: cache node unreachable\n"}
	msg := hookHoldMessage(run, "blue")
	want := "pre-traffic hook warm-green failed at generation 7 (exit code 3: exit status 3); output: warming 1000 keys 10% 55% error: cache node unreachable; node kept on blue"
	if msg != want {
		t.Fatalf("hold message %q, want %q", msg, want)
	}
}

// TestAgent_RollbackArrivingDuringPreTrafficHookIsAppliedInstead: a
// rollback that arrives while a pre-traffic hook runs is applied once the
// hook ends; the document the hook ran for, which the rollback superseded,
// never gives the new backend weight and its post-traffic hooks never run.
// A newer step of the same rollout arriving meanwhile is applied after the
// one the hook ran for, without running the hook again.
func TestAgent_RollbackArrivingDuringPreTrafficHookIsAppliedInstead(t *testing.T) {
	t.Run("rollback", func(t *testing.T) {
		drv, smoke, flush, warm := hookRace(t, rolloutDoc(5, 0, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, nil))
		applies, _ := drv.recorded()
		for _, a := range applies {
			if a["green"] > 0 {
				t.Fatalf("the proxy was given %v after the rollback arrived (all applies: %v)", a, applies)
			}
		}
		if len(smoke) != 0 {
			t.Errorf("post-traffic hooks ran for the superseded generation: %v", smoke)
		}
		if got := strings.Join(flush, ","); got != "rollback_5" {
			t.Errorf("rollback hook runs %q, want rollback_5", got)
		}
		if warm != 1 {
			t.Errorf("pre-traffic hook ran %d times, want 1", warm)
		}
	})
	t.Run("next step", func(t *testing.T) {
		drv, smoke, flush, warm := hookRace(t, rolloutDoc(5, 50, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, nil))
		applies, _ := drv.recorded()
		if len(applies) != 3 || applies[1]["green"] != 20 || applies[2]["green"] != 50 {
			t.Fatalf("applies %v, want generation 4's 20 then 5's 50", applies)
		}
		if got := strings.Join(smoke, ","); got != "postTraffic_4,postTraffic_5" {
			t.Errorf("post-traffic runs %q", got)
		}
		if len(flush) != 0 || warm != 1 {
			t.Errorf("rollback runs %v, pre-traffic runs %d; want none and 1", flush, warm)
		}
	})
}

// hookRace applies generation 4 of a rollout whose pre-traffic hook runs
// until next (its hooks filled in) reached the service's inbox, then lets
// the service take its inbox as its goroutine would. It returns the driver,
// the post-traffic and rollback hooks' runs and how often the pre-traffic
// hook started.
func hookRace(t *testing.T, next *sv1.DesiredState) (*fakeDriver, []string, []string, int) {
	t.Helper()
	dir := t.TempDir()
	started, release := filepath.Join(dir, "started"), filepath.Join(dir, "release")
	warm := hooks.Hook{Command: []string{"/bin/sh", "-c", `echo run >> "$0"; while [ ! -e "$1" ]; do sleep 0.02; done`, started, release},
		Timeout: 10 * time.Second}
	smoke, smokeRuns := countingHook(t, dir, "smoke", 0)
	flush, flushRuns := countingHook(t, dir, "flush", 0)
	drv := newFakeDriver()
	fc := clock.NewFake(time.Now())
	w := stageWorker(t, fc, &clockedDriver{fakeDriver: drv, clock: fc}, &recordingStore{}, func(*sv1.ServiceStatus) {})
	w.clock = clock.Real{}
	w.hooks = &hooks.Runner{Hooks: map[string]hooks.Hook{"warm-green": warm,
		"smoke-green": {Command: smoke.Command, Timeout: smoke.Timeout}, "flush-green": {Command: flush.Command, Timeout: flush.Timeout}},
		Journal: &hooks.MemJournal{}, Log: slog.New(slog.DiscardHandler), Now: time.Now}
	named := &sv1.AgentHooks{PreTraffic: []string{"warm-green"}, PostTraffic: []string{"smoke-green"}, Rollback: []string{"flush-green"}}
	next.AgentHooks = named
	deliver := func(ds *sv1.DesiredState) delivery {
		raw, err := testSigner.SealDesired(ds, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return delivery{raw: raw, at: time.Now()}
	}
	ctx := context.Background()
	if !w.consider(deliver(rolloutDoc(3, 0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, named))) {
		t.Fatal("generation 3 not taken")
	}
	if err := w.step(ctx); err != nil {
		t.Fatal(err)
	}
	if !w.consider(deliver(rolloutDoc(4, 20, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, named))) {
		t.Fatal("generation 4 not taken")
	}
	// The next document reaches the service's inbox while the hook runs,
	// as a push does; then the hook ends.
	done := make(chan struct{})
	go func() {
		defer close(done)
		waitFor(t, 10*time.Second, "pre-traffic hook started", func() error {
			_, err := os.Stat(started)
			return err
		})
		w.inbox.put(deliver(next))
		if err := os.WriteFile(release, nil, 0o600); err != nil {
			t.Error(err)
		}
	}()
	if err := w.step(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
	// What the service's goroutine does next with its inbox.
	for _, d := range w.inbox.drain() {
		if w.consider(d) {
			if err := w.step(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if g := w.applied.GetDesired().GetGeneration(); g != 5 {
		t.Fatalf("applied generation %d, want 5", g)
	}
	return drv, lines(t, smokeRuns), lines(t, flushRuns), len(lines(t, started))
}
