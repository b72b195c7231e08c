// Package hooks runs the node's own hook commands, named in the agent
// config and referred to by rollouts only by name: without a shell, with a
// timeout, keeping the tail of their output, and journaled before they
// start so that no hook runs twice for the same generation, even across an
// agent crash.
package hooks

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Points of a node's rollout where hooks run, as the spec and status name
// them.
const (
	PreTraffic  = "preTraffic"
	PostTraffic = "postTraffic"
	Rollback    = "rollback"
)

// States of a run.
const (
	StateRunning   = "running"
	StateSucceeded = "succeeded"
	StateFailed    = "failed"
)

// OutputTail is how much of a command's output (stdout and stderr
// together, the end of it) a run keeps.
const OutputTail = 2048

// waitDelay bounds how long a killed command's output pipes are waited for.
const waitDelay = 2 * time.Second

// Hook is one command from the agent config.
type Hook struct {
	// Command is the program and its arguments, run without a shell.
	Command []string
	Timeout time.Duration
}

// Journal keeps every run's record across restarts, by key.
type Journal interface {
	// LoadHookRun returns the record under key, or nil and no error.
	LoadHookRun(key string) (*sv1.HookRun, error)
	// SaveHookRun writes the record under key, durably.
	SaveHookRun(key string, run *sv1.HookRun) error
	// ForgetHookRuns drops the records of service's runs for rollouts
	// other than rollout.
	ForgetHookRuns(service, rollout string) error
}

// Lister is a Journal that can list its keys, sorted; a runner over one
// can report, after a restart, the runs a previous run journaled.
type Lister interface {
	HookRunKeys() ([]string, error)
}

// Request is one hook to run for one service's document.
type Request struct {
	Service, Node, Hook, Point string
	RolloutID                  string
	Generation                 uint64
	From, To                   string
}

// Key names a run in the journal: a hook runs at most once per service,
// rollout, point and generation.
func (r Request) Key() string {
	return fmt.Sprintf("%s/%s/%s/%s/%d", r.Service, r.RolloutID, r.Point, r.Hook, r.Generation)
}

// OtherRollout reports whether the journal key names a run of service for
// a rollout other than rollout (names hold no '/').
func OtherRollout(key, service, rollout string) bool {
	rest, ok := strings.CutPrefix(key, service+"/")
	return ok && !strings.HasPrefix(rest, rollout+"/")
}

// Runner runs hooks.
type Runner struct {
	Hooks   map[string]Hook
	Journal Journal
	Log     *slog.Logger
	Now     func() time.Time
	// Runs, if set, is told the outcome of every hook that ran ("succeeded",
	// "failed") by point.
	Runs func(point, outcome string)
}

// Run runs a hook unless its journal has a record for the same request:
// then the record is the answer and nothing runs. A record left "running"
// means the agent stopped while the hook ran; it is closed as failed and
// the hook is not run again.
func (r *Runner) Run(ctx context.Context, req Request) *sv1.HookRun {
	log := r.Log.With("service", req.Service, "rollout", req.RolloutID, "generation", req.Generation, "hook", req.Hook, "point", req.Point)
	key := req.Key()
	prior, err := r.Journal.LoadHookRun(key)
	if err != nil {
		log.Error("read hook journal; not running the hook", "err", err)
		return r.failed(req, -1, "", "hook journal unreadable, so the hook was not run (it may have run before): "+err.Error())
	}
	if prior != nil {
		if prior.GetState() != StateRunning {
			return prior
		}
		prior.State = StateFailed
		prior.Error = interrupted
		prior.EndedAt = timestamppb.New(r.Now())
		if err := r.Journal.SaveHookRun(key, prior); err != nil {
			log.Error("close interrupted hook run in the journal", "err", err)
		}
		log.Warn("hook was interrupted by an agent restart; not running it again")
		return prior
	}
	h, ok := r.Hooks[req.Hook]
	if !ok {
		return r.failed(req, -1, "", fmt.Sprintf("hook %q is not in this agent's config (hooks:)", req.Hook))
	}
	// A document of an older rollout is never applied again (its
	// generation is lower), so its runs are never looked up again: the
	// journal keeps the current rollout's, or it would grow with every
	// rollout the node ever took part in.
	if err := r.Journal.ForgetHookRuns(req.Service, req.RolloutID); err != nil {
		log.Warn("drop the hook runs of earlier rollouts from the journal", "err", err)
	}
	start := r.Now()
	run := &sv1.HookRun{Hook: req.Hook, Point: req.Point, RolloutId: req.RolloutID, Generation: req.Generation,
		State: StateRunning, StartedAt: timestamppb.New(start)}
	if err := r.Journal.SaveHookRun(key, run); err != nil {
		// Without the record a crash could run the hook twice.
		log.Error("journal hook run; not running the hook", "err", err)
		return r.failed(req, -1, "", "could not journal the run, so the hook was not run: "+err.Error())
	}
	log.Info("hook running", "command", h.Command, "timeout", h.Timeout)
	code, out, runErr := execute(ctx, h, req)
	end := r.Now()
	run.ExitCode, run.Output, run.EndedAt, run.Took = int32(code), out, timestamppb.New(end), durationpb.New(end.Sub(start))
	run.State = StateSucceeded
	if runErr != nil {
		run.State, run.Error = StateFailed, runErr.Error()
	}
	if err := r.Journal.SaveHookRun(key, run); err != nil {
		log.Error("journal hook outcome", "err", err)
	}
	if r.Runs != nil {
		r.Runs(req.Point, run.GetState())
	}
	if run.GetState() == StateFailed {
		log.Warn("hook failed", "exit_code", code, "err", runErr, "output", out)
	} else {
		log.Info("hook succeeded", "took", end.Sub(start))
	}
	return run
}

// interrupted is the error of a run a stopped agent left running.
const interrupted = "interrupted: the agent stopped while the hook ran; it is not run again for this generation"

// Restore returns, for a restarted agent's status, the latest journaled run
// of each hook and point of service's rollout, oldest generation first.
// A run a previous agent left running (killed while the hook ran) is
// closed as failed, as Run would close it, since it is not run again. A
// journal that cannot list its keys yields none.
func (r *Runner) Restore(service, rollout string) []*sv1.HookRun {
	lister, ok := r.Journal.(Lister)
	if !ok || rollout == "" {
		return nil
	}
	log := r.Log.With("service", service, "rollout", rollout)
	keys, err := lister.HookRunKeys()
	if err != nil {
		log.Warn("read the hook journal; the status lists no earlier hook runs", "err", err)
		return nil
	}
	prefix := service + "/" + rollout + "/"
	latest := map[[2]string]*sv1.HookRun{}
	for _, key := range keys {
		if !strings.HasPrefix(key, prefix) {
			continue
		}
		run, err := r.Journal.LoadHookRun(key)
		if err != nil || run == nil {
			log.Warn("read a journaled hook run", "key", key, "err", err)
			continue
		}
		if run.GetState() == StateRunning {
			run.State, run.Error, run.EndedAt = StateFailed, interrupted, timestamppb.New(r.Now())
			if err := r.Journal.SaveHookRun(key, run); err != nil {
				log.Error("close interrupted hook run in the journal", "key", key, "err", err)
			}
			log.Warn("hook was interrupted by an agent restart; not running it again", "hook", run.GetHook(),
				"point", run.GetPoint(), "generation", run.GetGeneration())
		}
		k := [2]string{run.GetPoint(), run.GetHook()}
		if have := latest[k]; have == nil || run.GetGeneration() > have.GetGeneration() {
			latest[k] = run
		}
	}
	out := make([]*sv1.HookRun, 0, len(latest))
	for _, run := range latest {
		out = append(out, run)
	}
	slices.SortFunc(out, func(a, b *sv1.HookRun) int {
		return cmp.Or(cmp.Compare(a.GetGeneration(), b.GetGeneration()), a.GetStartedAt().AsTime().Compare(b.GetStartedAt().AsTime()),
			strings.Compare(a.GetPoint(), b.GetPoint()), strings.Compare(a.GetHook(), b.GetHook()))
	})
	return out
}

func (r *Runner) failed(req Request, code int, out, why string) *sv1.HookRun {
	now := timestamppb.New(r.Now())
	if r.Runs != nil {
		r.Runs(req.Point, StateFailed)
	}
	return &sv1.HookRun{Hook: req.Hook, Point: req.Point, RolloutId: req.RolloutID, Generation: req.Generation,
		State: StateFailed, ExitCode: int32(code), Output: out, Error: why, StartedAt: now, EndedAt: now}
}

// execute runs the command in its own process group, killed as a group on
// timeout and when the agent stops; when the agent dies the kernel kills
// the command's own process (its children stay). It returns the exit code (-1 when the
// command did not exit by itself), the output's tail and why it failed.
func execute(ctx context.Context, h Hook, req Request) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, h.Command[0], h.Command[1:]...)
	cmd.Env = append(os.Environ(),
		"SWITCHYARD_SERVICE="+req.Service,
		"SWITCHYARD_NODE="+req.Node,
		"SWITCHYARD_ROLLOUT="+req.RolloutID,
		fmt.Sprintf("SWITCHYARD_GENERATION=%d", req.Generation),
		"SWITCHYARD_HOOK="+req.Hook,
		"SWITCHYARD_POINT="+req.Point,
		"SWITCHYARD_FROM="+req.From,
		"SWITCHYARD_TO="+req.To,
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	tail := &tailBuffer{max: OutputTail}
	cmd.Stdout, cmd.Stderr = tail, tail
	err := cmd.Run()
	out := tail.String()
	switch {
	case err == nil:
		return 0, out, nil
	case errors.Is(err, exec.ErrWaitDelay):
		// The command exited 0; something it started in the background
		// still held its output after waitDelay, which is not a failure.
		return 0, out, nil
	case ctx.Err() == context.DeadlineExceeded:
		return -1, out, fmt.Errorf("timed out after %s and was killed", h.Timeout)
	case ctx.Err() != nil:
		return -1, out, errors.New("stopped: the agent is shutting down")
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if exit.ExitCode() >= 0 {
			return exit.ExitCode(), out, fmt.Errorf("exit status %d", exit.ExitCode())
		}
		return -1, out, fmt.Errorf("killed: %v", exit.ProcessState)
	}
	return -1, out, fmt.Errorf("did not start: %v", err)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
	cut bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.cut = true
	}
	return len(p), nil
}

// String is the tail as UTF-8: the journal and the status keep it as a
// protobuf string, which cannot hold anything else (output in another
// charset would make the run impossible to journal or report). Invalid
// bytes become U+FFFD; a character the cut split is dropped.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if !t.cut {
		return strings.ToValidUTF8(string(b), "\uFFFD")
	}
	for i := 0; i < utf8.UTFMax-1 && len(b) > 0 && !utf8.RuneStart(b[0]); i++ {
		b = b[1:]
	}
	return "…" + strings.ToValidUTF8(string(b), "\uFFFD")
}

// MemJournal is a journal that survives nothing, for agents whose state
// store keeps no journal.
type MemJournal struct {
	mu sync.Mutex
	m  map[string]*sv1.HookRun
}

var _ Journal = (*MemJournal)(nil)

// LoadHookRun implements Journal.
func (j *MemJournal) LoadHookRun(key string) (*sv1.HookRun, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.m[key], nil
}

// ForgetHookRuns implements Journal.
func (j *MemJournal) ForgetHookRuns(service, rollout string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for k := range j.m {
		if OtherRollout(k, service, rollout) {
			delete(j.m, k)
		}
	}
	return nil
}

// SaveHookRun implements Journal.
func (j *MemJournal) SaveHookRun(key string, run *sv1.HookRun) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.m == nil {
		j.m = map[string]*sv1.HookRun{}
	}
	j.m[key] = run
	return nil
}
