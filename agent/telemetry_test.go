package agent

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/state"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestTelemetry_CounterDeltaSurvivesResets(t *testing.T) {
	c := func(req, errs uint64) driver.BackendCounters {
		return driver.BackendCounters{Requests: req, Errors: errs}
	}
	tests := []struct {
		name             string
		prev, cur        driver.BackendCounters
		wantReq, wantErr uint64
	}{
		{"growth", c(100, 5), c(150, 7), 50, 2},
		{"no traffic", c(100, 5), c(100, 5), 0, 0},
		{"restart: requests went down", c(1000, 50), c(30, 1), 30, 1},
		{"restart: only errors went down", c(10, 9), c(12, 0), 12, 0},
		{"restart to zero", c(1000, 50), c(0, 0), 0, 0},
		{"errors never exceed requests", c(0, 0), c(3, 7), 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, errs := counterDelta(tt.prev, tt.cur)
			if req != tt.wantReq || errs != tt.wantErr {
				t.Fatalf("counterDelta(%v, %v) = %d, %d; want %d, %d", tt.prev, tt.cur, req, errs, tt.wantReq, tt.wantErr)
			}
		})
	}
}

func TestTelemetry_InferDirection(t *testing.T) {
	w := func(kv ...any) map[string]uint32 {
		m := map[string]uint32{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i].(string)] = uint32(kv[i+1].(int))
		}
		return m
	}
	tests := []struct {
		name          string
		before, after map[string]uint32
		from, to      string
	}{
		{"canary step", w("blue", 100, "green", 0), w("blue", 90, "green", 10), "blue", "green"},
		{"next step", w("blue", 90, "green", 10), w("blue", 50, "green", 50), "blue", "green"},
		{"rollback", w("blue", 50, "green", 50), w("blue", 100, "green", 0), "green", "blue"},
		{"first document of a node", nil, w("blue", 0, "green", 100), "blue", "green"},
		{"nothing moves", w("blue", 100, "green", 0), w("blue", 100, "green", 0), "", ""},
		{"three backends", w("a", 100, "b", 0, "c", 0), w("a", 50, "b", 40, "c", 10), "a", "b"},
		{"tie on the rise", w("a", 100, "b", 0, "c", 0), w("a", 0, "b", 50, "c", 50), "", ""},
		{"tie on the fall, three backends", w("a", 50, "b", 50, "c", 0), w("a", 0, "b", 0, "c", 100), "", "c"},
		{"a smaller rise before the tie", w("a", 100, "b", 0, "c", 0, "d", 0), w("a", 0, "b", 10, "c", 45, "d", 45), "", ""},
		{"a tie below the largest rise", w("a", 100, "b", 0, "c", 0, "d", 0), w("a", 0, "b", 50, "c", 25, "d", 25), "a", "b"},
		{"a tie below the largest fall", w("a", 60, "b", 20, "c", 20, "d", 0), w("a", 0, "b", 0, "c", 0, "d", 100), "a", "d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The backends are visited in map order, a new one each
			// time: the answer must not depend on it.
			for range 64 {
				from, to := inferDirection(tt.before, tt.after)
				if from != tt.from || to != tt.to {
					t.Fatalf("inferDirection(%v, %v) = %q -> %q, want %q -> %q", tt.before, tt.after, from, to, tt.from, tt.to)
				}
			}
		})
	}
}

// downWin is a window of no traffic at t0+at with each backend's weight
// and whether the proxy held it out of rotation.
func downWin(at time.Duration, to string, toWeight uint32, toDown bool, from string, fromWeight uint32, fromDown bool) guardWindow {
	return guardWindow{end: time.Unix(1000, 0).Add(at), backends: map[string]windowCounts{
		to: {weight: toWeight, down: toDown}, from: {weight: fromWeight, down: fromDown}}}
}

func TestLocalGuard_Breach(t *testing.T) {
	cfg := LocalGuardConfig{Window: 10 * time.Second, MinRequests: 50, MaxErrorRate: 0.2, MaxP99: new(2 * time.Second)}
	lat := func(seconds float64, n int) *sketch.Sketch {
		s := sketch.New()
		s.AddWithCount(seconds, float64(n))
		return s
	}
	t0 := time.Unix(1000, 0)
	win := func(at time.Duration, req, errs uint64, l *sketch.Sketch) guardWindow {
		return guardWindow{end: t0.Add(at), backends: map[string]windowCounts{"green": {requests: req, errors: errs, latency: l}}}
	}
	tests := []struct {
		name    string
		windows []guardWindow
		want    string // substring of the reason; "" for no breach
	}{
		{"too few requests", []guardWindow{win(0, 49, 49, nil)}, ""},
		{"error rate over 20%", []guardWindow{win(0, 30, 5, nil), win(time.Second, 30, 10, nil)}, `error rate 25.0% (15 of 60 requests`},
		{"error rate exactly 20% is not over", []guardWindow{win(0, 100, 20, nil)}, ""},
		{"old windows fall out", []guardWindow{win(0, 100, 100, nil), win(11*time.Second, 60, 0, nil)}, ""},
		{"slow", []guardWindow{win(0, 60, 0, lat(3, 60))}, "p99 latency 2.9"},
		{"slow but too few samples", []guardWindow{win(0, 60, 0, lat(3, 10))}, ""},
		{"fast enough", []guardWindow{win(0, 60, 0, lat(1.5, 60))}, ""},
		// Failing its health checks, green answers nothing (at 100% the
		// proxy answers every request 503 itself): down while weighted
		// through the look-back moves the node, a flap does not, nor a
		// sick host whose blue is down as well, nor green down at weight 0.
		{"down while weighted throughout", []guardWindow{downWin(0, "green", 100, true, "blue", 0, false), downWin(5*time.Second, "green", 100, true, "blue", 0, false)},
			`backend "green" has been down (failing the proxy's health checks) while weighted for the last 10s`},
		{"down in one window of two", []guardWindow{downWin(0, "green", 100, false, "blue", 0, false), downWin(5*time.Second, "green", 100, true, "blue", 0, false)}, ""},
		{"blue down too", []guardWindow{downWin(0, "green", 100, true, "blue", 0, true), downWin(5*time.Second, "green", 100, true, "blue", 0, true)}, ""},
		{"down at weight 0", []guardWindow{downWin(0, "green", 0, true, "blue", 100, false), downWin(5*time.Second, "green", 0, true, "blue", 100, false)}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := &localGuard{cfg: cfg}
			for _, w := range tt.windows {
				g.add(w)
			}
			reason, breached := g.breach("green", "blue")
			if breached != (tt.want != "") || !strings.Contains(reason, tt.want) {
				t.Fatalf("breach = %v %q, want %q", breached, reason, tt.want)
			}
		})
	}
}

func TestAppliedView_RolloutActive(t *testing.T) {
	for phase, want := range map[sv1.RolloutPhase]bool{
		sv1.RolloutPhase_ROLLOUT_PHASE_UNSPECIFIED:  false,
		sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING:  true,
		sv1.RolloutPhase_ROLLOUT_PHASE_PROMOTED:     true,
		sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:    false,
		sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK: false,
		sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:  false,
	} {
		if got := (&appliedView{rolloutID: "r1", phase: phase}).rolloutActive(); got != want {
			t.Errorf("phase %s: active = %v, want %v", phase, got, want)
		}
	}
	if (&appliedView{phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING}).rolloutActive() {
		t.Error("a document without a rollout id is no rollout")
	}
}

// TestTelemetry_GuardOnlyActsWhenTheBusIsGoneLongEnough drives the
// telemetry loop's guard step directly.
func TestTelemetry_GuardOnlyActsWhenTheBusIsGoneLongEnough(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w := &serviceWorker{name: "web", guard: make(chan localRollbackRequest, 1)}
	var down time.Duration
	var isDown bool
	tl := &telemetryLoop{
		service: "web", worker: w, guardAfter: 30 * time.Second, m: m,
		log: slog.New(slog.DiscardHandler), clock: clock.Real{},
		guard:  &localGuard{cfg: LocalGuardConfig{Window: 10 * time.Second, MinRequests: 50, MaxErrorRate: 0.2}},
		cutOff: func() (time.Duration, string, bool) { return down, "bus lost", isDown },
	}
	tl.guard.add(guardWindow{end: time.Now(), backends: map[string]windowCounts{"green": {requests: 100, errors: 50}}})
	view := &appliedView{seq: 3, generation: 7, rolloutID: "r1", phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		weights: map[string]uint32{"blue": 50, "green": 50}, from: "blue", to: "green"}
	asked := func() *localRollbackRequest {
		select {
		case r := <-w.guard:
			return &r
		default:
			return nil
		}
	}

	tl.checkGuard(view)
	if r := asked(); r != nil {
		t.Fatalf("connected: guard asked %+v", r)
	}
	down, isDown = 29*time.Second, true
	tl.checkGuard(view)
	if r := asked(); r != nil {
		t.Fatalf("down 29s of 30: guard asked %+v", r)
	}
	down = 31 * time.Second
	for _, v := range []*appliedView{
		{seq: 3, rolloutID: "r1", phase: sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, weights: view.weights, from: "blue", to: "green"},
		{seq: 3, rolloutID: "r1", phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, weights: map[string]uint32{"blue": 100, "green": 0}, from: "blue", to: "green"},
		{seq: 3, rolloutID: "r1", phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, weights: view.weights, from: "", to: "green"},
		{seq: 3, rolloutID: "r1", phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, weights: view.weights, from: "blue", to: "green", localRollback: true},
	} {
		tl.checkGuard(v)
		if r := asked(); r != nil {
			t.Fatalf("view %+v: guard asked %+v", v, r)
		}
	}
	tl.checkGuard(view)
	r := asked()
	if r == nil || r.generation != 7 || r.seq != 3 || r.from != "blue" || r.to != "green" || !strings.Contains(r.reason, "error rate 50.0%") {
		t.Fatalf("guard asked %+v", r)
	}
}

// fakeStats is a StatsReader whose answers a test sets window by window;
// a nil answer is a failed read.
type fakeStats struct{ next []driver.BackendCounters }

func (f *fakeStats) Counters(context.Context) ([]driver.BackendCounters, error) {
	if f.next == nil {
		return nil, errors.New("connect to the admin socket: connection refused")
	}
	return f.next, nil
}

// newTestTelemetryLoop is a telemetry loop of service "web" (backends blue
// and green) whose reports land in the returned slice, as run would start
// it but without its ticker: the test closes each window itself.
func newTestTelemetryLoop(t *testing.T, stats driver.StatsReader, view *appliedView) (*telemetryLoop, *serviceWorker, *[]*sv1.HealthReport) {
	t.Helper()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	w := &serviceWorker{name: "web"}
	w.view.Store(view)
	var sent []*sv1.HealthReport
	tl := &telemetryLoop{
		service: "web", node: "edge-1", subject: "telemetry.web.edge-1",
		backends: []string{"blue", "green"}, interval: time.Second,
		stats: stats, probes: &probeBuffer{}, worker: w, m: m,
		log: slog.New(slog.DiscardHandler), clock: clock.NewFake(time.Unix(1000, 0)), statTimeout: time.Second,
		publish: func(_ string, body []byte) (bool, error) {
			var r sv1.HealthReport
			if err := proto.Unmarshal(body, &r); err != nil {
				t.Errorf("decode report: %v", err)
			}
			sent = append(sent, &r)
			return true, nil
		},
	}
	tl.start = tl.clock.Now()
	tl.startView = w.currentView()
	tl.prev = tl.readCounters(context.Background())
	return tl, w, &sent
}

// TestTelemetry_FailedCounterReadIsNoBaseline: a window in which "show
// stat" cannot be read (HAProxy restarting, the admin socket busy) sends no
// backends; the next window must not then report the traffic of both
// windows as its own, under a generation that held only for the second.
func TestTelemetry_FailedCounterReadIsNoBaseline(t *testing.T) {
	counters := func(blue, green uint64) []driver.BackendCounters {
		return []driver.BackendCounters{{Backend: "blue", Requests: blue}, {Backend: "green", Requests: green}}
	}
	stats := &fakeStats{next: counters(1000, 0)}
	g7 := &appliedView{seq: 1, generation: 7, weights: map[string]uint32{"blue": 100}}
	tl, w, sent := newTestTelemetryLoop(t, stats, g7)
	ctx := context.Background()
	fake := tl.clock.(*clock.Fake)

	// Window 1: generation 8 moves all traffic to green, and the counters
	// cannot be read at the end of the window.
	w.view.Store(&appliedView{seq: 2, generation: 8, weights: map[string]uint32{"green": 100}})
	stats.next = nil
	fake.Advance(time.Second)
	tl.closeWindow(ctx)
	if len(*sent) != 0 {
		t.Fatalf("a window without counters was sent: %v", (*sent)[0])
	}

	// Window 2: generation 8 held all of it; blue served 500 requests in
	// window 1 (under generation 7) and none since.
	stats.next = counters(1500, 300)
	fake.Advance(time.Second)
	tl.closeWindow(ctx)
	for _, r := range *sent {
		if r.GetGeneration() == 8 && backendHealth(r, "blue").GetRequests() > 0 {
			t.Fatalf("window %s..%s of generation 8 credits blue with %d requests that blue served in the window before, under generation 7",
				r.GetWindowStart().AsTime().Format(time.TimeOnly), r.GetWindowEnd().AsTime().Format(time.TimeOnly), backendHealth(r, "blue").GetRequests())
		}
	}

	// Window 3 has a baseline again and counts its own traffic.
	stats.next = counters(1500, 400)
	fake.Advance(time.Second)
	tl.closeWindow(ctx)
	last := (*sent)[len(*sent)-1]
	if got := backendHealth(last, "green").GetRequests(); last.GetGeneration() != 8 || got != 100 {
		t.Fatalf("window 3: generation %d, green %d requests; want generation 8, 100 requests", last.GetGeneration(), got)
	}
}

// fakeLog is a WindowSource that hands out the window a test set.
type fakeLog struct{ next map[string]driver.Window }

func (f *fakeLog) TakeWindow() (map[string]driver.Window, bool) {
	w := f.next
	f.next = map[string]driver.Window{}
	return w, true
}

// TestTelemetry_RequestLogCountsRedispatchedFailures: a request whose
// connection green refused and that HAProxy redispatched to blue is logged
// as blue's success only. Green's share of the window is the connections it
// refused, which the counters carry: with a log socket green must show them
// as failed requests, not no traffic at all.
func TestTelemetry_RequestLogCountsRedispatchedFailures(t *testing.T) {
	counters := func(blueReq, greenRedisp uint64) []driver.BackendCounters {
		return []driver.BackendCounters{
			{Backend: "blue", Requests: blueReq},
			{Backend: "green", Requests: greenRedisp, Errors: greenRedisp, Redispatched: greenRedisp},
		}
	}
	stats := &fakeStats{next: counters(100, 40)}
	tl, _, sent := newTestTelemetryLoop(t, stats, &appliedView{seq: 1, generation: 7, weights: map[string]uint32{"blue": 50, "green": 50}})
	logs := &fakeLog{}
	tl.logs = logs

	lat := sketch.New()
	lat.AddWithCount(0.002, 20)
	logs.next = map[string]driver.Window{"blue": {Requests: 20, Latency: lat}}
	stats.next = counters(120, 50)
	tl.clock.(*clock.Fake).Advance(time.Second)
	tl.closeWindow(context.Background())

	if len(*sent) != 1 {
		t.Fatalf("sent %d reports, want 1", len(*sent))
	}
	r := (*sent)[0]
	if g := backendHealth(r, "green"); g.GetRequests() != 10 || g.GetErrors() != 10 {
		t.Fatalf("green refused the 10 connections HAProxy redispatched to blue; report says %d requests, %d errors", g.GetRequests(), g.GetErrors())
	}
	if b := backendHealth(r, "blue"); b.GetRequests() != 20 || b.GetErrors() != 0 {
		t.Fatalf("blue answered 20 requests; report says %d requests, %d errors", b.GetRequests(), b.GetErrors())
	}
}

// TestTelemetry_GuardHoldsWhenTheOldBackendFailsAsWell: a dependency both
// backends share goes down (a database, the PoP's uplink) while the node is
// cut off. Green fails, and so does blue over the same windows: the release
// is not what fails, and moving the node to blue would cure nothing. The
// guard must not revert it; the coordinators decide when the bus is back.
// Latency the same: a service whose long requests (downloads, long polls)
// put every backend's p99 above the limit is no reason to revert.
func TestTelemetry_GuardHoldsWhenTheOldBackendFailsAsWell(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	slow := func(seconds float64, n int) *sketch.Sketch {
		s := sketch.New()
		s.AddWithCount(seconds, float64(n))
		return s
	}
	view := &appliedView{seq: 3, generation: 7, rolloutID: "r1", phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		weights: map[string]uint32{"blue": 50, "green": 50}, from: "blue", to: "green"}
	tests := []struct {
		name        string
		blue, green windowCounts
		act         bool
	}{
		{"both fail alike", windowCounts{requests: 100, errors: 40}, windowCounts{requests: 100, errors: 45}, false},
		{"both slow alike", windowCounts{requests: 100, latency: slow(5, 100)}, windowCounts{requests: 100, latency: slow(5, 100)}, false},
		{"green fails alone", windowCounts{requests: 100, errors: 1}, windowCounts{requests: 100, errors: 45}, true},
		{"green slow alone", windowCounts{requests: 100, latency: slow(0.01, 100)}, windowCounts{requests: 100, latency: slow(5, 100)}, true},
		// Both over the limit, green far worse: the release fails too.
		{"both fail, green far worse", windowCounts{requests: 100, errors: 25}, windowCounts{requests: 100, errors: 90}, true},
		{"both slow, green far slower", windowCounts{requests: 100, latency: slow(2.5, 100)}, windowCounts{requests: 100, latency: slow(10, 100)}, true},
		// Too little of blue to judge it: green is judged alone.
		{"blue too quiet to judge", windowCounts{requests: 3, errors: 3}, windowCounts{requests: 100, errors: 45}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &serviceWorker{name: "web", guard: make(chan localRollbackRequest, 1)}
			tl := &telemetryLoop{
				service: "web", worker: w, guardAfter: 30 * time.Second, m: m,
				log: slog.New(slog.DiscardHandler), clock: clock.Real{},
				guard:  &localGuard{cfg: LocalGuardConfig{Window: 10 * time.Second, MinRequests: 50, MaxErrorRate: 0.2, MaxP99: new(2 * time.Second)}},
				cutOff: func() (time.Duration, string, bool) { return time.Minute, "bus lost", true },
			}
			tl.guard.add(guardWindow{end: time.Now(), backends: map[string]windowCounts{"blue": tt.blue, "green": tt.green}})
			tl.checkGuard(view)
			var asked *localRollbackRequest
			select {
			case r := <-w.guard:
				asked = &r
			default:
			}
			if (asked != nil) != tt.act {
				t.Fatalf("guard asked %+v, want a rollback: %v", asked, tt.act)
			}
		})
	}
}

// TestTelemetry_ReportsDownWhenFailingChecks: a backend HAProxy marked
// DOWN (its health checks fail) gets no request whatever its weight, so its
// window shows no traffic and no error. The report must say it was down,
// at any weight (the coordinators tell a release that does not come up,
// weighted, from a sick host, whose old backend is down at weight 0 too),
// and only then: one in rotation is not down.
func TestTelemetry_ReportsDownWhenFailingChecks(t *testing.T) {
	stats := &fakeStats{next: []driver.BackendCounters{{Backend: "blue", Weight: 80}, {Backend: "green", Weight: 20, Down: true}}}
	view := &appliedView{seq: 1, generation: 7, rolloutID: "r1", weights: map[string]uint32{"blue": 80, "green": 20}}
	tl, _, sent := newTestTelemetryLoop(t, stats, view)
	fake := tl.clock.(*clock.Fake)
	for _, tt := range []struct {
		name                string
		counters            []driver.BackendCounters
		wantBlue, wantGreen bool
	}{
		{"green weighted and down", []driver.BackendCounters{{Backend: "blue", Weight: 80}, {Backend: "green", Weight: 20, Down: true}}, false, true},
		{"green down at weight 0", []driver.BackendCounters{{Backend: "blue", Weight: 100}, {Backend: "green", Weight: 0, Down: true}}, false, true},
		{"both weighted, in rotation", []driver.BackendCounters{{Backend: "blue", Weight: 80}, {Backend: "green", Weight: 20}}, false, false},
		{"both weighted and down", []driver.BackendCounters{{Backend: "blue", Weight: 80, Down: true}, {Backend: "green", Weight: 20, Down: true}}, true, true},
	} {
		stats.next = tt.counters
		fake.Advance(time.Second)
		tl.closeWindow(context.Background())
		r := (*sent)[len(*sent)-1]
		if got := backendHealth(r, "blue").GetDown(); got != tt.wantBlue {
			t.Errorf("%s: blue down = %v, want %v", tt.name, got, tt.wantBlue)
		}
		if got := backendHealth(r, "green").GetDown(); got != tt.wantGreen {
			t.Errorf("%s: green down = %v, want %v", tt.name, got, tt.wantGreen)
		}
	}
}

// A node cut off from the coordinators while a drill of its own injects
// errors on the backend the rollout moves it to does not move back to the
// old backend: the errors are the drill's, which this agent injected
// itself, not the release's, and a local rollback would outlast the drill.
// Once the drill's fault is out of the guard's look-back, the guard judges
// again.
func TestTelemetry_GuardDoesNotBlameTheReleaseForItsOwnDrillsFault(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	drills := &drillFollower{}
	w := &serviceWorker{name: "web", guard: make(chan localRollbackRequest, 1)}
	tl := &telemetryLoop{
		service: "web", worker: w, guardAfter: 30 * time.Second, m: m,
		log: slog.New(slog.DiscardHandler), clock: clock.Real{},
		guard:          &localGuard{cfg: LocalGuardConfig{Window: 10 * time.Second, MinRequests: 50, MaxErrorRate: 0.2}},
		cutOff:         func() (time.Duration, string, bool) { return time.Minute, "bus lost", true },
		drillOnBackend: drills.drillOnBackend,
	}
	tl.guard.add(guardWindow{end: now, backends: map[string]windowCounts{"green": {requests: 100, errors: 50}}})
	view := &appliedView{seq: 3, generation: 7, rolloutID: "r1", phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		weights: map[string]uint32{"blue": 50, "green": 50}, from: "blue", to: "green"}
	asked := func() *localRollbackRequest {
		select {
		case r := <-w.guard:
			return &r
		default:
			return nil
		}
	}

	// A drill's fault on blue, or on another service's green, is not
	// this one's.
	drills.addSpan(state.FaultRecord{Drill: "other", Kind: kindHTTP, Service: "web", Backend: "blue", Since: now.Add(-20 * time.Second), Until: now.Add(time.Minute)})
	drills.addSpan(state.FaultRecord{Drill: "api", Kind: kindHTTP, Service: "api", Backend: "green", Since: now.Add(-20 * time.Second), Until: now.Add(time.Minute)})
	drills.addSpan(state.FaultRecord{Drill: "d1", Kind: kindHTTP, Service: "web", Backend: "green", Since: now.Add(-20 * time.Second), Until: now.Add(time.Minute)})
	tl.checkGuard(view)
	if r := asked(); r != nil {
		t.Fatalf("with drill d1 injecting errors on green: guard asked %+v", r)
	}
	// Reverted 5 s ago: its errors are still in the look-back.
	drills.endSpan("d1", now.Add(-5*time.Second))
	tl.checkGuard(view)
	if r := asked(); r != nil {
		t.Fatalf("drill d1 ended within the look-back: guard asked %+v", r)
	}
	// Reverted before the look-back began: green fails on its own.
	drills.addSpan(state.FaultRecord{Drill: "d1", Kind: kindHTTP, Service: "web", Backend: "green", Since: now.Add(-time.Minute), Until: now.Add(time.Minute)})
	drills.endSpan("d1", now.Add(-11*time.Second))
	tl.checkGuard(view)
	if r := asked(); r == nil || !strings.Contains(r.reason, "error rate 50.0%") {
		t.Fatalf("no drill fault on green in the look-back: guard asked %+v", r)
	}
}
