//go:build linux

package haproxy

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/haproxyproc"
)

// masterWorker is HAProxy run as distributions run it: a master process
// that a reload (SIGUSR2) makes start a new worker, the old worker
// finishing what it has and exiting.
type masterWorker struct {
	cmd    *exec.Cmd
	socket string
}

func startMasterWorker(t *testing.T) *masterWorker {
	t.Helper()
	dir := t.TempDir()
	cfg := haproxyproc.Config{
		Dir:     dir,
		Backend: "web",
		Servers: []haproxyproc.Server{{Name: "blue", Addr: "127.0.0.1:9", Weight: 100}, {Name: "green", Addr: "127.0.0.1:9", Weight: 0}},
	}
	port, err := haproxyproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.FrontendAddr = "127.0.0.1:" + strconv.Itoa(port)
	text, err := haproxyproc.Render(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	bin, err := haproxyproc.Binary("")
	if err != nil {
		t.Fatal(err) // make test installs HAProxy; a skip would prove nothing in CI
	}
	cmd := exec.Command(bin, "-W", "-db", "-f", path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("haproxy output:\n%s", out.String())
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	})
	mw := &masterWorker{cmd: cmd, socket: cfg.AdminSocket()}
	mw.waitWorker(t, 0)
	return mw
}

// lockedBuffer collects HAProxy's output for a failing test.
type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// reload makes the master start a new worker in place of old, and waits
// until the new one answers. A master that has only just started may not
// handle the signal yet, so it is sent again until one does.
func (mw *masterWorker) reload(t *testing.T, old uint64) {
	t.Helper()
	api := runtimeAPI{socket: mw.socket, timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if err := mw.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		for range 100 {
			info, err := api.show(context.Background(), "show info")
			if err == nil {
				if pid, err := parseInfoCounter(info, "Pid"); err == nil && pid != old {
					return
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Fatal("HAProxy did not reload within 15s")
}

// waitWorker waits until the admin socket answers from a worker other than
// not, and returns its pid.
func (mw *masterWorker) waitWorker(t *testing.T, not uint64) uint64 {
	t.Helper()
	api := runtimeAPI{socket: mw.socket, timeout: time.Second}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := api.show(context.Background(), "show info")
		if err == nil {
			if pid, err := parseInfoCounter(info, "Pid"); err == nil && pid != not {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new HAProxy worker answered within 10s (last: %v)", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLive_WatchLetsAReloadedWorkerGo: after a reload, the old worker
// exits once the connections it serves end. The driver's watch must not be
// one of them, or every reload leaves an HAProxy process running for as
// long as the agent does.
func TestLive_WatchLetsAReloadedWorkerGo(t *testing.T) {
	mw := startMasterWorker(t)
	old := mw.waitWorker(t, 0)
	d := newDriver(t, Config{Socket: mw.socket, Backend: "web", Servers: map[string]string{"blue": "blue", "green": "green"}})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	up := make(chan struct{}, 1)
	wg.Go(func() {
		d.Watch(ctx, func(isUp bool) {
			if isUp {
				select {
				case up <- struct{}{}:
				default:
				}
			}
		})
	})
	select {
	case <-up:
	case <-time.After(10 * time.Second):
		t.Fatal("the watch did not connect within 10s")
	}

	mw.reload(t, old)
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := syscall.Kill(int(old), 0)
		if errors.Is(err, syscall.ESRCH) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the old worker (pid %d) still runs 15s after the reload: the watch holds it", old)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
