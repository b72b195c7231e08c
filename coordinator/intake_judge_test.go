package coordinator

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A burst (a fleet reconnecting at once) can leave reports that arrived
// well within the judge's grace still waiting for a decode worker when
// the grace ends. The window judge must not read their window on the part
// of the fleet already merged: it waits until intake has merged (or shed)
// every report received before the window's grace ended, and then judges
// the whole window, here a failure the waiting reports hold.
func TestIntake_WindowJudgeWaitsForReportsStillQueued(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	store := analysis.NewStore()
	var clock atomic.Int64
	clock.Store(t0.Add(5*time.Second + 800*time.Millisecond).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	in, m, _ := testIntake(t, store, now)

	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodWindows}}
	spec.Default(sp)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0)}

	report := func(node string, sec int, greenErrors uint64) *sv1.HealthReport {
		return &sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 3,
			WindowStart: timestamppb.New(t0.Add(time.Duration(sec-1) * time.Second)), WindowEnd: timestamppb.New(t0.Add(time.Duration(sec) * time.Second)),
			Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 10, Errors: greenErrors}, {Backend: "blue", Requests: 90}}}
	}
	// Seconds 1 to 4 of ten nodes, and second 5 of five of them, are in
	// the store; green is healthy there.
	for sec := 1; sec <= 5; sec++ {
		for n := range 10 {
			if sec == 5 && n >= 5 {
				continue
			}
			if err := store.Add(report(fmt.Sprintf("edge-%d", n), sec, 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The other five nodes' reports of second 5 came in 0.8 s after it
	// ended, in time, and wait for a worker: every one of their green
	// requests failed.
	for n := 5; n < 10; n++ {
		wire, err := proto.Marshal(report(fmt.Sprintf("edge-%d", n), 5, 10))
		if err != nil {
			t.Fatal(err)
		}
		in.handle(&nats.Msg{Subject: bus.TelemetrySubject("web", fmt.Sprintf("edge-%d", n)), Data: wire})
	}

	// The grace of window (0 s, 5 s] has ended.
	clock.Store(t0.Add(5*time.Second + analysis.Grace).UnixNano())
	if a := store.Assess(r, now()); len(a.Windows) != 0 {
		t.Fatalf("window (0 s, 5 s] judged %v (%s) while reports received in its grace were still queued",
			a.Windows[0].Verdict, a.Windows[0].Reason)
	}

	runIntake(t, in)
	waitMerged(t, m, 5, m.telemetry, 5, "merged")
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := store.Assess(r, now())
		if len(a.Windows) == 1 {
			if w := a.Windows[0]; w.Verdict != analysis.Fail {
				t.Fatalf("window (0 s, 5 s] %v once every report was merged, want fail: %s", w.Verdict, w.Reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("window (0 s, 5 s] never judged after the queue was worked off")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A report shed while the queue was full is marked in the store at the
// next flush: until then the window judge must not read the window it may
// belong to as a pass.
func TestIntake_WindowJudgeWaitsForShedReportsToBeMarked(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	store := analysis.NewStore()
	var clock atomic.Int64
	clock.Store(t0.Add(5*time.Second + 800*time.Millisecond).UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()).UTC() }
	in, _, _ := testIntake(t, store, now)
	in.queue = newReportQueue(1)
	in.dropping = in.queue.newHold()

	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodWindows}}
	spec.Default(sp)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0)}
	report := func(node string, sec int) *sv1.HealthReport {
		return &sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 3,
			WindowStart: timestamppb.New(t0.Add(time.Duration(sec-1) * time.Second)), WindowEnd: timestamppb.New(t0.Add(time.Duration(sec) * time.Second)),
			Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 10}, {Backend: "blue", Requests: 90}}}
	}
	for sec := 1; sec <= 5; sec++ {
		for n := range 10 {
			if err := store.Add(report(fmt.Sprintf("edge-%d", n), sec)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Two reports in a queue of one: the first is shed, pending.
	for _, node := range []string{"edge-10", "edge-11"} {
		wire, err := proto.Marshal(report(node, 5))
		if err != nil {
			t.Fatal(err)
		}
		in.handle(&nats.Msg{Subject: bus.TelemetrySubject("web", node), Data: wire})
	}
	// The one still queued is taken and merged.
	var dec analysis.Decoder
	buf := make([]*nats.Msg, 1)
	if n, _ := in.queue.take(buf, time.Time{}, nil); n != 1 {
		t.Fatalf("took %d reports, want 1", n)
	}
	rep, err := dec.Decode(buf[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	store.AddReports([]*analysis.Report{rep})

	clock.Store(t0.Add(5*time.Second + analysis.Grace).UnixNano())
	if a := store.Assess(r, now()); len(a.Windows) != 0 {
		t.Fatalf("window (0 s, 5 s] judged %v (%s) before the report shed in its grace was marked",
			a.Windows[0].Verdict, a.Windows[0].Reason)
	}
	in.flushShed()
	a := store.Assess(r, now())
	if len(a.Windows) != 1 || a.Windows[0].Verdict != analysis.Inconclusive {
		t.Fatalf("window (0 s, 5 s] after the shed report was marked: %+v, want inconclusive", a.Windows)
	}
}

// A drill's injected failures on its target nodes are not the release's:
// reports a target sent while the fault was on it are left out of the
// rollout's windows (counted), so a drill during a canary does not roll a
// good release back. Without that, the same telemetry fails the window.
func TestIntake_ADrillsFailuresAreNotJudgedAgainstTheRelease(t *testing.T) {
	t0 := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	now := func() time.Time { return t0.Add(5*time.Second + analysis.Grace) }
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodWindows}}
	spec.Default(sp)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0)}
	// Ten nodes; the drill's fault fails every green request on edge-8
	// and edge-9 and tags their reports.
	assess := func(unjudged func(drill, node, rollout string) bool) (analysis.Verdict, string, float64) {
		store := analysis.NewStore()
		in, m, im := testIntake(t, store, now)
		in.drillUnjudged = unjudged
		for sec := 1; sec <= 5; sec++ {
			for n := range 10 {
				node := fmt.Sprintf("edge-%d", n)
				rep := &sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 3,
					WindowStart: timestamppb.New(t0.Add(time.Duration(sec-1) * time.Second)), WindowEnd: timestamppb.New(t0.Add(time.Duration(sec) * time.Second)),
					Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 10}, {Backend: "blue", Requests: 90}}}
				if n >= 8 {
					rep.DrillId = "green-errors"
					rep.Backends[0].Errors = 10
				}
				wire, err := proto.Marshal(rep)
				if err != nil {
					t.Fatal(err)
				}
				in.handle(&nats.Msg{Subject: bus.TelemetrySubject("web", node), Data: wire})
			}
		}
		runIntake(t, in)
		waitMerged(t, m, 50, m.telemetry, 50, "merged")
		a := store.Assess(r, now())
		if len(a.Windows) != 1 {
			t.Fatalf("%d windows judged, want 1", len(a.Windows))
		}
		return a.Windows[0].Verdict, a.Windows[0].Reason, testutil.ToFloat64(im.drilled)
	}
	if v, why, _ := assess(nil); v != analysis.Fail {
		t.Fatalf("with the drill's reports judged, the window is %v (%s), want fail: the test does not show anything", v, why)
	}
	targets := func(drill, node, rollout string) bool {
		return drill == "green-errors" && (node == "edge-8" || node == "edge-9") && rollout == "r1"
	}
	v, why, drilled := assess(targets)
	if v == analysis.Fail {
		t.Fatalf("the drill's injected failures failed the release's window: %s", why)
	}
	if drilled != 10 {
		t.Fatalf("reports left out for the drill = %v, want 10", drilled)
	}
}
