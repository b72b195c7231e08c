package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/agent/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// crashHelperEnv makes the test binary an agent that SIGKILLs itself at a
// chosen moment (see TestMain): a real crash of a real process, at the
// point of the apply path a test wants to look at.
const crashHelperEnv = "SWITCHYARD_AGENT_CRASH_HELPER"

// crashPlan is what the crash helper runs: an agent on node edge-1 (region
// eu) driving one HAProxy for service web, which kills itself right after
// the proxy accepted KillAfter.
type crashPlan struct {
	NATS      string            `json:"nats"`
	StateDir  string            `json:"stateDir"`
	Socket    string            `json:"socket"`
	KillAfter map[string]uint32 `json:"killAfter"`
	// LogSocket and Guard, when set, turn the request log and the local
	// guard on (afterDisconnect 1s, window 2s).
	LogSocket string `json:"logSocket,omitempty"`
	Guard     bool   `json:"guard,omitempty"`
	// Hooks are the agent's hooks, name → command.
	Hooks map[string][]string `json:"hooks,omitempty"`
}

// crashingDriver is HAProxy's driver, except that the process dies the
// moment the proxy has taken killAfter.
type crashingDriver struct {
	*haproxy.Driver
	killAfter map[string]uint32
}

func (d *crashingDriver) Apply(ctx context.Context, w map[string]uint32) error {
	err := d.Driver.Apply(ctx, w)
	if err == nil && maps.Equal(w, d.killAfter) {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {}
	}
	return err
}

func runCrashHelper() int {
	var plan crashPlan
	if err := json.Unmarshal([]byte(os.Getenv(crashHelperEnv)), &plan); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	svc := ServiceConfig{Proxy: &haproxy.Section{Socket: plan.Socket, Backend: "web", Servers: map[string]string{"blue": "blue", "green": "green"},
		LogSocket: plan.LogSocket}}
	cfg := &Config{
		Node: "edge-1", Labels: map[string]string{"region": "eu"}, NATS: plan.NATS, StateDir: plan.StateDir,
		Heartbeat: maxHeartbeat, Resync: time.Hour, Trust: testTrust(), TelemetryInterval: 250 * time.Millisecond,
		Services: map[string]ServiceConfig{"web": svc},
	}
	for name, cmd := range plan.Hooks {
		if cfg.Hooks == nil {
			cfg.Hooks = map[string]HookConfig{}
		}
		cfg.Hooks[name] = HookConfig{Command: cmd, Timeout: 10 * time.Second}
	}
	if plan.Guard {
		cfg.TelemetryInterval = 100 * time.Millisecond
		cfg.LocalGuard = LocalGuardConfig{AfterDisconnect: new(time.Second), Window: 2 * time.Second}
	}
	a, err := New(cfg, Options{DriverFactory: func(_ string, svc ServiceConfig) (driver.Driver, error) {
		d, err := haproxyDriver("web", svc)
		if err != nil {
			return nil, err
		}
		return &crashingDriver{Driver: d.(*haproxy.Driver), killAfter: plan.KillAfter}, nil
	}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if err := a.Run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	return 0
}

// startCrashingAgent runs the crash helper; the returned channel is closed
// when it ended, and *ended says how.
func startCrashingAgent(t *testing.T, plan crashPlan) (done <-chan struct{}, ended *error) {
	t.Helper()
	raw, err := json.Marshal(plan)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+string(raw))
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var err2 error
	go func() {
		err2 = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return exited, &err2
}

// waitKilled waits for the crash helper to have died of its SIGKILL.
func waitKilled(t *testing.T, done <-chan struct{}, ended *error) {
	t.Helper()
	select {
	case <-done:
		err := *ended
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("the crashing agent ended with %v, want killed by SIGKILL", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the crashing agent did not kill itself within 15s")
	}
}

// TestCrash_KilledBetweenProxyAndSaveKeepsTheNewWeights: the agent is
// SIGKILLed after HAProxy took generation 2 (green) and before it saved
// it. Started again with the bus down, it must not move the node back to
// blue, which its saved state (generation 1) says: HAProxy does what the
// newer, verified document says, and the node keeps it and reports it.
func TestCrash_KilledBetweenProxyAndSaveKeepsTheNewWeights(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	statuses := b.statuses(t, "edge-1")
	b.put(t, progressing(1, allBlue))
	done, ended := startCrashingAgent(t, crashPlan{NATS: b.url, StateDir: cfg.StateDir, Socket: lp.proc.SocketPath(), KillAfter: allGreen})
	waitStatus(t, statuses, "generation 1 applied and read back", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 1 && s.GetObservedMatches()
	})
	b.put(t, progressing(2, allGreen))
	waitKilled(t, done, ended)
	if got := lp.weights(t); !maps.Equal(got, allGreen) {
		t.Fatalf("HAProxy has %v after the crash, want %v (the crash came after the proxy took generation 2)", got, allGreen)
	}

	b.stopServer()
	ra := startLiveAgent(t, cfg)
	waitFor(t, 10*time.Second, "the restarted agent read HAProxy back", func() error {
		if s := serviceStatus(ra.Status(), "web"); !s.GetObservedMatches() {
			return fmt.Errorf("status %v", s)
		}
		return nil
	})
	if got := lp.weights(t); !maps.Equal(got, allGreen) {
		t.Errorf("the restarted agent set HAProxy to %v, want %v: it moved the node back to the generation it had saved", got, allGreen)
	}
	s := serviceStatus(ra.Status(), "web")
	if s.GetAppliedGeneration() != 2 || !maps.Equal(s.GetWeights(), allGreen) {
		t.Errorf("status says generation %d with %v, want generation 2 with %v", s.GetAppliedGeneration(), s.GetWeights(), allGreen)
	}
	ra.stop(t)
	st, err := state.Open(cfg.StateDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if saved, err := st.Load("web"); err != nil || saved.GetDesired().GetGeneration() != 2 {
		t.Errorf("saved state after the restart: generation %d, %v; want 2", saved.GetDesired().GetGeneration(), err)
	}
	if left, err := st.LoadApplying("web"); err != nil || left != nil {
		t.Errorf("state being applied left after the restart settled it: %v, %v", left, err)
	}
}

// TestCrash_KilledBetweenProxyAndSaveThenHostRebooted: the same crash, but
// HAProxy restarts from its config (blue) before the agent is back, as
// after a reboot. The proxy does not have generation 2, so the agent goes
// by its saved state (generation 1) until the bus brings generation 2
// again, which it applies: it never reports generation 2 while HAProxy
// serves blue.
func TestCrash_KilledBetweenProxyAndSaveThenHostRebooted(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	statuses := b.statuses(t, "edge-1")
	b.put(t, progressing(1, allBlue))
	done, ended := startCrashingAgent(t, crashPlan{NATS: b.url, StateDir: cfg.StateDir, Socket: lp.proc.SocketPath(), KillAfter: allGreen})
	waitStatus(t, statuses, "generation 1 applied and read back", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 1 && s.GetObservedMatches()
	})
	b.put(t, progressing(2, allGreen))
	waitKilled(t, done, ended)
	if err := lp.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := lp.proc.Restart(rctx); err != nil {
		t.Fatal(err)
	}
	if got := lp.weights(t); !maps.Equal(got, allBlue) {
		t.Fatalf("HAProxy restarted from its config with %v, want %v", got, allBlue)
	}

	ra := startLiveAgent(t, cfg)
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 10*time.Second, allGreen)
	waitStatus(t, statuses, "generation 2 applied and read back", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		if s.GetAppliedGeneration() == 2 && s.GetObservedMatches() && !maps.Equal(s.GetObservedWeights(), allGreen) {
			t.Errorf("status claims generation 2 read back with %v", s.GetObservedWeights())
		}
		return s.GetAppliedGeneration() == 2 && s.GetObservedMatches()
	})
}

// TestCrash_KilledBetweenGuardMoveAndSaveKeepsTheOldBackend: cut off from
// the bus with green failing, the local guard moves the node to blue and
// the agent is SIGKILLed before it saved that. Started again (the bus
// still down), it must keep the node on blue and say the guard moved it,
// not put half of the traffic back on the failing green until the guard
// judges it again.
func TestCrash_KilledBetweenGuardMoveAndSaveKeepsTheOldBackend(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, true)
	lp.green.errEvery.Store(2) // half of green's answers are 503
	cfg := liveConfig(t, b.url, lp)
	cfg.TelemetryInterval = 100 * time.Millisecond
	cfg.LocalGuard = LocalGuardConfig{AfterDisconnect: new(time.Second), Window: 2 * time.Second}
	statuses := b.statuses(t, "edge-1")
	// Generation 1 is not all blue, which the helper dies after setting:
	// it gives the rollout its direction (blue to green).
	b.put(t, progressing(1, map[string]uint32{"blue": 90, "green": 10}))
	done, ended := startCrashingAgent(t, crashPlan{NATS: b.url, StateDir: cfg.StateDir, Socket: lp.proc.SocketPath(),
		KillAfter: allBlue, LogSocket: lp.logSocket, Guard: true})
	waitStatus(t, statuses, "generation 1 applied and read back", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 1 && s.GetObservedMatches()
	})
	half := map[string]uint32{"blue": 50, "green": 50}
	b.put(t, progressing(2, half))
	waitStatus(t, statuses, "generation 2 applied and read back", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 2 && s.GetObservedMatches()
	})
	l := startLoad(t, lp.frontend, 4, 0)
	defer l.stop()
	b.stopServer()
	waitKilled(t, done, ended)
	if got := lp.weights(t); !maps.Equal(got, allBlue) {
		t.Fatalf("HAProxy has %v after the crash, want the guard's %v", got, allBlue)
	}

	ra := startLiveAgent(t, cfg)
	waitFor(t, 10*time.Second, "the restarted agent read HAProxy back", func() error {
		if s := serviceStatus(ra.Status(), "web"); !s.GetObservedMatches() {
			return fmt.Errorf("status %v", s)
		}
		return nil
	})
	if got := lp.weights(t); !maps.Equal(got, allBlue) {
		t.Errorf("the restarted agent set HAProxy to %v, want the guard's %v: it put traffic back on the failing backend", got, allBlue)
	}
	s := serviceStatus(ra.Status(), "web")
	if s.GetAppliedGeneration() != 2 || !maps.Equal(s.GetWeights(), allBlue) || s.GetLocalRollback().GetTo() != "blue" {
		t.Errorf("status = %v; want generation 2 with %v and the guard's move to blue", s, allBlue)
	}
}

// TestCrash_KilledDuringPostTrafficHookSaysSoAfterRestart: the agent is
// SIGKILLed while a post-traffic hook runs (the hook kills it). Started
// again, it does not run the hook again, and its status lists the run as
// interrupted, as it lists the current rollout's runs, rather than
// listing none.
func TestCrash_KilledDuringPostTrafficHookSaysSoAfterRestart(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	die := []string{"/bin/sh", "-c", `echo "$SWITCHYARD_POINT $SWITCHYARD_GENERATION" >> "$0"; kill -KILL $PPID; sleep 5`, runs}
	warm, _ := countingHook(t, dir, "warm", 0)
	cfg.Hooks = map[string]HookConfig{"warm": warm, "die": {Command: die, Timeout: 10 * time.Second}}
	statuses := b.statuses(t, "edge-1")
	hooks := &sv1.AgentHooks{PreTraffic: []string{"warm"}, PostTraffic: []string{"die"}}
	done, ended := startCrashingAgent(t, crashPlan{NATS: b.url, StateDir: cfg.StateDir, Socket: lp.proc.SocketPath(),
		Hooks: map[string][]string{"warm": warm.Command, "die": die}})
	waitStatus(t, statuses, "the agent's first status", func(*sv1.AgentStatus) bool { return true })
	b.put(t, rolloutDoc(3, 20, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, hooks))
	waitKilled(t, done, ended)

	ra := startLiveAgent(t, cfg)
	if w := ra.waitApplied(t, "web", 3); w["green"] != 20 {
		t.Fatalf("weights %v after the restart, want green 20", w)
	}
	var s *sv1.ServiceStatus
	waitFor(t, 10*time.Second, "the restarted agent's status lists the hook runs", func() error {
		s = serviceStatus(ra.Status(), "web")
		if len(s.GetHookRuns()) != 2 {
			return fmt.Errorf("hook runs %v", s.GetHookRuns())
		}
		return nil
	})
	for _, r := range s.GetHookRuns() {
		switch r.GetHook() {
		case "warm":
			if r.GetState() != "succeeded" || r.GetPoint() != "preTraffic" || r.GetGeneration() != 3 {
				t.Errorf("pre-traffic run %v, want succeeded at generation 3", r)
			}
		case "die":
			if r.GetState() != "failed" || r.GetPoint() != "postTraffic" || !strings.Contains(r.GetError(), "interrupted") {
				t.Errorf("post-traffic run %v, want failed as interrupted", r)
			}
		}
	}
	if got := lines(t, runs); len(got) != 1 {
		t.Errorf("post-traffic hook ran %v, want once", got)
	}
}
