package haproxyproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/internal/freeport"
)

// ErrNotInstalled is returned when no haproxy binary can be found.
var ErrNotInstalled = errors.New("haproxy is not installed (Debian/Ubuntu: apt-get install haproxy)")

// debianBinary is where Debian's package puts haproxy; /usr/sbin is often
// missing from a non-root PATH.
const debianBinary = "/usr/sbin/haproxy"

// Bounds on how long we wait for HAProxy, so a wedged process cannot hang a
// test or the demo runner.
const (
	defaultStartTimeout = 10 * time.Second
	termGrace           = 5 * time.Second
	killGrace           = 5 * time.Second
	readyPoll           = 10 * time.Millisecond
)

// stderrKeep bounds the stderr we keep: HAProxy logs a line per server state
// change for as long as it runs, and only the recent lines explain a failure.
const stderrKeep = 64 << 10

// Process is one running HAProxy that we own: it runs in the foreground as
// our child, in its own process group.
type Process struct {
	cfg     Config
	bin     string
	cfgPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{} // closed when the current child has been reaped
	stderr *tailBuffer
}

// Binary returns the haproxy executable to run: explicit, else PATH, else
// Debian's location.
func Binary(explicit string) (string, error) {
	if explicit != "" {
		if _, err := exec.LookPath(explicit); err != nil {
			return "", fmt.Errorf("haproxyproc: Config.Binary %q: %w: %w", explicit, ErrNotInstalled, err)
		}
		return explicit, nil
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p, nil
	}
	if _, err := exec.LookPath(debianBinary); err == nil {
		return debianBinary, nil
	}
	return "", fmt.Errorf("haproxyproc: no haproxy in PATH or at %s: %w", debianBinary, ErrNotInstalled)
}

// Start writes c's config into c.Dir, validates it with "haproxy -c", runs
// HAProxy in the foreground and returns once its admin socket answers. ctx
// bounds the start only (10s if it has no deadline); the process outlives it
// until Stop.
//
// A FrontendAddr with port 0 asks Start to pick a free port; it retries with
// another when HAProxy cannot bind the one it picked (another process took
// it in between). FrontendAddr on the Process tells the port in use.
func Start(ctx context.Context, c Config) (*Process, error) {
	host, port, err := net.SplitHostPort(c.FrontendAddr)
	pick := err == nil && port == "0"
	attempts := 1
	if pick {
		attempts = 5
	}
	for i := 0; ; i++ {
		cc := c
		if pick {
			free, err := FreePort()
			if err != nil {
				return nil, err
			}
			cc.FrontendAddr = net.JoinHostPort(host, strconv.Itoa(free))
		}
		p, err := startOnce(ctx, cc)
		if err == nil || !pick || i+1 >= attempts || !isBindFailure(err) {
			return p, err
		}
	}
}

// isBindFailure recognises HAProxy's refusal to start for a listener it
// could not bind.
func isBindFailure(err error) bool {
	s := err.Error()
	return strings.Contains(s, "cannot bind socket") || strings.Contains(s, "failed to start their listeners")
}

func startOnce(ctx context.Context, c Config) (*Process, error) {
	text, err := Render(c)
	if err != nil {
		return nil, err
	}
	bin, err := Binary(c.Binary)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("haproxyproc: create Config.Dir: %w", err)
	}
	p := &Process{cfg: c, bin: bin, cfgPath: filepath.Join(c.Dir, cfgFile)}
	if err := os.WriteFile(p.cfgPath, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("haproxyproc: write config: %w", err)
	}
	if out, err := exec.CommandContext(ctx, bin, "-c", "-f", p.cfgPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("haproxyproc: %s rejects %s: %w\n%s", bin, p.cfgPath, err, strings.TrimSpace(string(out)))
	}
	if err := p.launch(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// FrontendAddr is the address clients connect to.
func (p *Process) FrontendAddr() string { return p.cfg.FrontendAddr }

// SocketPath is the admin socket (runtime API) path.
func (p *Process) SocketPath() string { return p.cfg.AdminSocket() }

// ConfigPath is the haproxy.cfg the process runs.
func (p *Process) ConfigPath() string { return p.cfgPath }

// Pid is the current child's process id, 0 when stopped.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Stderr returns the tail of the current child's stderr (HAProxy's alerts
// and warnings), for diagnostics.
func (p *Process) Stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stderr == nil {
		return ""
	}
	return p.stderr.String()
}

// Exited is closed when the current child has exited, for whatever reason.
// It returns a closed channel when no child runs.
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

// Stop ends the process: SIGTERM (HAProxy's hard stop), then SIGKILL if it
// has not exited within a few seconds. Calling it again is a no-op.
func (p *Process) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked()
}

// Restart stops the process and starts it again from the same config, so
// runtime changes (weights, states) are lost: this is how tests simulate
// HAProxy restarting under the agent.
func (p *Process) Restart(ctx context.Context) error {
	p.mu.Lock()
	err := p.stopLocked()
	p.mu.Unlock()
	if err != nil {
		return err
	}
	return p.launch(ctx)
}

// Kill sends SIGKILL to the process and waits for it to exit, leaving its
// admin socket file behind as a crash does; Restart starts it again.
func (p *Process) Kill() error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-done:
		return nil
	case <-time.After(killGrace):
		return fmt.Errorf("haproxyproc: pid %d did not exit after SIGKILL", cmd.Process.Pid)
	}
}

func (p *Process) stopLocked() error {
	if p.cmd == nil {
		return nil
	}
	cmd, done := p.cmd, p.done
	p.cmd, p.done = nil, nil
	defer os.Remove(p.SocketPath()) // nothing answers there any more

	select {
	case <-done:
		return nil
	default:
	}
	// The whole group: HAProxy does not fork in -db mode, but anything it
	// might spawn (external checks) must go with it.
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(termGrace):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-done:
		return nil
	case <-time.After(killGrace):
		return fmt.Errorf("haproxyproc: pid %d did not exit after SIGKILL", pgid)
	}
}

// launch runs the child and waits for its admin socket to answer.
func (p *Process) launch(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultStartTimeout)
		defer cancel()
	}
	// -db: foreground, no daemon, no master: the child we start is HAProxy
	// itself, so signals and Wait reach it directly.
	cmd := exec.Command(p.bin, "-f", p.cfgPath, "-db")
	cmd.Dir = p.cfg.Dir
	cmd.SysProcAttr = sysProcAttr()
	stderr := &tailBuffer{max: stderrKeep}
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("haproxyproc: start %s: %w", p.bin, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()

	p.mu.Lock()
	p.cmd, p.done, p.stderr = cmd, done, stderr
	p.mu.Unlock()

	pid := cmd.Process.Pid
	// -db writes no pid file; the demo runner and operators still want one.
	_ = os.WriteFile(filepath.Join(p.cfg.Dir, pidFile), []byte(strconv.Itoa(pid)+"\n"), 0o600)

	if err := p.waitReady(ctx, pid, done); err != nil {
		_ = p.Stop()
		return fmt.Errorf("%w\nhaproxy stderr:\n%s", err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// waitReady polls "show info" until the answer comes from our child (its
// Pid), not from a stale socket file of an earlier process.
func (p *Process) waitReady(ctx context.Context, pid int, done <-chan struct{}) error {
	want := "Pid: " + strconv.Itoa(pid) + "\n"
	tick := time.NewTicker(readyPoll)
	defer tick.Stop()
	var lastErr error
	for {
		ans, err := command(ctx, p.SocketPath(), "show info")
		if err == nil && strings.Contains(ans, want) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("show info answered without %q", strings.TrimSpace(want))
		}
		lastErr = err
		select {
		case <-done:
			return fmt.Errorf("haproxyproc: haproxy (pid %d) exited during start", pid)
		case <-ctx.Done():
			return fmt.Errorf("haproxyproc: admin socket %s not answering: %w (last: %v)", p.SocketPath(), ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// command sends one runtime API command and reads the answer; HAProxy
// closes the connection after answering when no prompt mode is asked for.
func command(ctx context.Context, socket, cmd string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	deadline := time.Now().Add(time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	if _, err := io.WriteString(conn, cmd+"\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(conn, 1<<20))
	return string(b), err
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago,
// picked below the kernel's ephemeral range (see internal/freeport).
// Another process may still take it before the caller binds; callers that
// can should retry on "address in use".
func FreePort() (int, error) {
	p, err := freeport.Pick()
	if err != nil {
		return 0, fmt.Errorf("haproxyproc: pick a free port: %w", err)
	}
	return p, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(b)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
