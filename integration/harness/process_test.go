package harness

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"
)

// script runs a shell script as a supervised process; the scripts loop on
// short sleeps so that they react to signals promptly.
func script(t *testing.T, name, body string) *Process {
	t.Helper()
	p, err := StartProcess(ProcessSpec{
		Name:        name,
		Path:        "/bin/sh",
		Args:        []string{"-c", body},
		LogDir:      t.TempDir(),
		StopTimeout: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	return p
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const (
	cleanOnTerm  = `trap 'echo bye; exit 0' TERM; echo READY=$$; while :; do sleep 0.05; done`
	ignoresTerm  = `trap '' TERM; echo READY=$$; while :; do sleep 0.05; done`
	exitsAtStart = `echo oops >&2; exit 3`
)

func TestProcess_StopIsCleanAndRestartReadsFreshOutput(t *testing.T) {
	ctx := testContext(t)
	p := script(t, "clean", cleanOnTerm)
	first, err := p.WaitForStdoutLine(ctx, "READY=")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Restart(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	second, err := p.WaitForStdoutLine(ctx, "READY=")
	if err != nil {
		t.Fatal(err)
	}
	// The second run's line, not the first's still in the file.
	if first == second {
		t.Errorf("after restart WaitForStdoutLine returned the first run's line %q", first)
	}
	if err := p.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
	if p.Running() {
		t.Error("running after Stop")
	}
	if err := p.Stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

func TestProcess_StopKillsWhatIgnoresSIGTERM(t *testing.T) {
	ctx := testContext(t)
	p := script(t, "stubborn", ignoresTerm)
	if _, err := p.WaitForStdoutLine(ctx, "READY="); err != nil {
		t.Fatal(err)
	}
	err := p.Stop()
	if err == nil || !strings.Contains(err.Error(), "did not exit") {
		t.Fatalf("Stop = %v, want a report that it had to kill", err)
	}
	if p.Running() {
		t.Error("running after Stop")
	}
}

func TestProcess_KillAndStartAgain(t *testing.T) {
	ctx := testContext(t)
	p := script(t, "killed", cleanOnTerm)
	if _, err := p.WaitForStdoutLine(ctx, "READY="); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err == nil {
		t.Fatal("Start of a running process succeeded")
	}
	pid := p.Pid()
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	// A fault test may leave a killed process down; shutting the fleet
	// down afterwards is not an unclean exit.
	if err := p.Stop(); err != nil {
		t.Errorf("Stop after Kill: %v", err)
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if p.Pid() == pid || !p.Running() {
		t.Fatalf("not running again with a new pid (old %d, new %d)", pid, p.Pid())
	}
}

func TestProcess_WaitFailsFastWhenProcessExits(t *testing.T) {
	ctx := testContext(t)
	p := script(t, "crash", exitsAtStart)
	start := time.Now()
	_, err := p.WaitForStdoutLine(ctx, "READY=")
	if err == nil || !strings.Contains(err.Error(), "oops") || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("err = %v, want the exit status and the log tail", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %v; should fail as soon as the process is gone", time.Since(start))
	}
	if err := p.Stop(); err == nil {
		t.Error("Stop of a process that exited 3 returned nil")
	}
}

func TestProcess_RaceReports(t *testing.T) {
	ctx := testContext(t)
	p := script(t, "racy", `echo "WARNING: DATA RACE" >&2; echo "Write at 0x1 by goroutine 7" >&2; echo "==================" >&2; echo READY=1`)
	if _, err := p.WaitForStdoutLine(ctx, "READY="); err != nil {
		t.Fatal(err)
	}
	<-p.Exited()
	r := p.RaceReports()
	if len(r) != 1 || !strings.Contains(r[0], "goroutine 7") {
		t.Fatalf("RaceReports = %q", r)
	}
}

func TestProcess_StopWakesAFrozenProcess(t *testing.T) {
	ctx := testContext(t)
	p := script(t, "frozen", cleanOnTerm)
	if _, err := p.WaitForStdoutLine(ctx, "READY="); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Frozen, it would sit on SIGTERM until the stop timeout killed it.
	if err := p.Stop(); err != nil {
		t.Fatalf("stop of a frozen process: %v", err)
	}
	if err := p.Signal(syscall.SIGCONT); err == nil {
		t.Error("signalling an exited process succeeded")
	}
}
