package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/agent/state"
	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// These tests run the agent against a real HAProxy (Debian's haproxy
// package; CI installs it) fronting in-test backends on 127.0.0.1, with
// real load through it.

var (
	allBlue  = map[string]uint32{"blue": 100, "green": 0}
	allGreen = map[string]uint32{"blue": 0, "green": 100}
)

// expectAllTo makes n requests through HAProxy and fails unless every one
// is answered 200 by backend.
func expectAllTo(t *testing.T, lp *liveProxy, n int, backend string) {
	t.Helper()
	l := startLoad(t, lp.frontend, 1, int64(n))
	l.wait(t, 30*time.Second)
	byBody, byStatus, failures := l.res.snapshot()
	if byBody[backend] != n || failures != 0 {
		t.Fatalf("%d requests: answered by %v, statuses %v, %d failures; want all by %s", n, byBody, byStatus, failures, backend)
	}
}

func TestAgentLive_HAProxyRestartRestoredWithinOneResync(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	cfg.Resync = time.Second
	ra := startLiveAgent(t, cfg)

	b.put(t, progressing(2, allGreen))
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, allGreen)
	l := startLoad(t, lp.frontend, 4, 0)

	// HAProxy restarts under the agent with its config's weights (blue).
	if err := lp.proc.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	// The agent usually has green back before Restart returns (it watches
	// the admin socket and reads HAProxy back every observe interval); at
	// the latest the next resync tick finds it. The margin covers a slow
	// CI machine, not a second period.
	lp.waitWeights(t, cfg.Resync+time.Second, allGreen)
	t.Logf("weights restored %s after the restart (resync %s)", time.Since(restarted).Round(time.Millisecond), cfg.Resync)
	ra.waitMetric(t, 1, "switchyard_agent_drift_total", "service", "web")
	if gen, _ := ra.Applied("web"); gen != 2 {
		t.Fatalf("applied generation = %d, want 2 (a repair is not a new generation)", gen)
	}
	l.stop()
	expectAllTo(t, lp, 20, "green")
}

// stallingDriver applies only the raising half of a change, as the HAProxy
// driver does first, then hangs until its context ends: an agent killed
// mid-apply.
type stallingDriver struct {
	*haproxy.Driver
	once    sync.Once
	stalled chan struct{}
}

func (d *stallingDriver) Apply(ctx context.Context, weights map[string]uint32) error {
	have, err := d.Driver.Weights(ctx)
	if err != nil {
		return err
	}
	raise := map[string]uint32{}
	for b, w := range weights {
		if w > have[b] {
			raise[b] = w
		}
	}
	if len(raise) == len(weights) || len(raise) == 0 {
		return d.Driver.Apply(ctx, weights)
	}
	if err := d.Driver.Apply(ctx, raise); err != nil {
		return err
	}
	d.once.Do(func() { close(d.stalled) })
	<-ctx.Done()
	return ctx.Err()
}

func TestAgentLive_KilledMidApplyConvergesOnRestart(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp)
	stall := &stallingDriver{Driver: lp.driver(t), stalled: make(chan struct{})}
	first, err := runAgentWith(t, cfg, func(string, ServiceConfig) (driver.Driver, error) { return stall, nil })
	if err != nil {
		t.Fatal(err)
	}
	b.put(t, progressing(1, allBlue))
	first.waitApplied(t, "web", 1)

	l := startLoad(t, lp.frontend, 4, 0)
	b.put(t, progressing(2, allGreen))
	select {
	case <-stall.stalled:
	case <-time.After(10 * time.Second):
		t.Fatal("the apply of generation 2 never reached its midpoint")
	}
	if got := lp.weights(t); !maps.Equal(got, map[string]uint32{"blue": 100, "green": 100}) {
		t.Fatalf("mid-apply HAProxy has %v, want green raised and blue not yet lowered", got)
	}
	// The agent dies here. Like SIGKILL, nothing after the apply runs: the
	// local state keeps the last committed generation (bbolt commits are
	// atomic), and HAProxy keeps the half-applied weights.
	first.stop(t)

	second := startLiveAgent(t, cfg)
	second.waitApplied(t, "web", 2)
	lp.waitWeights(t, 10*time.Second, allGreen)
	l.stop()
	if _, _, failures := l.res.snapshot(); failures != 0 {
		t.Errorf("%d requests failed while the agent died and came back; HAProxy must keep serving", failures)
	}
	expectAllTo(t, lp, 20, "green")

	second.stop(t)
	st, err := state.Open(cfg.StateDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	saved, err := st.Load("web")
	if err != nil || saved.GetDesired().GetGeneration() != 2 || !maps.Equal(saved.GetWeights(), allGreen) {
		t.Fatalf("saved state = %v, %v; want generation 2 with %v", saved, err, allGreen)
	}
}

func TestAgentLive_BusOutageConvergesToNewestGeneration(t *testing.T) {
	storeDir := t.TempDir()
	b := startBusAt(t, storeDir)
	lp := startProxy(t, false)
	cfg := liveConfig(t, b.url, lp) // resync 1h: only the reconnect brings the new document
	ra := startLiveAgent(t, cfg)

	half := map[string]uint32{"blue": 50, "green": 50}
	b.put(t, progressing(2, half))
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, half)

	l := startLoad(t, lp.frontend, 4, 0)
	port := b.stopServer()
	ra.waitMetric(t, 0, "switchyard_agent_bus_connected")
	// The outage is short here, but nothing in the agent depends on its
	// length: nats.go keeps retrying every 250ms (plus jitter) forever, and
	// the reconnect triggers the same Get as the one a 20s outage would.
	const outage = 3 * time.Second
	waitFor(t, outage+5*time.Second, "an outage of "+outage.String(), func() error {
		if d, down := ra.BusDownFor(); !down || d < outage {
			return fmt.Errorf("bus down for %s (%v)", d, down)
		}
		return nil
	})
	_, _, failures := l.res.snapshot()
	if failures != 0 {
		t.Fatalf("%d requests failed during the bus outage; HAProxy must keep serving the applied weights", failures)
	}
	if gen, w := ra.Applied("web"); gen != 2 || !maps.Equal(w, half) {
		t.Fatalf("during the outage the agent has generation %d %v, want 2 %v", gen, w, half)
	}

	// The coordinator moves on as soon as NATS is back; the document may
	// reach the agent by push or by the Get after its reconnect.
	b.startServer(t, storeDir, port)
	b.put(t, progressing(3, allGreen))
	waitFor(t, 15*time.Second, "generation 3 after the outage", func() error {
		if gen, _ := ra.Applied("web"); gen != 3 {
			return fmt.Errorf("applied generation %d", gen)
		}
		return nil
	})
	lp.waitWeights(t, 5*time.Second, allGreen)
	if n := ra.metric(t, "switchyard_agent_bus_reconnects_total"); n < 1 {
		t.Errorf("bus reconnects = %v, want at least 1", n)
	}
	l.stop()
	expectAllTo(t, lp, 20, "green")
}

func TestAgentLive_TelemetryMatchesRealTraffic(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, true)
	// Green answers after 50ms, and 503 for every 20th request: 5% errors.
	const delay = 50 * time.Millisecond
	lp.green.delay.Store(int64(delay))
	lp.green.errEvery.Store(20)
	cfg := liveConfig(t, b.url, lp)
	reports := b.telemetry(t, "web")
	ra := startLiveAgent(t, cfg)

	b.put(t, progressing(2, allGreen))
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, allGreen)

	// Reports of windows before the switch carry no green traffic; drop
	// them so the header checks below see generation 2's.
	for drained := false; !drained; {
		select {
		case <-reports:
		default:
			drained = true
		}
	}
	const total = 2400
	l := startLoad(t, lp.frontend, 32, total)
	l.wait(t, 60*time.Second)
	_, byStatus, failures := l.res.snapshot()
	if failures != 0 || byStatus[200]+byStatus[503] != total {
		t.Fatalf("load: statuses %v, %d failures; want %d answers", byStatus, failures, total)
	}

	var green, blue trafficTotals
	var sawGeneration bool
	var dropped uint64
	// switches counts the windows counted from another source than the
	// window before (the log, or "show stat" when log lines were dropped).
	var switches int64
	lastFromStat := false
	// Collect until every request's log line is accounted for (arrived, or
	// reported dropped by HAProxy), and two windows more for requests that
	// "show stat" counted later.
	deadline := time.After(30 * time.Second)
	for settled := 0; settled < 2; {
		select {
		case r := <-reports:
			if r.GetNode() != "edge-1" || r.GetService() != "web" {
				t.Fatalf("report header: node %q service %q", r.GetNode(), r.GetService())
			}
			if !r.GetWindowEnd().AsTime().After(r.GetWindowStart().AsTime()) {
				t.Fatalf("window %v..%v", r.GetWindowStart().AsTime(), r.GetWindowEnd().AsTime())
			}
			switch r.GetGeneration() {
			case 2:
				sawGeneration = true
				if r.GetRolloutId() != "r1" || r.GetWave() != 0 || backendHealth(r, "green").GetWeight() != 100 {
					t.Fatalf("report of generation 2: rollout %q wave %d green %v", r.GetRolloutId(), r.GetWave(), backendHealth(r, "green"))
				}
			case 0: // the window in which generation 2 applied
			default:
				t.Fatalf("report generation %d, want 2 or 0", r.GetGeneration())
			}
			green.add(t, r, "green")
			blue.add(t, r, "blue")
			dropped += r.GetDroppedLogLines()
			if fromStat := r.GetDroppedLogLines() > 0; fromStat != lastFromStat {
				switches++
				lastFromStat = fromStat
			}
			if uint64(green.latency.Count())+dropped >= total {
				settled++
			}
		case <-deadline:
			t.Fatalf("within 30s reports accounted for %v log lines and %d dropped ones of %d requests", green.latency.Count(), dropped, total)
		}
	}
	// A window in which HAProxy dropped log lines counts from "show stat",
	// the others from the log; a request in flight where one such window
	// follows the other (at most the load's 32 clients) can be counted
	// twice or not at all. Beyond that, 1%.
	slack := total/100 + 32*switches
	if d := int64(green.requests) - total; d < -slack || d > slack || blue.requests != 0 {
		t.Fatalf("reported requests: green %d, blue %d; want %d ± %d (1%% and 32 for each of %d changes of source) and 0",
			green.requests, blue.requests, total, slack, switches)
	}
	if !sawGeneration {
		t.Error("no report carried generation 2")
	}
	// The backend made exactly 5% errors (clients saw byStatus[503]).
	rate := float64(green.errors) / float64(green.requests)
	if math.Abs(rate-0.05) > 0.015 {
		t.Errorf("reported error rate %.2f%% (%d/%d), want 5%% ± 1.5 points; clients saw %d 503s", 100*rate, green.errors, green.requests, byStatus[503])
	}
	// Every request took at least 50ms; the sketch is accurate to 1%.
	// HAProxy times each request within what its client waited, so the
	// reported p99 is at most the clients' p99 (plus the sketch's 1% and
	// HAProxy's millisecond); 150ms over the delay is allowed in any case.
	p99 := time.Duration(green.latency.Quantile(0.99) * float64(time.Second))
	clientP99 := l.res.quantile(0.99)
	const margin = 150 * time.Millisecond
	lo := time.Duration(float64(delay) * (1 - 0.01))
	hi := max(delay+margin, time.Duration(float64(clientP99)*1.01)+time.Millisecond)
	if p99 < lo || p99 > hi {
		t.Errorf("reported p99 = %s, want within [%s, %s] (clients saw p99 %s)", p99, lo, hi, clientP99)
	}
	// HAProxy drops a log line rather than wait when the socket's queue
	// (net.unix.max_dgram_qlen, 10 by default) is full, which bursts of 32
	// clients in one process with the agent can do. Those windows count
	// from "show stat" instead; the latency sketch holds the lines that
	// arrived, and the reports say how many did not.
	// How many HAProxy drops depends on how fast the agent reads, which a
	// machine loaded by other tests slows: the accounting must be exact,
	// and most lines sampled.
	if n := uint64(green.latency.Count()); n+dropped != total || n < total/2 {
		t.Errorf("latency sketch holds %d samples and %d lines were reported dropped; want them to add up to %d, with at least half sampled", n, dropped, total)
	}
	if green.maxConns == 0 {
		t.Error("no report showed an open connection to green under load")
	}
	t.Logf("reported over %d windows: %d requests, %d errors (%.2f%%), %d log lines dropped by HAProxy, p50 %s, p99 %s, max current connections %d",
		green.reports, green.requests, green.errors, 100*rate, dropped,
		time.Duration(green.latency.Quantile(0.5)*float64(time.Second)), p99, green.maxConns)
}

func TestAgentLive_TelemetryFromShowStatSurvivesRestart(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, false) // no log socket: counters only, no latency
	lp.green.errEvery.Store(20)
	cfg := liveConfig(t, b.url, lp)
	cfg.Resync = 500 * time.Millisecond
	reports := b.telemetry(t, "web")
	ra := startLiveAgent(t, cfg)
	b.put(t, progressing(2, allGreen))
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, allGreen)

	var green trafficTotals
	collect := func(want uint64) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for green.requests < want {
			select {
			case r := <-reports:
				if bh := backendHealth(r, "green"); bh != nil && len(bh.GetLatency().GetCounts())+len(bh.GetLatency().GetWholeCounts()) > 0 {
					t.Fatalf("latency reported without a log socket: %v", bh.GetLatency())
				}
				green.add(t, r, "green")
			case <-deadline:
				t.Logf("metrics: published %v nodata %v", ra.metric(t, "switchyard_agent_telemetry_reports_total", "result", "published"), ra.metric(t, "switchyard_agent_telemetry_reports_total", "result", "no_data"))
				st, err := lp.driver(t).Stats(context.Background())
				t.Logf("stats %+v %v", st, err)
				t.Fatalf("reports counted %d green requests, want %d", green.requests, want)
			}
		}
		if green.requests != want {
			t.Fatalf("reports counted %d green requests, want %d", green.requests, want)
		}
	}
	expectStatuses := func(n int) {
		l := startLoad(t, lp.frontend, 4, int64(n))
		l.wait(t, 30*time.Second)
	}
	expectStatuses(400)
	collect(400)
	if green.errors != 20 {
		t.Fatalf("errors = %d, want 20 (every 20th of 400)", green.errors)
	}

	// HAProxy restarts: its counters start from zero. The agent must not
	// report a negative or huge delta; after the restart it counts anew.
	if err := lp.proc.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	lp.waitWeights(t, 5*time.Second, allGreen) // resync repairs the weights
	expectStatuses(200)
	collect(600)
	if green.errors != 30 {
		t.Fatalf("errors = %d after the restart, want 30", green.errors)
	}
}

func TestAgentLive_FailedPreflightKeepsBlue(t *testing.T) {
	b := startBus(t)
	statuses := b.statuses(t, "edge-1")
	lp := startProxy(t, false)
	lp.green.healthy.Store(false)
	cfg := liveConfig(t, b.url, lp)
	svc := cfg.Services["web"]
	svc.Probes = &ProbesConfig{Preflight: map[string]*HTTPCheck{
		"green": {URL: lp.green.url() + "/healthz", BodyContains: "ok", MaxLatency: time.Second, Timeout: time.Second},
	}}
	cfg.Services["web"] = svc
	ra := startLiveAgent(t, cfg)
	b.put(t, progressing(1, allBlue))
	ra.waitApplied(t, "web", 1)

	b.put(t, progressing(2, allGreen))
	st := waitStatus(t, statuses, "the preflight failure", func(st *sv1.AgentStatus) bool {
		return strings.Contains(serviceStatus(st, "web").GetMessage(), "preflight")
	})
	s := serviceStatus(st, "web")
	for _, want := range []string{"generation 2 not applied", `preflight of backend "green" failed`, "status 500, want 200", "keeping the current weights"} {
		if !strings.Contains(s.GetMessage(), want) {
			t.Errorf("status message %q lacks %q", s.GetMessage(), want)
		}
	}
	if s.GetAppliedGeneration() != 1 || !maps.Equal(s.GetWeights(), allBlue) || s.GetDriver() != sv1.DriverHealth_DRIVER_HEALTH_OK {
		t.Errorf("status = %v; want generation 1 on blue with a healthy driver", s)
	}
	// Retried with backoff while the document stands.
	waitFor(t, 10*time.Second, "preflight retries", func() error {
		if n := ra.metric(t, "switchyard_agent_probes_total", "backend", "green", "kind", "preflight", "result", "failed"); n < 3 {
			return fmt.Errorf("%v failed preflights", n)
		}
		return nil
	})
	if got := lp.weights(t); !maps.Equal(got, allBlue) {
		t.Fatalf("HAProxy has %v while the preflight fails, want %v", got, allBlue)
	}
	expectAllTo(t, lp, 20, "blue")

	// Green recovers: the next retry passes and the document applies.
	lp.green.healthy.Store(true)
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, allGreen)
	waitStatus(t, statuses, "generation 2 with the message cleared", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 2 && s.GetMessage() == ""
	})
	expectAllTo(t, lp, 20, "green")
}

func TestAgentLive_SyntheticTransactionsReportedApart(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, true)
	cfg := liveConfig(t, b.url, lp)
	cfg.TelemetryInterval = 100 * time.Millisecond
	svc := cfg.Services["web"]
	svc.Probes = &ProbesConfig{Synthetic: &SyntheticConfig{
		Interval: 100 * time.Millisecond,
		Transactions: map[string][]*HTTPCheck{
			"green": {
				{Name: "login", Method: "POST", URL: lp.green.url() + "/login", BodyContains: "welcome"},
				{Name: "account", URL: lp.green.url() + "/account", BodyContains: "account of green"},
			},
			"blue": {{Name: "account-without-login", URL: lp.blue.url() + "/account", ExpectStatus: 401}},
		},
	}}
	cfg.Services["web"] = svc
	reports := b.telemetry(t, "web")
	ra := startLiveAgent(t, cfg)

	b.put(t, progressing(2, map[string]uint32{"blue": 90, "green": 10}))
	ra.waitApplied(t, "web", 2)

	seen := map[string]*sv1.ProbeResult{}
	deadline := time.After(15 * time.Second)
	for len(seen) < 3 {
		select {
		case r := <-reports:
			for _, p := range r.GetProbes() {
				seen[p.GetBackend()+"/"+p.GetName()] = p
			}
			// Probes go to the backends directly, never through HAProxy:
			// real traffic stays zero.
			for _, bh := range r.GetBackends() {
				if bh.GetRequests() != 0 {
					t.Fatalf("probes counted as real traffic: %v", bh)
				}
			}
		case <-deadline:
			t.Fatalf("probes reported within 15s: %v", seen)
		}
	}
	for _, key := range []string{"green/login", "green/account", "blue/account-without-login"} {
		p := seen[key]
		if p == nil || !p.GetOk() || p.GetError() != "" || p.GetLatency().AsDuration() <= 0 || p.GetAt() == nil {
			t.Errorf("probe %s = %v, want ok with a latency", key, p)
		}
	}

	// A failing step is reported with why.
	lp.green.healthy.Store(false)
	waitReport(t, reports, "a failed green/account probe", func(r *sv1.HealthReport) bool {
		for _, p := range r.GetProbes() {
			if p.GetName() == "account" && !p.GetOk() && strings.Contains(p.GetError(), "status 401, want 200") {
				return true
			}
		}
		return false
	})
	if n := ra.metric(t, "switchyard_agent_probes_total", "backend", "green", "kind", "synthetic", "result", "failed"); n < 1 {
		t.Errorf("failed synthetic probes metric = %v", n)
	}

	// Once the rollout completes, no more transactions run. Reports are the
	// clock: a run already under way may land in the next two windows.
	b.put(t, &sv1.DesiredState{Service: "web", Generation: 3, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, DefaultWeights: allGreen})
	ra.waitApplied(t, "web", 3)
	for i := range 8 {
		r := waitReport(t, reports, "a report", func(*sv1.HealthReport) bool { return true })
		if i >= 3 && len(r.GetProbes()) > 0 {
			t.Fatalf("probes %d windows after the rollout completed: %v", i, r.GetProbes())
		}
	}
}

// waitReport reads reports until one satisfies match.
func waitReport(t *testing.T, ch <-chan *sv1.HealthReport, what string, match func(*sv1.HealthReport) bool) *sv1.HealthReport {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case r := <-ch:
			if match(r) {
				return r
			}
		case <-timeout:
			t.Fatalf("no health report with %s within 15s", what)
		}
	}
}

func TestAgentLive_LocalGuardMovesBackWhileBusIsLost(t *testing.T) {
	storeDir := t.TempDir()
	b := startBusAt(t, storeDir)
	lp := startProxy(t, true)
	lp.green.errEvery.Store(2) // half of green's answers are 503
	cfg := liveConfig(t, b.url, lp)
	cfg.TelemetryInterval = 100 * time.Millisecond
	cfg.LocalGuard = LocalGuardConfig{AfterDisconnect: new(time.Second), Window: 2 * time.Second}
	// Heartbeats make sure the test hears the status after the reconnect
	// even if the agent reconnects before the test subscribes.
	cfg.Heartbeat = 200 * time.Millisecond
	reports := b.telemetry(t, "web")
	ra := startLiveAgent(t, cfg)

	b.put(t, &sv1.DesiredState{Service: "web", Generation: 1, DefaultWeights: allBlue})
	ra.waitApplied(t, "web", 1)
	half := map[string]uint32{"blue": 50, "green": 50}
	b.put(t, progressing(2, half))
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, half)
	l := startLoad(t, lp.frontend, 8, 0)

	// While the bus is up the coordinator decides, however bad green is.
	var breach trafficTotals
	for breach.requests < 200 {
		r := waitReport(t, reports, "green traffic", func(r *sv1.HealthReport) bool { return backendHealth(r, "green").GetRequests() > 0 })
		breach.add(t, r, "green")
	}
	if rate := float64(breach.errors) / float64(breach.requests); rate < 0.4 {
		t.Fatalf("green error rate %.2f, want the injected 0.5", rate)
	}
	if n := ra.metric(t, "switchyard_agent_local_rollbacks_total", "service", "web"); n != 0 {
		t.Fatalf("local rollbacks = %v while connected, want 0", n)
	}

	stopped := time.Now()
	port := b.stopServer()
	ra.waitMetric(t, 1, "switchyard_agent_local_rollbacks_total", "service", "web")
	lp.waitWeights(t, 5*time.Second, allBlue)
	// The generation stays 2: the guard overrides it without inventing one.
	if w := ra.waitApplied(t, "web", 2); !maps.Equal(w, allBlue) {
		waitFor(t, 5*time.Second, "the local rollback in the applied state", func() error {
			if gen, w := ra.Applied("web"); gen != 2 || !maps.Equal(w, allBlue) {
				return fmt.Errorf("generation %d %v", gen, w)
			}
			return nil
		})
	}
	// From here every request goes to blue.
	l.stop()
	expectAllTo(t, lp, 20, "blue")

	// Back on the bus, the agent reports what it did; the bucket still has
	// generation 2, which does not override the guard (same generation).
	b.startServer(t, storeDir, port)
	statuses := b.statuses(t, "edge-1")
	st := waitStatus(t, statuses, "the local rollback", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetLocalRollback() != nil
	})
	s := serviceStatus(st, "web")
	lr := s.GetLocalRollback()
	if lr.GetGeneration() != 2 || lr.GetRolloutId() != "r1" || lr.GetFrom() != "green" || lr.GetTo() != "blue" ||
		!strings.Contains(lr.GetReason(), `backend "green" error rate`) || !strings.Contains(lr.GetReason(), "bus lost for") {
		t.Errorf("local rollback = %v", lr)
	}
	if waited := lr.GetAt().AsTime().Sub(stopped); waited < cfg.LocalGuard.afterDisconnect() {
		t.Errorf("the guard acted %s after the bus went down, before afterDisconnect (%s)", waited, cfg.LocalGuard.afterDisconnect())
	}
	if !strings.Contains(s.GetMessage(), "local guard moved this node") || s.GetAppliedGeneration() != 2 || !maps.Equal(s.GetWeights(), allBlue) {
		t.Errorf("service status = %v", s)
	}
	ra.waitMetric(t, 1, "switchyard_agent_bus_connected")
	// Generation 2 again (a new leader republishing it, signed anew) only
	// renews the document: fencing, not the guard, decides, and blue stays.
	prevExpiry := s.GetDocumentExpiresAt().AsTime()
	b.publishRaw(t, "web", mustMarshal(t, progressing(2, half)), nil)
	renewed := waitStatus(t, statuses, "generation 2 renewed", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetDocumentExpiresAt().AsTime().After(prevExpiry)
	})
	if s := serviceStatus(renewed, "web"); s.GetLocalRollback() == nil || s.GetAppliedGeneration() != 2 || !maps.Equal(s.GetWeights(), allBlue) {
		t.Errorf("after the renewal: %v, want generation 2 with the local rollback's weights", s)
	}
	if got := lp.weights(t); !maps.Equal(got, allBlue) {
		t.Fatalf("after reconnecting HAProxy has %v, want %v", got, allBlue)
	}

	// A newer generation from the coordinator governs again.
	b.put(t, &sv1.DesiredState{Service: "web", Generation: 3, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK, DefaultWeights: map[string]uint32{"blue": 80, "green": 20}})
	ra.waitApplied(t, "web", 3)
	lp.waitWeights(t, 5*time.Second, map[string]uint32{"blue": 80, "green": 20})
	gen3 := waitStatus(t, statuses, "generation 3 without the local rollback", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 3 && s.GetLocalRollback() == nil && s.GetMessage() == ""
	})
	// The move is still reported as the last one, for the coordinators'
	// history of the rollout.
	if last := serviceStatus(gen3, "web").GetLastLocalRollback(); last.GetGeneration() != 2 || last.GetRolloutId() != "r1" || !last.GetAt().AsTime().Equal(lr.GetAt().AsTime()) {
		t.Errorf("last local rollback at generation 3 = %v, want the guard's move at generation 2", last)
	}

	ra.stop(t)
	stDB, err := state.Open(cfg.StateDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer stDB.Close()
	if saved, err := stDB.Load("web"); err != nil || saved.GetDesired().GetGeneration() != 3 || saved.GetLocalRollback() != nil ||
		saved.GetLastLocalRollback().GetGeneration() != 2 {
		t.Fatalf("saved = %v, %v", saved, err)
	}
}

// TestAgentLive_LocalGuardActsWhenNoCoordinatorIsHeard: at a PoP the
// agent's connection is to a leaf server that stays up when the hub is cut
// off; the leader's beacon stops. The guard acts on that as on a lost bus,
// and says how it knew.
func TestAgentLive_LocalGuardActsWhenNoCoordinatorIsHeard(t *testing.T) {
	b := startBus(t)
	lp := startProxy(t, true)
	lp.green.errEvery.Store(2) // half of green's answers are 503
	cfg := liveConfig(t, b.url, lp)
	cfg.TelemetryInterval = 100 * time.Millisecond
	cfg.LocalGuard = LocalGuardConfig{AfterDisconnect: new(time.Second), Window: 2 * time.Second}
	reports := b.telemetry(t, "web")
	ra := startLiveAgent(t, cfg)
	// A leader beacons while the test says so.
	var leading atomic.Bool
	var lastBeacon atomic.Int64 // Unix nanoseconds
	leading.Store(true)
	beaconDone := make(chan struct{})
	stopBeacon := make(chan struct{})
	go func() {
		defer close(beaconDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if leading.Load() {
				_ = b.nc.Publish(bus.BeaconSubject, nil)
				lastBeacon.Store(time.Now().UnixNano())
			}
			select {
			case <-stopBeacon:
				return
			case <-tick.C:
			}
		}
	}()
	defer func() { close(stopBeacon); <-beaconDone }()

	b.put(t, &sv1.DesiredState{Service: "web", Generation: 1, DefaultWeights: allBlue})
	ra.waitApplied(t, "web", 1)
	half := map[string]uint32{"blue": 50, "green": 50}
	b.put(t, progressing(2, half))
	ra.waitApplied(t, "web", 2)
	lp.waitWeights(t, 5*time.Second, half)
	l := startLoad(t, lp.frontend, 8, 0)
	defer l.stop()

	// While a leader is heard the coordinators decide, however bad green is.
	var breach trafficTotals
	for breach.requests < 200 {
		r := waitReport(t, reports, "green traffic", func(r *sv1.HealthReport) bool { return backendHealth(r, "green").GetRequests() > 0 })
		breach.add(t, r, "green")
	}
	time.Sleep(2 * cfg.LocalGuard.afterDisconnect())
	if n := ra.metric(t, "switchyard_agent_local_rollbacks_total", "service", "web"); n != 0 {
		t.Fatalf("local rollbacks = %v while a leader is heard, want 0", n)
	}

	// The hub is cut off: the connection stays, the beacon stops.
	statuses := b.statuses(t, "edge-1")
	leading.Store(false)
	silent := time.Unix(0, lastBeacon.Load())
	ra.waitMetric(t, 1, "switchyard_agent_local_rollbacks_total", "service", "web")
	lp.waitWeights(t, 5*time.Second, allBlue)
	if _, down := ra.BusDownFor(); down {
		t.Fatal("the bus connection was lost; the test wants it up")
	}
	st := waitStatus(t, statuses, "the local rollback", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetLocalRollback() != nil
	})
	lr := serviceStatus(st, "web").GetLocalRollback()
	if !strings.Contains(lr.GetReason(), "no coordinator heard for") || !strings.Contains(lr.GetReason(), `backend "green" error rate`) {
		t.Errorf("local rollback = %v", lr)
	}
	if waited := lr.GetAt().AsTime().Sub(silent); waited < beaconOverdue {
		t.Errorf("the guard acted %s after the last beacon, before it was overdue (%s)", waited, beaconOverdue)
	}

	// A leader heard again governs with a newer generation.
	leading.Store(true)
	b.put(t, &sv1.DesiredState{Service: "web", Generation: 3, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK, DefaultWeights: map[string]uint32{"blue": 80, "green": 20}})
	ra.waitApplied(t, "web", 3)
	lp.waitWeights(t, 5*time.Second, map[string]uint32{"blue": 80, "green": 20})
	waitFor(t, 5*time.Second, "the leader heard again", func() error {
		if d, how, cut := ra.CutOffFor(); cut {
			return fmt.Errorf("still cut off: %s for %s", how, d)
		}
		return nil
	})
}

func TestAgentLive_LocalGuardPersistsAcrossRestart(t *testing.T) {
	// The guard's weights are the applied state: an agent restarted while
	// still cut off keeps them and does not "repair" back to green.
	storeDir := t.TempDir()
	b := startBusAt(t, storeDir)
	lp := startProxy(t, true)
	lp.green.errEvery.Store(2)
	cfg := liveConfig(t, b.url, lp)
	cfg.TelemetryInterval = 100 * time.Millisecond
	cfg.Resync = 200 * time.Millisecond
	cfg.LocalGuard = LocalGuardConfig{AfterDisconnect: new(500 * time.Millisecond), Window: 2 * time.Second}
	ra := startLiveAgent(t, cfg)
	b.put(t, &sv1.DesiredState{Service: "web", Generation: 1, DefaultWeights: allBlue})
	ra.waitApplied(t, "web", 1)
	b.put(t, progressing(2, map[string]uint32{"blue": 50, "green": 50}))
	ra.waitApplied(t, "web", 2)
	l := startLoad(t, lp.frontend, 8, 0)
	b.stopServer()
	ra.waitMetric(t, 1, "switchyard_agent_local_rollbacks_total", "service", "web")
	l.stop()
	ra.stop(t)

	again := startLiveAgent(t, cfg)
	if w := again.waitApplied(t, "web", 2); !maps.Equal(w, allBlue) {
		t.Fatalf("restarted agent restored %v, want %v", w, allBlue)
	}
	if msg := serviceStatus(again.Status(), "web").GetMessage(); !strings.Contains(msg, "local guard moved this node") {
		// The message is set by the first step; wait for it.
		waitFor(t, 5*time.Second, "the local rollback in the status", func() error {
			if s := serviceStatus(again.Status(), "web"); s.GetLocalRollback() == nil || !strings.Contains(s.GetMessage(), "local guard") {
				return errors.New(s.GetMessage())
			}
			return nil
		})
	}
	// Several resyncs pass (drift checks included); blue stays.
	waitFor(t, 5*time.Second, "three drift checks", func() error {
		if n := again.metric(t, "switchyard_agent_applies_total", "service", "web", "result", "ok"); n != 0 {
			return fmt.Errorf("unexpected applies: %v", n)
		}
		if d, _ := again.BusDownFor(); d < 3*cfg.Resync {
			return fmt.Errorf("only %s", d)
		}
		return nil
	})
	if got := lp.weights(t); !maps.Equal(got, allBlue) {
		t.Fatalf("HAProxy has %v after the restart, want %v", got, allBlue)
	}
}
