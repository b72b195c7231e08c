package hooks

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func runner(t *testing.T, hooks map[string]Hook) (*Runner, *MemJournal) {
	t.Helper()
	j := &MemJournal{}
	return &Runner{Hooks: hooks, Journal: j, Log: slog.New(slog.DiscardHandler), Now: time.Now}, j
}

func req(hook string, gen uint64) Request {
	return Request{Service: "web", Node: "n1", Hook: hook, Point: PreTraffic, RolloutID: "r1", Generation: gen, From: "blue", To: "green"}
}

func TestHooks_RunSucceedsWithEnvAndRunsOncePerGeneration(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "runs")
	r, _ := runner(t, map[string]Hook{"warm": {Command: []string{"/bin/sh", "-c", `echo "$SWITCHYARD_ROLLOUT $SWITCHYARD_GENERATION $SWITCHYARD_POINT $SWITCHYARD_TO" >> "$0"`, out}, Timeout: 5 * time.Second}})
	for range 3 {
		run := r.Run(context.Background(), req("warm", 7))
		if run.GetState() != StateSucceeded || run.GetExitCode() != 0 {
			t.Fatalf("run %v", run)
		}
	}
	r.Run(context.Background(), req("warm", 8))
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); got != "r1 7 preTraffic green\nr1 8 preTraffic green\n" {
		t.Fatalf("hook ran as %q, want once per generation", got)
	}
}

func TestHooks_FailureKeepsExitCodeAndOutputTail(t *testing.T) {
	r, _ := runner(t, map[string]Hook{"bad": {Command: []string{"/bin/sh", "-c", "head -c 5000 /dev/zero | tr '\\0' x; echo; echo cache cold >&2; exit 3"}, Timeout: 5 * time.Second}})
	run := r.Run(context.Background(), req("bad", 1))
	if run.GetState() != StateFailed || run.GetExitCode() != 3 || run.GetError() != "exit status 3" {
		t.Fatalf("run %v", run)
	}
	if !strings.HasSuffix(run.GetOutput(), "cache cold\n") || len(run.GetOutput()) > OutputTail+len("…") || !strings.HasPrefix(run.GetOutput(), "…") {
		t.Fatalf("output tail %q (%d bytes)", run.GetOutput(), len(run.GetOutput()))
	}
}

func TestHooks_TimeoutKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	// The shell starts a child that would outlive a kill of the shell alone.
	r, _ := runner(t, map[string]Hook{"slow": {Command: []string{"/bin/sh", "-c", `sleep 30 & echo $! > "$0"; wait`, pidFile}, Timeout: time.Second}})
	start := time.Now()
	run := r.Run(context.Background(), req("slow", 1))
	if run.GetState() != StateFailed || !strings.Contains(run.GetError(), "timed out after 1s") || run.GetExitCode() != -1 {
		t.Fatalf("run %v", run)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("timed-out hook held the runner for %s", time.Since(start))
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid := strings.TrimSpace(string(b))
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			break
		}
		if st, _ := os.ReadFile("/proc/" + pid + "/stat"); strings.Contains(string(st), ") Z ") {
			break // a zombie waiting for init is dead
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hook's child %s survived the timeout", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHooks_InterruptedRunIsNotRunAgain(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "runs")
	r, j := runner(t, map[string]Hook{"warm": {Command: []string{"/bin/sh", "-c", `echo run >> "$0"`, out}, Timeout: 5 * time.Second}})
	// A previous agent journaled the start and died.
	rq := req("warm", 4)
	if err := j.SaveHookRun(rq.Key(), &sv1.HookRun{Hook: "warm", Point: PreTraffic, RolloutId: "r1", Generation: 4, State: StateRunning}); err != nil {
		t.Fatal(err)
	}
	run := r.Run(context.Background(), rq)
	if run.GetState() != StateFailed || !strings.Contains(run.GetError(), "interrupted") {
		t.Fatalf("run %v", run)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("interrupted hook ran again (err %v)", err)
	}
	if again := r.Run(context.Background(), rq); again.GetState() != StateFailed {
		t.Fatalf("second look %v", again)
	}
}

func TestHooks_UnknownHookAndMissingProgram(t *testing.T) {
	r, _ := runner(t, map[string]Hook{"gone": {Command: []string{"/nonexistent/warm"}, Timeout: time.Second}})
	if run := r.Run(context.Background(), req("nope", 1)); run.GetState() != StateFailed || !strings.Contains(run.GetError(), `"nope" is not in this agent's config`) {
		t.Fatalf("unknown hook %v", run)
	}
	if run := r.Run(context.Background(), req("gone", 1)); run.GetState() != StateFailed || !strings.Contains(run.GetError(), "did not start") {
		t.Fatalf("missing program %v", run)
	}
}

// A hook's output tail is a protobuf string in the journal and in the
// agent's status, which must be UTF-8: output in another charset, and a
// multi-byte character the 2 KiB cut splits, are made valid.
func TestHooks_OutputTailIsValidUTF8(t *testing.T) {
	r, _ := runner(t, map[string]Hook{
		// 3001 bytes: the cut at 2048 from the end splits an "é".
		"cut": {Command: []string{"/bin/sh", "-c", `i=0; while [ $i -lt 1500 ]; do printf 'é'; i=$((i+1)); done; printf x`}, Timeout: 5 * time.Second},
		// Latin-1, as an old tool prints it.
		"latin1": {Command: []string{"/bin/sh", "-c", `printf 'Cache nicht verf\374gbar\n'; exit 2`}, Timeout: 5 * time.Second},
	})
	for _, name := range []string{"cut", "latin1"} {
		run := r.Run(context.Background(), req(name, 1))
		if !utf8.ValidString(run.GetOutput()) {
			t.Errorf("%s: output %q is not UTF-8", name, run.GetOutput())
		}
		if _, err := proto.Marshal(run); err != nil {
			t.Errorf("%s: the run cannot be journaled or reported: %v", name, err)
		}
	}
}

// A hook that exits 0 succeeded, even when a process it started in the
// background still holds its output open (a daemon it launched): the agent
// stops reading after a grace period and does not call that a failure to
// start.
func TestHooks_ExitZeroWithBackgroundChildSucceeds(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	r, _ := runner(t, map[string]Hook{"launch": {Command: []string{"/bin/sh", "-c", `sleep 20 & echo $! > "$0"; echo launched`, pidFile}, Timeout: 10 * time.Second}})
	t.Cleanup(func() {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	run := r.Run(context.Background(), req("launch", 1))
	if run.GetState() != StateSucceeded || run.GetExitCode() != 0 || run.GetOutput() != "launched\n" {
		t.Fatalf("run %v", run)
	}
}
