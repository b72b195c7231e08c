package haproxyproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// backend starts an in-test HTTP server on 127.0.0.1 answering body.
func backend(t *testing.T, body string) *httptest.Server {
	t.Helper()
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, body)
	}))
	t.Cleanup(s.Close)
	return s
}

func testConfig(t *testing.T) Config {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		Dir:          t.TempDir(),
		FrontendAddr: fmt.Sprintf("127.0.0.1:%d", port),
		Backend:      "web",
		Servers: []Server{
			{Name: "blue", Addr: backend(t, "blue").Listener.Addr().String(), Weight: 100},
			{Name: "green", Addr: backend(t, "green").Listener.Addr().String(), Weight: 0},
		},
	}
}

func start(t *testing.T, c Config) *Process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func get(t *testing.T, addr string) string {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET through haproxy: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET through haproxy: status %d, body %q", resp.StatusCode, b)
	}
	return string(b)
}

func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func TestProcess_StartServesStopIdempotent(t *testing.T) {
	c := testConfig(t)
	p := start(t, c)

	pid := p.Pid()
	if pid <= 0 || gone(pid) {
		t.Fatalf("Pid() = %d, want a live process", pid)
	}
	if got := p.SocketPath(); got != filepath.Join(c.Dir, "admin.sock") {
		t.Fatalf("SocketPath() = %q", got)
	}
	ans, err := command(context.Background(), p.SocketPath(), "show info")
	if err != nil || !strings.Contains(ans, "Name: HAProxy") {
		t.Fatalf("show info = %q, %v", ans, err)
	}
	if pf, err := os.ReadFile(filepath.Join(c.Dir, "haproxy.pid")); err != nil || strings.TrimSpace(string(pf)) != fmt.Sprint(pid) {
		t.Fatalf("pid file = %q, %v; want %d", pf, err, pid)
	}
	if body := get(t, c.FrontendAddr); body != "blue" {
		t.Fatalf("GET = %q, want blue (green has weight 0)", body)
	}

	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Fatalf("pid %d still alive after Stop", pid)
	}
	if p.Pid() != 0 {
		t.Fatalf("Pid() after Stop = %d, want 0", p.Pid())
	}
	if _, err := os.Stat(p.SocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("admin socket still present after Stop: %v", err)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestProcess_RestartResetsRuntimeState(t *testing.T) {
	c := testConfig(t)
	p := start(t, c)
	old := p.Pid()

	ans, err := command(context.Background(), p.SocketPath(), "set weight web/blue 7")
	if err != nil || strings.TrimSpace(ans) != "" {
		t.Fatalf("set weight = %q, %v", ans, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if !gone(old) {
		t.Fatalf("old pid %d alive after Restart", old)
	}
	if p.Pid() == old || p.Pid() == 0 {
		t.Fatalf("Pid() after Restart = %d (old %d)", p.Pid(), old)
	}
	ans, err = command(ctx, p.SocketPath(), "get weight web/blue")
	if err != nil || !strings.HasPrefix(ans, "100 (initial 100)") {
		t.Fatalf("get weight after Restart = %q, %v; want the config's weight", ans, err)
	}
	if body := get(t, c.FrontendAddr); body != "blue" {
		t.Fatalf("GET after Restart = %q, want blue", body)
	}
}

func TestProcess_ExitedWhenKilledElsewhere(t *testing.T) {
	p := start(t, testConfig(t))
	if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("Exited not closed after SIGKILL")
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop after external kill: %v", err)
	}
}

func TestProcess_StartFailureReportsStderr(t *testing.T) {
	c := testConfig(t)
	// Hold the frontend port so HAProxy cannot bind it.
	l, err := net.Listen("tcp", c.FrontendAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := Start(ctx, c)
	if err == nil {
		p.Stop()
		t.Fatal("Start succeeded on a port already in use")
	}
	if !strings.Contains(err.Error(), "ALERT") || !strings.Contains(err.Error(), c.FrontendAddr) {
		t.Fatalf("Start error lacks haproxy's stderr: %v", err)
	}
	t.Logf("Start error as an operator sees it: %v", err)
}

func TestProcess_LogSocketReceivesRequestLines(t *testing.T) {
	c := testConfig(t)
	c.LogSocket = filepath.Join(c.Dir, "log.sock")
	logs, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: c.LogSocket, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	start(t, c)

	get(t, c.FrontendAddr)
	if err := logs.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8192)
	n, err := logs.Read(buf)
	if err != nil {
		t.Fatalf("no log line from haproxy: %v", err)
	}
	line := string(buf[:n])
	for _, want := range []string{"backend=web ", "server=blue ", "status=200 ", "tt=", "tr=", "term=----"} {
		if !strings.Contains(line, want) {
			t.Errorf("log line %q lacks %q", line, want)
		}
	}
}

func TestProcess_HealthChecksMarkDeadServerDown(t *testing.T) {
	c := testConfig(t)
	c.HealthChecks = true
	deadPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	c.Servers[1].Addr = fmt.Sprintf("127.0.0.1:%d", deadPort)
	p := start(t, c)

	var last string
	waitFor(t, 10*time.Second, func() bool {
		ans, err := command(context.Background(), p.SocketPath(), "show stat web 4 -1")
		last = fmt.Sprintf("%q, %v", ans, err)
		_, green, found := strings.Cut(ans, "\nweb,green,")
		return err == nil && found && strings.Contains(green, ",DOWN,")
	}, func() string { return "green never marked DOWN by health checks; last show stat: " + last })
}

// waitFor polls cond until it holds, failing with what() after timeout.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
		<-tick.C
	}
}

func TestFreePort_Bindable(t *testing.T) {
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatalf("FreePort %d not bindable: %v", port, err)
	}
	l.Close()
}

func TestStart_PicksAFreePortForPortZero(t *testing.T) {
	c := testConfig(t)
	c.FrontendAddr = "127.0.0.1:0"
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	p, err := Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Stop() })
	if strings.HasSuffix(p.FrontendAddr(), ":0") {
		t.Fatalf("frontend %s", p.FrontendAddr())
	}
	if body := get(t, p.FrontendAddr()); body != "blue" {
		t.Fatalf("through %s: %q", p.FrontendAddr(), body)
	}
}
