package coordinator

import (
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A stolen node's credentials speaking for another node are refused and
// counted; the operator also reads it in the log, at the default level,
// with the subject that names the credentials to revoke, and a flood of
// them is a line every few seconds, not one per message.
func TestRefusals_ForgedReportsAndStatusesAreLoggedWithoutFlooding(t *testing.T) {
	b := startSecuredBus(t)
	start := time.Now()
	var clock atomic.Int64
	clock.Store(start.UnixNano())
	now := func() time.Time { return time.Unix(0, clock.Load()) }
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	in, m, _ := testIntake(t, analysis.NewStore(), now)
	in.log = log
	runIntake(t, in)
	f := newFleet(15*time.Second, newMetrics(prometheus.NewRegistry()), log)
	f.now = now
	coord := b.connect(t, bus.RoleCoordinator, "c1")
	if _, err := coord.Subscribe(bus.TelemetryAll(), in.handle); err != nil {
		t.Fatal(err)
	}
	if _, err := coord.Subscribe(bus.StatusAll(), f.handleStatus); err != nil {
		t.Fatal(err)
	}
	if err := coord.Flush(); err != nil {
		t.Fatal(err)
	}

	thief := b.connect(t, bus.RoleAgent, "edge-1")
	report, err := proto.Marshal(&sv1.HealthReport{Node: "edge-2", Service: "web", RolloutId: "r1", Generation: 3,
		WindowEnd: timestamppb.New(start.Truncate(time.Second)), Backends: []*sv1.BackendHealth{{Backend: "green", Requests: 10, Errors: 10}}})
	if err != nil {
		t.Fatal(err)
	}
	status, err := proto.Marshal(&sv1.AgentStatus{Node: "edge-2"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	for range n {
		if err := thief.Publish(bus.TelemetrySubject("web", "edge-1"), report); err != nil {
			t.Fatal(err)
		}
		if err := thief.Publish(bus.StatusSubject("edge-1"), status); err != nil {
			t.Fatal(err)
		}
	}
	if err := thief.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every forgery refused", 10*time.Second, func() bool {
		return testutil.ToFloat64(m.telemetryForged) == n && testutil.ToFloat64(f.metrics.statusRejected.WithLabelValues("wrong_subject")) == n
	})
	// The intake logs what it refused every clockLogEvery.
	clock.Add(int64(clockLogEvery))
	waitFor(t, "the refused reports logged", 10*time.Second, func() bool { return strings.Contains(logs.String(), "health reports refused") })

	out := logs.String()
	lines := func(s string) (n int) {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, s) {
				n++
			}
		}
		return n
	}
	if got := lines("level=WARN msg=\"agent status refused"); got != 1 {
		t.Errorf("%d warnings about the %d refused statuses within %v, want 1:\n%s", got, n, refusalLogEvery, out)
	}
	if got := lines("level=WARN msg=\"health reports refused"); got != 1 {
		t.Errorf("%d warnings about the %d refused reports, want 1:\n%s", got, n, out)
	}
	for _, want := range []string{
		"subject=switchyard.status.edge-1 node=edge-2",
		"reports=300 subject=switchyard.telemetry.web.edge-1 node=edge-2 service=web",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the log does not say %q:\n%s", want, out)
		}
	}
	// The next refusal past the pause says how many went unlogged.
	if err := thief.Publish(bus.StatusSubject("edge-1"), status); err != nil {
		t.Fatal(err)
	}
	if err := thief.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the next refusal logged", 10*time.Second, func() bool {
		return strings.Contains(logs.String(), "refused_before_unlogged=299")
	})
}
