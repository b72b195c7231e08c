package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// CLIResult is what one run of a switchyard client verb printed and how it
// exited.
type CLIResult struct {
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int
}

// CLIError is returned by the Fleet's verb helpers (Apply, Abort, Status)
// when the CLI exits non-zero; Result has what it printed.
type CLIError struct{ Result *CLIResult }

func (e *CLIError) Error() string {
	return fmt.Sprintf("switchyard %s: exit %d: %s", strings.Join(e.Result.Args, " "), e.Result.ExitCode, strings.TrimSpace(e.Result.Stderr))
}

// cliTimeout bounds one CLI run when the caller's context has no sooner
// deadline: every verb the tests use answers within its own --timeout.
const cliTimeout = 90 * time.Second

// RunCLI runs binary with args and env (added to the parent's environment,
// with any SWITCHYARD_NATS of the parent removed so the caller decides) and
// returns what it printed and its exit code. The error is non-nil only when
// the CLI could not be run or was stopped by ctx; a non-zero exit is a
// result, not an error.
func RunCLI(ctx context.Context, binary string, env []string, args ...string) (*CLIResult, error) {
	ctx, cancel := context.WithTimeout(ctx, cliTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(withoutEnv(os.Environ(), "SWITCHYARD_NATS"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	res := &CLIResult{Args: args, Stdout: stdout.String(), Stderr: stderr.String()}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("switchyard %s: %w (stderr: %s)", strings.Join(args, " "), context.Cause(ctx), strings.TrimSpace(res.Stderr))
	case errors.As(err, &exit):
		res.ExitCode = exit.ExitCode()
		if res.ExitCode < 0 {
			return res, fmt.Errorf("switchyard %s: %w", strings.Join(args, " "), err)
		}
	case err != nil:
		return res, fmt.Errorf("switchyard %s: %w", strings.Join(args, " "), err)
	}
	return res, nil
}

func withoutEnv(env []string, name string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}
