package coordinator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/drill"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// When the workers cannot keep up, intake sheds the oldest reports with a
// counter and marks them in the store as missing data; the newest, which
// it kept, are merged.
func TestIntake_ShedsTheOldestWhenTheQueueIsFullAndCountsIt(t *testing.T) {
	store := analysis.NewStore()
	now := time.Date(2026, 3, 1, 10, 0, 30, 200e6, time.UTC)
	in, m, im := testIntake(t, store, func() time.Time { return now })
	in.queue = newReportQueue(8)

	sk := sketch.New()
	sk.Add(0.02)
	msg := func(node string) *nats.Msg {
		wire, err := proto.Marshal(&sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 3,
			WindowEnd: timestamppb.New(now.Truncate(time.Second)),
			Backends:  []*sv1.BackendHealth{{Backend: "green", Requests: 10, Latency: sk.ToProto()}}})
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Subject: bus.TelemetrySubject("web", node), Data: wire}
	}
	// Nothing decodes yet: 7 reports and one garbage message fill the
	// queue, and each of the next 12 sheds the oldest waiting: the 7, the
	// garbage and 4 of the 12.
	for i := range 7 {
		in.handle(msg(fmt.Sprintf("edge-%d", i)))
	}
	in.handle(&nats.Msg{Subject: bus.TelemetrySubject("web", "edge-x"), Data: []byte{0xff, 0xff}})
	for i := range 12 {
		in.handle(msg(fmt.Sprintf("late-%d", i)))
	}
	if got := testutil.ToFloat64(im.shedTotal.WithLabelValues(shedQueueFull)); got != 12 {
		t.Fatalf("shed queue_full = %v, want 12", got)
	}
	in.flushShed()
	sec := now.Truncate(time.Second)
	if got := store.Shed("web", sec.Add(-time.Second), sec); got != 12 {
		t.Fatalf("store marks %d shed reports in the second, want 12", got)
	}
	if got := store.Shed("api", sec.Add(-time.Second), sec); got != 0 {
		t.Fatalf("another service has %d shed reports", got)
	}

	runIntake(t, in)
	waitMerged(t, m, 8, m.telemetry, 8, "merged")
	if got := testutil.ToFloat64(m.telemetryRejected); got != 0 {
		t.Fatalf("rejected %v reports, want 0: the garbage was shed before it was read", got)
	}
	req, _, nodes := store.NodeHealth("web", nil, sec.Add(-time.Second), sec)
	if nodes != 8 || req != 80 {
		t.Fatalf("store has %d nodes, %d requests for the second, want the 8 newest, 80", nodes, req)
	}
	for i := range 4 {
		if _, _, n := store.NodeHealth("web", map[string]bool{fmt.Sprintf("late-%d", i): true}, sec.Add(-time.Second), sec); n != 8 {
			t.Fatalf("late-%d, shed, is in the store", i)
		}
	}
	// A drop the NATS client reports has no subject: every service's
	// second is marked.
	in.shed("", shedSlowConsumer, 2)
	in.flushShed()
	if got := store.Shed("web", sec.Add(-time.Second), sec); got != 14 {
		t.Fatalf("after a slow-consumer drop: %d shed, want 14", got)
	}
	if got := testutil.ToFloat64(im.shedTotal.WithLabelValues(shedSlowConsumer)); got != 2 {
		t.Fatalf("shed slow_consumer = %v, want 2", got)
	}
}

// A report that waited longer than intakeMaxWait for a worker would reach
// the store after the judge read its second: it is shed, counted as
// waited_too_long and marked against the second it was received in, and
// the fresher reports are merged.
func TestIntake_ShedsReportsThatWaitedTooLong(t *testing.T) {
	store := analysis.NewStore()
	received := time.Date(2026, 3, 1, 10, 0, 30, 200e6, time.UTC)
	var clock atomic.Int64
	clock.Store(received.UnixNano())
	in, m, im := testIntake(t, store, func() time.Time { return time.Unix(0, clock.Load()) })
	sec := received.Truncate(time.Second)
	msg := func(node string) *nats.Msg {
		wire, err := proto.Marshal(&sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 3,
			WindowEnd: timestamppb.New(sec), Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 10}}})
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Subject: bus.TelemetrySubject("web", node), Data: wire}
	}
	for i := range 5 {
		in.handle(msg(fmt.Sprintf("old-%d", i)))
	}
	// No worker came for longer than intakeMaxWait (two seconds more: the
	// shed reports must be marked in the second they came in, not now);
	// then two more arrive.
	clock.Add(int64(intakeMaxWait + 2*time.Second))
	in.handle(msg("fresh-1"))
	in.handle(msg("fresh-2"))

	runIntake(t, in)
	waitMerged(t, m, 2, im.shedStale, 5, "shed waited_too_long")
	in.flushShed()
	if got := store.Shed("web", sec.Add(-time.Second), sec); got != 5 {
		t.Fatalf("store marks %d shed reports in the second they were received in, want 5", got)
	}
	if _, _, nodes := store.NodeHealth("web", nil, sec.Add(-time.Second), sec); nodes != 2 {
		t.Fatalf("store has %d nodes for the second, want the 2 fresh ones", nodes)
	}
	if got := testutil.ToFloat64(im.shedTotal.WithLabelValues(shedQueueFull)); got != 0 {
		t.Fatalf("shed queue_full = %v, want 0", got)
	}
}

// An agent's credentials let it publish only on its own subject; a report
// naming another node (or service) than its subject is refused and counted,
// so one node cannot forge another's health to force or mask a rollback.
func TestIntake_RefusesReportsWhoseNodeIsNotTheSubjects(t *testing.T) {
	store := analysis.NewStore()
	now := time.Date(2026, 3, 1, 10, 0, 30, 200e6, time.UTC)
	in, m, _ := testIntake(t, store, func() time.Time { return now })
	sec := now.Truncate(time.Second)
	msg := func(subjService, subjNode, service, node string, errors uint64) *nats.Msg {
		wire, err := proto.Marshal(&sv1.HealthReport{Node: node, Service: service, RolloutId: "r1", Generation: 3,
			WindowEnd: timestamppb.New(sec),
			Backends:  []*sv1.BackendHealth{{Backend: "green", Requests: 10, Errors: errors}}})
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Subject: bus.TelemetrySubject(subjService, subjNode), Data: wire}
	}
	// edge-1 reports honestly, then tries to report failures as edge-2,
	// as edge-2 on its own subject's service, and for another service.
	in.handle(msg("web", "edge-1", "web", "edge-1", 0))
	in.handle(msg("web", "edge-1", "web", "edge-2", 10))
	in.handle(msg("web", "edge-1", "web", "edge-10", 10))
	in.handle(msg("web", "edge-1", "api", "edge-1", 10))
	in.handle(msg("web", "edge-1", "we", "b.edge-1", 10))
	in.handle(&nats.Msg{Subject: "switchyard.telemetry.web", Data: msg("web", "edge-1", "web", "edge-1", 10).Data})

	runIntake(t, in)
	waitMerged(t, m, 1, m.telemetryRefused.WithLabelValues("wrong_subject"), 5, "refused as wrong_subject")
	if got := testutil.ToFloat64(m.telemetry); got != 1 {
		t.Fatalf("merged %v reports, want only the honest one", got)
	}
	if got := testutil.ToFloat64(m.telemetryRefused.WithLabelValues("malformed")); got != 0 {
		t.Fatalf("malformed = %v, want 0: the forged reports decode", got)
	}
	req, errs, nodes := store.NodeHealth("web", nil, sec.Add(-time.Second), sec)
	if nodes != 1 || req != 10 || errs != 0 {
		t.Fatalf("store holds %d requests, %d errors from %d nodes; want 10, 0, 1 (edge-1's own report)", req, errs, nodes)
	}
	if _, _, nodes := store.NodeHealth("api", nil, sec.Add(-time.Second), sec); nodes != 0 {
		t.Fatalf("a report forged for another service reached it (%d nodes)", nodes)
	}
}

// testIntake is an intake on store with its metrics on a registry of its
// own, quiet logs and the clock now.
// runIntake runs in's workers until the test or benchmark ends.
func runIntake(tb testing.TB, in *intake) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		in.run(ctx, nil)
	}()
	tb.Cleanup(func() {
		cancel()
		<-done
	})
}

// waitMerged waits until the intake has merged at least merged reports and
// other (named what) counts at least want.
func waitMerged(t *testing.T, m *metrics, merged float64, other prometheus.Collector, want float64, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.telemetry) < merged || testutil.ToFloat64(other) < want {
		if time.Now().After(deadline) {
			t.Fatalf("merged %v, %s %v; want %v and %v", testutil.ToFloat64(m.telemetry), what, testutil.ToFloat64(other), merged, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testIntake(tb testing.TB, store *analysis.Store, now func() time.Time) (*intake, *metrics, *intakeMetrics) {
	tb.Helper()
	reg := prometheus.NewRegistry()
	m := newMetrics(reg)
	var in *intake
	im, err := newIntakeMetrics(reg, m, func() *intake { return in })
	if err != nil {
		tb.Fatal(err)
	}
	in = newIntake(store, im, nil, slog.New(slog.NewTextHandler(io.Discard, nil)), now)
	return in, m, im
}

// A node whose clock runs far ahead cannot age out the fleet's telemetry:
// its reports are refused and counted (clock_ahead), and the log names it.
// A report a little ahead (within 5 s) is merged; one that comes after the
// judge may have read its second is merged and counted late, and the log
// names that node too.
func TestIntake_RefusesReportsDatedAheadOfItsClockAndCountsLateOnes(t *testing.T) {
	store := analysis.NewStore()
	now := time.Date(2026, 3, 1, 10, 0, 30, 200e6, time.UTC)
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	var logs lockedBuffer
	in, m, im := testIntake(t, store, func() time.Time { return time.Unix(0, clock.Load()) })
	in.log = slog.New(slog.NewTextHandler(&logs, nil))
	msg := func(node string, end time.Time) *nats.Msg {
		wire, err := proto.Marshal(&sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 3,
			WindowEnd: timestamppb.New(end), Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 10}}})
		if err != nil {
			t.Fatal(err)
		}
		return &nats.Msg{Subject: bus.TelemetrySubject("web", node), Data: wire}
	}
	sec := now.Truncate(time.Second)
	for i := range 5 {
		in.handle(msg(fmt.Sprintf("edge-%d", i), sec))
	}
	in.handle(msg("edge-skewed", sec.Add(4*time.Second)))
	in.handle(msg("edge-future", sec.Add(365*24*time.Hour)))
	in.handle(msg("edge-behind", sec.Add(-20*time.Second)))
	runIntake(t, in)
	waitMerged(t, m, 7, m.telemetryRefused.WithLabelValues("clock_ahead"), 1, "clock_ahead")
	if got := testutil.ToFloat64(im.late); got != 1 {
		t.Fatalf("late = %v, want 1 (edge-behind)", got)
	}
	// The fleet's second is still there: the report from a year ahead did
	// not age it out.
	if req, _, nodes := store.NodeHealth("web", nil, sec.Add(-time.Second), sec); nodes != 5 || req != 50 {
		t.Fatalf("the fleet's second holds %d nodes, %d requests; want 5, 50", nodes, req)
	}
	if _, _, nodes := store.NodeHealth("web", nil, sec.Add(3*time.Second), sec.Add(4*time.Second)); nodes != 1 {
		t.Fatal("a report 4 s ahead was not merged")
	}
	clock.Add(int64(clockLogEvery))
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "behind_by") {
		if time.Now().After(deadline) {
			t.Fatalf("no clock warnings logged: %s", logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, want := range []string{"node=edge-future ahead_by=8760h0m0s", "node=edge-behind behind_by=20s"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log does not say %q: %s", want, logs.String())
		}
	}
}

// The drill controller leaves a drill's targets out of the fleet's last
// drill.Lookback of traffic, which needs each node's own counts: the
// store keeps them for analysis.NodeDetail.
func TestIntake_NodeDetailCoversTheDrillLookback(t *testing.T) {
	if drill.Lookback > analysis.NodeDetail {
		t.Fatalf("the drill controller reads %v of each node's traffic, the store keeps %v", drill.Lookback, analysis.NodeDetail)
	}
}
