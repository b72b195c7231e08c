package web

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// overviewAt is an overview as /v1/events sends it, its times in UTC.
const overviewAt = `{"answeredBy":"c1","leader":"c1","at":"2026-03-01T08:00:05Z",
"rollouts":{"rollouts":[{"rollout":{"id":"web-1","spec":{"service":"web","from":"blue","to":"green"},
"phase":"ROLLOUT_PHASE_PROGRESSING","history":[{"at":"2026-03-01T08:00:00Z","index":"4",
"phase":"ROLLOUT_PHASE_PROGRESSING","message":"started"}]},"position":"wave 1/1 all"}]},
"drills":{"drills":[{"drill":{"id":"d1","spec":{"service":"web"},"phase":"DRILL_PHASE_SCHEDULED",
"endAt":"2026-03-01T09:30:00Z"}}]},"killSwitch":{"liveDrills":1}}`

// The dashboard prints times as the CLI and the audit log do, in UTC and
// marked so, whatever the zone of the browser that opens it: an operator
// laying a history line from the dashboard beside the same line from
// rollout history must read the same time.
func TestDashboard_PrintsTimesInUTCWhateverTheBrowsersZone(t *testing.T) {
	text := renderOverview(t, overviewAt, `[data-rollout="web-1"]`)
	for _, want := range []string{"updated 08:00:05 UTC", "08:00:00 UTC #4", "09:30:00 UTC"} {
		if !strings.Contains(text, want) {
			t.Errorf("the dashboard lacks %q:\n%s", want, text)
		}
	}
}

// overviewLargeWave has a wave of 10,000 nodes of which the overview lists
// two, the one behind first, and five stale nodes of which it names one.
const overviewLargeWave = `{"answeredBy":"c1","leader":"c1","at":"2026-03-01T08:00:05Z",
"fleet":{"services":[{"service":"web","epoch":"1","generation":"12","live":10000,"converged":9999,
"staleNodes":["edge-00001"],"omittedStaleNodes":4,
"waves":[{"wave":"main","index":0,"omittedNodes":9998,"nodes":[
{"node":"edge-07311","appliedEpoch":"1","appliedGeneration":"11","driver":"DRIVER_HEALTH_OK"},
{"node":"edge-00000","appliedEpoch":"1","appliedGeneration":"12","driver":"DRIVER_HEALTH_OK"}]}]}]},
"killSwitch":{}}`

// A wave the overview lists only in part says how many nodes it left out
// and where every one is listed; so do the stale nodes it names.
func TestDashboard_SaysHowManyNodesOfALargeWaveItLeftOut(t *testing.T) {
	text := renderOverview(t, overviewLargeWave, `[data-node="edge-07311"]`)
	want := "and 9998 more nodes of this wave, not listed here (the nodes that need a look are listed first); switchyard fleet status web lists every one"
	if !strings.Contains(text, want) || !strings.Contains(text, "edge-00000") || !strings.Contains(text, "stale: edge-00001 and 4 more") {
		t.Errorf("the dashboard lacks %q:\n%s", want, text)
	}
}

// renderOverview opens the dashboard in headless Chromium (in a zone five
// and a half hours east of UTC) with a live stream that sends overview,
// waits for the element sel, and returns the page's text.
func renderOverview(t *testing.T, overview, sel string) string {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("the dashboard test needs Debian's chromium package (apt-get install chromium): %v", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /ui/", http.StripPrefix("/ui/", Handler()))
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		data := strings.ReplaceAll(overview, "\n", "")
		fmt.Fprintf(w, "retry: 2000\n\nevent: overview\ndata: %s\n\n", data)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("proxy-server", "direct://"),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	// Five and a half hours east of UTC: local times would read 13:30.
	if _, err := chromedp.Call(browser, emulation.SetTimezoneOverride, emulation.SetTimezoneOverrideParams{TimezoneID: "Asia/Kolkata"}); err != nil {
		t.Fatalf("set the browser's zone: %v", err)
	}
	if err := chromedp.Do(browser, chromedp.Navigate("http://"+ln.Addr().String()+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		t.Fatalf("open the dashboard: %v", err)
	}
	text, err := chromedp.Run(browser, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatal(err)
	}
	return text
}
