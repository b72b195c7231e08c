package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// startBackend runs the test backend with extra flags and returns its base
// URL once /healthz answers.
func startBackend(t *testing.T, ctx context.Context, name string, extra ...string) (string, *harness.Process) {
	t.Helper()
	backend := backendBin.get(t)
	// A port of the harness's set: no fleet of a test running beside this
	// one is given it before the backend binds it.
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p, err := harness.StartProcess(harness.ProcessSpec{
		Name:   name,
		Path:   backend,
		Args:   append([]string{"--addr", addr, "--name", name, "--node", "edge-9"}, extra...),
		LogDir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(p.Tail(20))
		}
		if err := p.Stop(); err != nil {
			t.Errorf("backend did not exit cleanly on SIGTERM: %v", err)
		}
	})
	base := "http://" + addr
	harnesstest.Eventually(t, ctx, name+" healthy", func(ctx context.Context) error {
		if !p.Running() {
			return harness.Permanent(fmt.Errorf("exited: %v", p.Stop()))
		}
		code, _, _, err := get(ctx, base+"/healthz")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("/healthz answered %d", code)
		}
		return err
	})
	return base, p
}

func get(ctx context.Context, url string) (code int, header http.Header, body string, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b), err
}

func TestBackend_SaysWhoAnswered(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 2*time.Minute)
	base, _ := startBackend(t, ctx, "green")
	code, h, body, err := get(ctx, base+"/")
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusOK || body != "green\n" || h.Get("X-Backend") != "green" || h.Get("X-Node") != "edge-9" {
		t.Fatalf("GET / = %d %q X-Backend=%q X-Node=%q; want 200 \"green\\n\" green edge-9", code, body, h.Get("X-Backend"), h.Get("X-Node"))
	}
	if code, _, _, _ := get(ctx, base+"/nope"); code != http.StatusNotFound {
		t.Errorf("GET /nope = %d, want 404", code)
	}
}

func TestBackend_ErrorRateAndLatency(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 2*time.Minute)
	const latency = 100 * time.Millisecond
	base, _ := startBackend(t, ctx, "green", "--error-rate", "1", "--latency", latency.String())

	start := time.Now()
	code, h, body, err := get(ctx, base+"/")
	if err != nil {
		t.Fatal(err)
	}
	// A lower bound only: the delay must be there, how much more the machine
	// adds is not this test's business.
	if took := time.Since(start); took < latency {
		t.Errorf("GET / took %v, want at least the configured %v", took, latency)
	}
	if code != http.StatusServiceUnavailable || h.Get("X-Backend") != "green" || strings.TrimSpace(body) != "green" {
		t.Errorf("GET / with --error-rate 1 = %d X-Backend=%q %q; want 503 from green", code, h.Get("X-Backend"), body)
	}
	// Health checks pass while traffic fails: the bad green only analysis
	// of real traffic can catch.
	if code, _, _, err := get(ctx, base+"/healthz"); err != nil || code != http.StatusOK {
		t.Errorf("GET /healthz = %d, %v; want 200", code, err)
	}
}

func TestBackend_RefusesBadFlags(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 2*time.Minute)
	backend := backendBin.get(t)
	for _, args := range [][]string{
		{"--name", "green", "--error-rate", "1.5"},
		{"--name", "green", "--latency", "-1s"},
		{"--addr", "127.0.0.1:0"},
	} {
		res, err := harness.RunCLI(ctx, backend, nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode == 0 {
			t.Errorf("backend %v exited 0, want a refusal", args)
		}
	}
}
