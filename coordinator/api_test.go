package coordinator

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/certs"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const apiCanary = `version: v1
name: web-canary
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {}
waves:
  - name: eu
    selector: {region: eu}
  - name: everyone
`

// applyAPICanary applies apiCanary with intent id and returns the
// generation it committed.
func applyAPICanary(t *testing.T, nc *nats.Conn, id string) uint64 {
	t.Helper()
	sp, err := spec.Parse([]byte(apiCanary))
	if err != nil {
		t.Fatal(err)
	}
	res := send(t, nc, &sv1.Intent{Id: id, Operator: "test", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}})
	if !res.GetAccepted() {
		t.Fatalf("apply: %v", res)
	}
	return res.GetIndex()
}

func getAPI(t *testing.T, url string, out proto.Message, header ...string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && out != nil {
		if err := protojson.Unmarshal(b, out); err != nil {
			t.Fatalf("%s: %v\n%s", url, err, b)
		}
	}
	return resp.StatusCode, string(b)
}

func publishLabelled(t *testing.T, nc *nats.Conn, node, region string, gen uint64, weights map[string]uint32) {
	t.Helper()
	b, _ := proto.Marshal(&sv1.AgentStatus{Node: node, Labels: map[string]string{"region": region}, Services: []*sv1.ServiceStatus{{
		Service: "web", AppliedGeneration: gen, AppliedEpoch: 1, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK,
		Weights: weights, ObservedWeights: weights, ObservedMatches: true,
	}}})
	if err := nc.Publish(bus.StatusSubject(node), b); err != nil {
		t.Fatal(err)
	}
}

// The read API answers the fleet by service, wave and node, the rollout
// with its position, its per-backend series, the drills with the kill
// switch, and the same overview on the live stream; bad names get a 404
// naming the field.
func TestAPI_FleetRolloutSeriesDrillsAndLiveStream(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	base := "http://" + c.srv.HTTPAddr()

	gen := applyAPICanary(t, nc, "i-api")
	w := map[string]uint32{"blue": 80, "green": 20}
	publishLabelled(t, nc, "edge-eu", "eu", gen, w)
	publishLabelled(t, nc, "edge-us", "us", gen, map[string]uint32{"blue": 100, "green": 0})

	var fleet sv1.FleetStatus
	waitFor(t, "two nodes in /v1/fleet", 5*time.Second, func() bool {
		code, _ := getAPI(t, base+"/v1/fleet", &fleet)
		return code == 200 && len(fleet.GetServices()) == 1 && fleet.GetServices()[0].GetLive() == 2
	})
	svc := fleet.GetServices()[0]
	if svc.GetService() != "web" || svc.GetRollout() != "web-canary" || svc.GetGeneration() < gen || fleet.GetAnsweredBy() != "c1" {
		t.Fatalf("service fleet %v", svc)
	}
	if len(svc.GetWaves()) != 2 || svc.GetWaves()[0].GetWave() != "eu" || svc.GetWaves()[1].GetWave() != "everyone" {
		t.Fatalf("waves %v", svc.GetWaves())
	}
	if n := svc.GetWaves()[0].GetNodes(); len(n) != 1 || n[0].GetNode() != "edge-eu" || n[0].GetWave() != "eu" || n[0].GetWeights()["green"] != 20 {
		t.Fatalf("wave eu nodes %v", n)
	}
	if n := svc.GetWaves()[1].GetNodes(); len(n) != 1 || n[0].GetNode() != "edge-us" {
		t.Fatalf("wave everyone nodes %v", n)
	}
	if code, body := getAPI(t, base+"/v1/fleet?service=nope", nil); code != 404 || !strings.Contains(body, `service: no node runs "nope"`) {
		t.Fatalf("unknown service: %d %s", code, body)
	}

	// The eu node applied the first step: the rollout moves on to its pause.
	var rollouts sv1.RolloutsAnswer
	waitFor(t, "the rollout at its pause", 5*time.Second, func() bool {
		code, _ := getAPI(t, base+"/v1/rollouts/web-canary", &rollouts)
		return code == 200 && strings.HasPrefix(rollouts.GetRollouts()[0].GetPosition(), "wave 1/2 eu, step 2/2 pause until approved")
	})
	if v := rollouts.GetRollouts()[0]; len(v.GetRollout().GetHistory()) < 2 {
		t.Fatalf("history %v", v.GetRollout().GetHistory())
	}
	if code, body := getAPI(t, base+"/v1/rollouts/nope/series", nil); code != 404 || !strings.Contains(body, `rollout: no rollout named "nope"`) {
		t.Fatalf("unknown rollout series: %d %s", code, body)
	}

	// Telemetry of the rollout's generation becomes the series.
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			r := seriesReport("edge-eu", time.Now().Truncate(time.Second), 80, 0, 20, 2, 15*time.Millisecond)
			r.RolloutId, r.Generation = "web-canary", gen
			b, _ := proto.Marshal(r)
			_ = nc.Publish(bus.TelemetrySubject("web", "edge-eu"), b)
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stop); <-done }()
	var series sv1.RolloutSeries
	waitFor(t, "series points", 15*time.Second, func() bool {
		code, _ := getAPI(t, base+"/v1/rollouts/web-canary/series", &series)
		return code == 200 && len(series.GetBackends()) == 2 && len(series.GetBackends()[1].GetPoints()) >= 2
	})
	if p := series.GetBackends()[1].GetPoints()[0]; p.GetRequests() == 0 || p.GetErrorRate() <= 0 || p.GetP90Seconds() <= 0 {
		t.Fatalf("green point %v", p)
	}

	var drills sv1.DrillsAnswer
	if code, body := getAPI(t, base+"/v1/drills", &drills); code != 200 || drills.GetKillSwitch() == nil {
		t.Fatalf("drills: %d %s", code, body)
	}

	// The live stream sends the overview at once, with the series.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	var ov sv1.Overview
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	event := ""
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "event: ") {
			event = strings.TrimPrefix(line, "event: ")
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok && event == "overview" {
			if err := protojson.Unmarshal([]byte(data), &ov); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if ov.GetStale() || ov.GetAnsweredBy() != "c1" || len(ov.GetRollouts().GetRollouts()) != 1 || len(ov.GetSeries()) != 1 ||
		len(ov.GetFleet().GetServices()) != 1 || ov.GetKillSwitch() == nil {
		t.Fatalf("overview %v", &ov)
	}
	waitFor(t, "an open stream counted", 5*time.Second, func() bool { return testutil.ToFloat64(c.srv.metrics.eventStreams) == 1 })

	// The dashboard is served from the binary.
	if code, body := getAPI(t, base+"/ui/", nil); code != 200 || !strings.Contains(body, `<script src="app.js"`) {
		t.Fatalf("/ui/: %d %s", code, body)
	}
	if code, body := getAPI(t, base+"/ui/app.js", nil); code != 200 || !strings.Contains(body, `new EventSource("/v1/events")`) {
		t.Fatalf("/ui/app.js: %d", code)
	}
}

// With a viewer token, reads need it (or a cluster certificate); a
// missing or wrong token is refused and counted, and the dashboard's
// ?token= login sets the cookie its requests then carry.
func TestAPI_ViewerTokenGuardsReadsAndDashboard(t *testing.T) {
	_, url := startNATS(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "viewer.token")
	const token = "0123456789abcdef0123456789abcdef"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{NodeID: "c1", DataDir: filepath.Join(dir, "data"), RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning, ViewerTokenFile: tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "leadership", 10*time.Second, func() bool { return testutil.ToFloat64(srv.metrics.isLeader) == 1 })
	base := "http://" + srv.HTTPAddr()

	for _, p := range []string{"/v1/rollouts", "/v1/fleet", "/v1/drills", "/v1/overview", "/v1/events", "/ui/"} {
		if code, body := getAPI(t, base+p, nil); code != 401 || !strings.Contains(body, "viewer token") {
			t.Fatalf("%s without token: %d %s", p, code, body)
		}
	}
	if code, _ := getAPI(t, base+"/v1/overview", nil, "Authorization", "Bearer wrong-token-wrong-token"); code != 401 {
		t.Fatalf("wrong token: %d", code)
	}
	if v := testutil.ToFloat64(srv.metrics.viewerRefused.WithLabelValues("missing")); v != 6 {
		t.Fatalf("missing counted %v, want 6", v)
	}
	if v := testutil.ToFloat64(srv.metrics.viewerRefused.WithLabelValues("wrong")); v != 1 {
		t.Fatalf("wrong counted %v, want 1", v)
	}
	var ov sv1.Overview
	if code, body := getAPI(t, base+"/v1/overview", &ov, "Authorization", "Bearer "+token); code != 200 || ov.GetAnsweredBy() != "c1" {
		t.Fatalf("with token: %d %s", code, body)
	}
	// /healthz and /metrics stay open for probes and Prometheus.
	if code, _ := getAPI(t, base+"/healthz", nil); code != 200 && code != 503 {
		t.Fatalf("/healthz: %d", code)
	}

	// The browser login: ?token= sets the cookie and redirects.
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Get(base + "/ui/?token=" + token)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == viewerCookie {
			cookie = ck
		}
	}
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/" || cookie == nil || !cookie.HttpOnly {
		t.Fatalf("login: %d %q cookie %v", resp.StatusCode, resp.Header.Get("Location"), cookie)
	}
	code, body := getAPI(t, base+"/ui/", nil, "Cookie", fmt.Sprintf("%s=%s", viewerCookie, cookie.Value))
	if code != 200 || !strings.Contains(body, "Switchyard") {
		t.Fatalf("/ui/ with cookie: %d", code)
	}

	// A token file that is too short is refused, naming the flag.
	short := filepath.Join(dir, "short.token")
	_ = os.WriteFile(short, []byte("abc"), 0o600)
	if _, err := loadViewerToken(short); err == nil || !strings.Contains(err.Error(), "--viewer-token-file") {
		t.Fatalf("short token: %v", err)
	}
	if _, err := loadViewerToken(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "--viewer-token-file") {
		t.Fatalf("missing file: %v", err)
	}
}

// Over HTTPS with the cluster CA, the viewer token and a client certificate
// from the cluster CA each open the read API; a browser that trusts the CA
// but has neither is refused.
func TestAPI_ViewerTokenOrClusterCertificateOverHTTPS(t *testing.T) {
	_, url := startNATS(t)
	dir := t.TempDir()
	files := clusterCA(t, "cluster-ca", "c1", "operator")
	tokenFile := filepath.Join(dir, "viewer.token")
	const token = "https-viewer-token-0123456789"
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := New(Config{NodeID: "c1", DataDir: filepath.Join(dir, "data"), RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning,
		ClusterTLS: files["c1"], ViewerTokenFile: tokenFile})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "leadership", 10*time.Second, func() bool { return testutil.ToFloat64(srv.metrics.isLeader) == 1 })

	browserTLS, err := (certs.Files{CA: files["c1"].CA, CALabel: "--cluster-ca"}).Client()
	if err != nil {
		t.Fatal(err)
	}
	withCert, err := files["operator"].Client()
	if err != nil {
		t.Fatal(err)
	}
	get := func(tc *tls.Config, bearer string) int {
		req, _ := http.NewRequest(http.MethodGet, "https://"+srv.HTTPAddr()+"/v1/overview", nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}, Timeout: 5 * time.Second}
		defer c.CloseIdleConnections()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(browserTLS, ""); code != http.StatusUnauthorized {
		t.Fatalf("CA only, no token: %d", code)
	}
	if code := get(browserTLS, token); code != http.StatusOK {
		t.Fatalf("CA and token: %d", code)
	}
	if code := get(withCert, ""); code != http.StatusOK {
		t.Fatalf("cluster certificate: %d", code)
	}
}

// The overview keeps every rollout under way and the newest finished ones,
// in their order, and counts the finished ones it leaves out.
func TestAPI_OverviewShowsTheNewestFinishedRollouts(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	view := func(id string, phase sv1.RolloutPhase, updated int) *sv1.RolloutView {
		return &sv1.RolloutView{Rollout: &sv1.Rollout{Id: id, Phase: phase, UpdatedAt: timestamppb.New(t0.Add(time.Duration(updated) * time.Minute))}}
	}
	done, back, going := sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING
	views := []*sv1.RolloutView{
		view("a", done, 1), view("b", going, 0), view("c", back, 5), view("d", done, 3), view("e", done, 4),
	}
	over := func(v *sv1.RolloutView) (bool, time.Time) {
		return state.Terminal(v.GetRollout().GetPhase()), v.GetRollout().GetUpdatedAt().AsTime()
	}
	shown, older := recent(views, 2, over)
	var ids []string
	for _, v := range shown {
		ids = append(ids, v.GetRollout().GetId())
	}
	if got := strings.Join(ids, ","); got != "b,c,e" || older != 2 {
		t.Fatalf("shown %s, %d older; want b,c,e (under way, then the two finished last) and 2 older", got, older)
	}
	if shown, older := recent(views, 4, over); len(shown) != 5 || older != 0 {
		t.Fatalf("with room for every finished rollout: %d shown, %d older", len(shown), older)
	}
}
