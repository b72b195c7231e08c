package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// dashboardCanary advances once on its own (20% → 40%), then holds at 40%
// long enough that only the judge can end it.
const dashboardCanary = `
version: v1
name: web-dash
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {duration: 8s}
      - setWeight: 40
      - pause: {duration: 10m}
analysis:
  window: 3s
  minRequests: 20
`

// dashboardView is what the test reads from the page.
type dashboardView struct {
	Found      bool    `json:"found"`
	Phase      string  `json:"phase"`
	Position   string  `json:"position"`
	ErrPoints  int     `json:"errPoints"`
	LatPoints  int     `json:"latPoints"`
	Evidence   string  `json:"evidence"`
	History    string  `json:"history"`
	FleetNodes int     `json:"fleetNodes"`
	Conn       string  `json:"conn"`
	LoadedAt   float64 `json:"loadedAt"`
	Events     int     `json:"events"`
	Error      string  `json:"error"`
	FleetText  string  `json:"fleetText"`
}

const readDashboard = `(() => {
  const page = window.switchyardPage || {};
  const out = {found: false, loadedAt: page.loadedAt || 0, events: page.events || 0, error: page.error || "",
    fleetText: (document.getElementById("fleet") || {}).innerText || "",
    conn: (document.getElementById("conn") || {dataset: {}}).dataset.state || "",
    fleetNodes: document.querySelectorAll("#fleet tr[data-node]").length};
  const r = document.querySelector('[data-rollout="web-dash"]');
  if (!r) return out;
  const text = (sel) => { const e = r.querySelector(sel); return e ? e.textContent : ""; };
  const points = (sel) => { const e = r.querySelector(sel); return e ? Number(e.dataset.points) : 0; };
  return Object.assign(out, {found: true, phase: r.dataset.phase, position: text('[data-field="position"]'),
    errPoints: points('[data-chart="errors"]'), latPoints: points('[data-chart="latency"]'),
    evidence: text('[data-evidence="rollback"]'), history: text('[data-field="history"]')});
})()`

// TestDashboard_BrowserShowsCanaryAdvanceThenAutomaticRollback opens the
// dashboard of a real fleet (3 nodes, real HAProxy, load) in headless
// Chromium with the viewer token, and watches, without reloading the page,
// the canary advance from 20% to 40% with charted telemetry, then green
// fail and the judge roll the fleet back, with the evidence shown. A
// screenshot of the end is kept as a test artifact (go test -artifacts),
// and copied to $SWITCHYARD_SCREENSHOT_DIR when set.
func TestDashboard_BrowserShowsCanaryAdvanceThenAutomaticRollback(t *testing.T) {
	// Serial (no t.Parallel): headless Chromium beside a loaded 3-node fleet
	// is CPU-heavy.
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the dashboard test needs Debian's chromium package (apt-get install chromium): %v", err)
	}
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	tokenFile := filepath.Join(t.TempDir(), "viewer.token")
	const token = "dashboard-test-token-0123456789abcdef"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be,
		DevArgs: []string{"--viewer-token-file", tokenFile}})
	stop := load(ctx, t, f, 60)
	defer stop()

	// Chromium, headless, on its own profile; it only ever talks to
	// 127.0.0.1 (the coordinator, and its DevTools port for chromedp).
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox, // CI runs as root
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 2000),
		chromedp.Flag("proxy-server", "direct://"),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	if err := chromedp.Do(browser, chromedp.Navigate("http://"+f.CoordinatorHTTP+"/ui/?token="+token)); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	defer func() {
		// Close Chromium and check that its process is gone.
		proc := chromedp.FromContext(browser).Browser.Process()
		if err := chromedp.Cancel(browser); err != nil {
			t.Errorf("close chromium: %v", err)
		}
		cancelAlloc()
		if proc != nil {
			if err := proc.Signal(syscall.Signal(0)); err == nil {
				t.Errorf("chromium (pid %d) still running after the test", proc.Pid)
			}
		}
	}()

	var view dashboardView
	read := func() dashboardView {
		v, err := chromedp.Run(browser, chromedp.Evaluate[dashboardView](readDashboard))
		if err != nil {
			t.Fatalf("read the dashboard: %v", err)
		}
		return v
	}
	waitPage := func(what string, d time.Duration, cond func(v dashboardView) bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			view = read()
			if cond(view) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("dashboard did not show %s within %s; it shows %+v", what, d, view)
			}
			select {
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		}
	}

	// Logged in by the token (cookie) and live on the stream.
	waitPage("the live stream", 20*time.Second, func(v dashboardView) bool { return v.Conn == "live" && v.Events >= 1 })
	loadedAt := view.LoadedAt

	if _, err := f.Apply(ctx, writeSpec(t, "dash", dashboardCanary)); err != nil {
		t.Fatal(err)
	}
	waitPage("the canary at 20% and the fleet", 30*time.Second, func(v dashboardView) bool {
		return v.Found && v.Phase == "progressing" && strings.Contains(v.Position, "green at 20%") && v.FleetNodes == 3
	})
	t.Logf("dashboard: %s", view.Position)
	waitPage("the canary advanced to 40% with telemetry charted", 60*time.Second, func(v dashboardView) bool {
		return v.Found && strings.Contains(v.Position, "step 4/4") && strings.Contains(v.Position, "green at 40%") &&
			v.ErrPoints >= 5 && v.LatPoints >= 5
	})
	t.Logf("dashboard: %s; %d error-rate points charted", view.Position, view.ErrPoints)
	if _, err := f.WaitRollout(ctx, "web-dash", func(v *sv1.RolloutView) error {
		if v.GetConverged() != uint32(len(f.Nodes)) {
			return fmt.Errorf("%d nodes converged", v.GetConverged())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	// Green breaks; nobody acts but the judge.
	broke := time.Now()
	setGreen(t, f, 0.3)
	waitPage("the automatic rollback with its evidence", 90*time.Second, func(v dashboardView) bool {
		return v.Found && v.Phase == "rolled-back" && strings.Contains(v.Evidence, "Rollback evidence") &&
			strings.Contains(v.Evidence, "statistic") && strings.Contains(v.Position, "every node back on blue")
	})
	t.Logf("dashboard showed the rollback %s after green broke: %s", time.Since(broke).Round(100*time.Millisecond), view.Evidence)
	if !strings.Contains(view.History, "rolling-back") || !strings.Contains(view.History, "rolled-back") {
		t.Errorf("history on the page: %s", view.History)
	}
	// The same page all along: updates came from the stream.
	if view.LoadedAt != loadedAt || view.Events < 3 {
		t.Errorf("page loaded at %v, now %v, after %d events: want the same page, updated live", loadedAt, view.LoadedAt, view.Events)
	}

	png, err := chromedp.Run(browser, chromedp.FullScreenshot(100)) // quality 100: PNG
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	shot := filepath.Join(t.ArtifactDir(), "dashboard-rollback.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes; kept with go test -artifacts)", shot, len(png))
	if dir := os.Getenv("SWITCHYARD_SCREENSHOT_DIR"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		keep := filepath.Join(dir, "dashboard-rollback.png")
		if err := os.WriteFile(keep, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot copied to %s", keep)
	}
}
