package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// CPUBurn keeps a number of cores busy until reverted.
type CPUBurn struct {
	Cores int

	mu     sync.Mutex
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

var _ Injector = (*CPUBurn)(nil)

// Apply starts burning; applying a burning CPUBurn is a no-op.
func (b *CPUBurn) Apply(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cancel != nil {
		return nil
	}
	if b.Cores <= 0 || b.Cores > runtime.NumCPU() {
		return fmt.Errorf("cpu burn: %d cores requested, this host has %d", b.Cores, runtime.NumCPU())
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	for range b.Cores {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			x := 0
			for ctx.Err() == nil {
				for i := 0; i < 1<<16; i++ {
					x += i
				}
			}
			_ = x
		}()
	}
	return nil
}

// Revert stops burning.
func (b *CPUBurn) Revert(context.Context) error {
	b.mu.Lock()
	cancel := b.cancel
	b.cancel = nil
	b.mu.Unlock()
	if cancel != nil {
		cancel()
		b.wg.Wait()
	}
	return nil
}

// ProcessSignal pauses (SIGSTOP, reverted with SIGCONT) or kills (SIGKILL,
// not revertible) a process found through its pid file. The pid file comes
// from the agent's own config: the bus names the process, never a path.
type ProcessSignal struct {
	PIDFile string
	Action  string // "pause" or "kill"
}

var _ Injector = (*ProcessSignal)(nil)

// ErrNoProcess is returned when the pid file names no running process.
var ErrNoProcess = errors.New("no such process")

func (p *ProcessSignal) pid() (int, error) {
	b, err := os.ReadFile(p.PIDFile)
	if err != nil {
		return 0, fmt.Errorf("read pid file %s: %w", p.PIDFile, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: %q is not a pid", p.PIDFile, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// Apply sends the fault's signal.
func (p *ProcessSignal) Apply(context.Context) error {
	pid, err := p.pid()
	if err != nil {
		return err
	}
	sig := syscall.SIGSTOP
	if p.Action == "kill" {
		sig = syscall.SIGKILL
	}
	if err := syscall.Kill(pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("%w: pid %d from %s", ErrNoProcess, pid, p.PIDFile)
		}
		return fmt.Errorf("signal pid %d: %w", pid, err)
	}
	return nil
}

// Revert resumes a paused process; a killed one stays dead (its supervisor
// restarts it).
func (p *ProcessSignal) Revert(context.Context) error {
	if p.Action != "pause" {
		return nil
	}
	pid, err := p.pid()
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("resume pid %d: %w", pid, err)
	}
	return nil
}
