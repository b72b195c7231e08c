package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultStopTimeout bounds how long Stop waits after SIGTERM before it
// kills. Switchyard processes drain in well under a second; ten is generous
// enough for a loaded CI machine and short enough to keep tests bounded.
const DefaultStopTimeout = 10 * time.Second

// ErrRunning is returned by Start for a process that has not exited yet.
var ErrRunning = errors.New("process is running")

// ProcessSpec says how to start one child process.
type ProcessSpec struct {
	// Name is used in messages and for the log files, LogDir/Name.out
	// (stdout) and LogDir/Name.err (stderr); it must be a valid file name.
	Name string
	Path string
	Args []string
	// Env is added to the parent's environment.
	Env []string
	// LogDir holds the log files; they stay after the process exits so a
	// failed test can show them.
	LogDir string
	// StopTimeout is the bound Stop waits after SIGTERM; DefaultStopTimeout
	// when zero.
	StopTimeout time.Duration
}

// Process is a supervised child: its own process group (so a signal reaches
// anything it spawns and a Ctrl-C at the terminal does not reach it behind our
// back), killed by the kernel if this process dies (Pdeathsig), and
// restartable with the same arguments.
type Process struct {
	spec ProcessSpec

	mu     sync.Mutex
	cur    *run
	starts int
}

// run is one start of the process; err is written before done is closed.
type run struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// killed is set by Kill: a death the caller asked for is no finding.
	killed atomic.Bool
}

// StartProcess starts a child as spec says.
func StartProcess(spec ProcessSpec) (*Process, error) {
	if spec.Name == "" || spec.Path == "" || spec.LogDir == "" {
		return nil, errors.New("process spec: Name, Path and LogDir are required")
	}
	if err := os.MkdirAll(spec.LogDir, 0o755); err != nil {
		return nil, err
	}
	p := &Process{spec: spec}
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// SetArgs changes the arguments of the next Start, as an operator edits a
// unit file before restarting it.
func (p *Process) SetArgs(args []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.spec.Args = slices.Clone(args)
}

// Args are the arguments of the next Start.
func (p *Process) Args() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.spec.Args)
}

// Name is the spec's name.
func (p *Process) Name() string { return p.spec.Name }

// StdoutPath is the file the child's stdout goes to, across restarts.
func (p *Process) StdoutPath() string { return filepath.Join(p.spec.LogDir, p.spec.Name+".out") }

// StderrPath is the file the child's stderr goes to, across restarts.
func (p *Process) StderrPath() string { return filepath.Join(p.spec.LogDir, p.spec.Name+".err") }

// Start starts the process again after it exited (Kill, Stop or a crash),
// appending to the same log files behind a marker line.
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil {
		select {
		case <-p.cur.done:
		default:
			return fmt.Errorf("start %s: %w (pid %d)", p.spec.Name, ErrRunning, p.cur.cmd.Process.Pid)
		}
	}
	open := func(path string) (*os.File, error) {
		return os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	}
	stdout, err := open(p.StdoutPath())
	if err != nil {
		return err
	}
	defer stdout.Close() // the child holds its own descriptor
	stderr, err := open(p.StderrPath())
	if err != nil {
		return err
	}
	defer stderr.Close()
	if p.starts > 0 {
		// Readers of stdout (WaitForStdoutLine) look only past the last
		// marker, so a restarted process is not mistaken as ready by
		// what its previous run printed.
		marker := fmt.Sprintf("%s start #%d %s\n", restartMarker, p.starts+1, time.Now().Format(time.RFC3339Nano))
		stdout.WriteString(marker)
		stderr.WriteString(marker)
	}

	cmd := exec.Command(p.spec.Path, p.spec.Args...) // p.mu held
	// An operator's SWITCHYARD_NATS would override the fleet's own bus in
	// every child (the agent prefers it to its config); the spec decides.
	cmd.Env = append(withoutEnv(os.Environ(), "SWITCHYARD_NATS"), p.spec.Env...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.spec.Name, err)
	}
	r := &run{cmd: cmd, done: make(chan struct{})}
	go func() {
		r.err = cmd.Wait()
		close(r.done)
	}()
	p.cur = r
	p.starts++
	return nil
}

const restartMarker = "--- harness:"

func (p *Process) current() *run {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur
}

// Pid is the pid of the current run, 0 before the first start.
func (p *Process) Pid() int {
	if r := p.current(); r != nil {
		return r.cmd.Process.Pid
	}
	return 0
}

// Running reports whether the current run has not exited.
func (p *Process) Running() bool {
	r := p.current()
	if r == nil {
		return false
	}
	select {
	case <-r.done:
		return false
	default:
		return true
	}
}

// Exited is closed when the current run exits.
func (p *Process) Exited() <-chan struct{} {
	if r := p.current(); r != nil {
		return r.done
	}
	closed := make(chan struct{})
	close(closed)
	return closed
}

// Stop sends SIGTERM to the process group and waits for the exit, killing it
// after StopTimeout. It returns nil only for a clean exit (status 0): every
// process the harness runs promises to exit cleanly on SIGTERM, so anything
// else is a finding. A process that had already exited reports how it
// exited.
func (p *Process) Stop() error {
	r := p.current()
	if r == nil {
		return nil
	}
	select {
	case <-r.done:
		return p.exitError(r)
	default:
	}
	pid := r.cmd.Process.Pid
	if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s: %w", p.spec.Name, err)
	}
	// A process frozen with SIGSTOP (a fault test that failed half-way)
	// would hold SIGTERM pending until it is killed; wake it as systemd
	// does, so it can exit cleanly.
	_ = syscall.Kill(-pid, syscall.SIGCONT)
	timeout := p.spec.StopTimeout
	if timeout <= 0 {
		timeout = DefaultStopTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.done:
		return p.exitError(r)
	case <-t.C:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-r.done
		return fmt.Errorf("%s (pid %d) did not exit within %v of SIGTERM; killed", p.spec.Name, pid, timeout)
	}
}

func (p *Process) exitError(r *run) error {
	if r.err != nil && !r.killed.Load() {
		return fmt.Errorf("%s (pid %d) exited: %w", p.spec.Name, r.cmd.Process.Pid, r.err)
	}
	return nil
}

// Kill sends SIGKILL to the process group and waits until the process is
// gone: the crash a fault test wants, with no chance to clean up. A later
// Stop of the killed run reports no error.
func (p *Process) Kill() error {
	r := p.current()
	if r == nil {
		return nil
	}
	select {
	case <-r.done:
		return nil
	default:
	}
	r.killed.Store(true)
	if err := syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %s: %w", p.spec.Name, err)
	}
	<-r.done
	return nil
}

// Signal sends sig to the process group of the current run; a run that has
// exited is not signalled. Fault tests freeze a process with SIGSTOP and
// thaw it with SIGCONT.
func (p *Process) Signal(sig syscall.Signal) error {
	r := p.current()
	if r == nil {
		return fmt.Errorf("signal %s: not started", p.spec.Name)
	}
	select {
	case <-r.done:
		return fmt.Errorf("signal %s: exited", p.spec.Name)
	default:
	}
	if err := syscall.Kill(-r.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("signal %s (pid %d) with %v: %w", p.spec.Name, r.cmd.Process.Pid, sig, err)
	}
	return nil
}

// Restart stops the process (as Stop) and starts it again with the same
// arguments. The process is running afterwards unless the error says the
// start failed; an unclean stop is reported but does not prevent the start.
func (p *Process) Restart() error {
	stopErr := p.Stop()
	return errors.Join(stopErr, p.Start())
}

// WaitForStdoutLine polls the current run's stdout for a line that starts
// with prefix and returns it. It fails as soon as the process exits, with the
// tail of its logs, instead of waiting for the deadline.
func (p *Process) WaitForStdoutLine(ctx context.Context, prefix string) (string, error) {
	var line string
	err := Poll(ctx, 50*time.Millisecond, func(context.Context) error {
		// Whether it runs is asked before the file is read: a process
		// that printed the line and exited between a read and the
		// question would be taken for one that exited without it. The
		// child writes to the file itself, so once it exited everything
		// it printed is there.
		running := p.Running()
		b, err := os.ReadFile(p.StdoutPath())
		if err != nil {
			return err
		}
		if i := bytes.LastIndex(b, []byte(restartMarker)); i >= 0 {
			b = b[i:]
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), prefix) {
				line = sc.Text()
				return nil
			}
		}
		if !running {
			return Permanent(fmt.Errorf("%s exited before printing %q: %v", p.spec.Name, prefix, p.exitError(p.current())))
		}
		return fmt.Errorf("%s has not printed %q yet", p.spec.Name, prefix)
	})
	if err != nil {
		return "", fmt.Errorf("%w\n%s", err, p.Tail(20))
	}
	return line, nil
}

// Tail returns the last n lines of the process's stderr and stdout, labelled,
// for failure messages.
func (p *Process) Tail(n int) string {
	var b strings.Builder
	for _, f := range []string{p.StderrPath(), p.StdoutPath()} {
		lines := tailLines(f, n)
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "==> %s (last %d lines) <==\n", f, len(lines))
		for _, l := range lines {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

func tailLines(path string, n int) []string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return nil
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// RaceReports returns the data race reports a race-built child wrote to its
// stderr, so that a race in a child process fails the test that drove it.
func (p *Process) RaceReports() []string {
	b, err := os.ReadFile(p.StderrPath())
	if err != nil {
		return nil
	}
	const start, end = "WARNING: DATA RACE", "=================="
	var reports []string
	s := string(b)
	for {
		i := strings.Index(s, start)
		if i < 0 {
			return reports
		}
		s = s[i:]
		j := strings.Index(s, end)
		if j < 0 {
			j = len(s)
		}
		reports = append(reports, p.spec.Name+": "+s[:j])
		s = s[j:]
	}
}
