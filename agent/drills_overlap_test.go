package agent

import (
	"context"
	"errors"
	"os/exec"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard/switchyard/internal/clock"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestDrills_OverlappingHostFaultsDoNotEndEachOther: two drills on one
// node that both pause the same process, or both drop the bus, share one
// thing on the host. When the first ends, its revert (SIGCONT, letting the
// bus back) must not end the second's fault while the node still reports
// the second active: the second is not injected on this node, as a second
// state fault on a backend is not.
func TestDrills_OverlappingHostFaultsDoNotEndEachOther(t *testing.T) {
	pause := &sv1.Fault{Kind: &sv1.Fault_Process{Process: &sv1.ProcessFault{Process: "green", Action: "pause"}}}
	drop := &sv1.Fault{Kind: &sv1.Fault_BusDrop{BusDrop: &sv1.BusDropFault{}}}
	for _, c := range []struct {
		name  string
		fault *sv1.Fault
	}{{"process pause", pause}, {"bus drop", drop}} {
		t.Run(c.name, func(t *testing.T) {
			m, err := newMetrics(prometheus.NewRegistry())
			if err != nil {
				t.Fatal(err)
			}
			f, log, _ := testFollower(t, m, fuzzNow)
			defer f.shutdown()
			cmd := exec.Command("sleep", "60")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			f.processes = map[string]ProcessConfig{"green": {PIDFile: pidFile(t, t.TempDir(), cmd.Process.Pid)}}
			inFault := func() bool {
				if c.fault == pause {
					return procState(t, cmd.Process.Pid) == "T"
				}
				return f.gate.dropped.Load()
			}
			ctx := context.Background()

			f.deliver(ctx, drillDelivery{key: "first", raw: marshalDrill(t, drillDoc("first", 1, c.fault, fuzzNow, time.Minute))})
			f.deliver(ctx, drillDelivery{key: "second", raw: marshalDrill(t, drillDoc("second", 1, c.fault, fuzzNow, 2*time.Minute))})
			if f.faults["first"] == nil {
				t.Fatalf("first fault not injected: %s", log)
			}
			// A SIGSTOP takes effect when the process is next scheduled.
			waitFor(t, 5*time.Second, "the first fault in force", func() error {
				if !inFault() {
					return errors.New("not yet")
				}
				return nil
			})
			if got := testutil.ToFloat64(m.faults.WithLabelValues(faultKind(c.fault), faultRefused)); f.faults["second"] != nil || got != 1 {
				t.Errorf("second fault on the same host thing: injected %v, %v counted refused; want refused here", f.faults["second"] != nil, got)
			}
			aborted := drillDoc("first", 2, c.fault, fuzzNow, time.Minute)
			aborted.Aborted = true
			f.deliver(ctx, drillDelivery{key: "first", raw: marshalDrill(t, aborted)})
			if f.faults["first"] != nil {
				t.Fatalf("first fault not reverted: %s", log)
			}
			if f.faults["second"] != nil && !inFault() {
				t.Fatalf("the first drill's revert ended the second's fault, which the node still reports active: %v", f.activeFaults())
			}
		})
	}
}

// TestDrills_EndedDrillKeepsItsFence: an aborted drill's document is
// forgotten a while after its end, but not its fence. A node that first
// heard of the drill through its aborted document (it was cut off while
// the drill ran) must not take the drill's older, genuine document that is
// not aborted when it is put or pushed again later, while that document's
// own window is still open.
func TestDrills_EndedDrillKeepsItsFence(t *testing.T) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	f, log, _ := testFollower(t, m, fuzzNow.Add(90*time.Second))
	defer f.shutdown()
	ctx := context.Background()
	running := drillDoc("d1", 1, green100, fuzzNow, time.Hour)
	aborted := drillDoc("d1", 2, green100, fuzzNow, time.Minute) // ended at the abort
	aborted.Aborted = true
	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, aborted)})
	f.clock.(*clock.Fake).Advance(3 * time.Minute)
	f.checkFaults(ctx)

	f.deliver(ctx, drillDelivery{key: "d1", raw: marshalDrill(t, running)})
	f.reconcile(ctx, "d1")
	if f.faults["d1"] != nil {
		t.Fatalf("an aborted drill's fault was injected from its older document after the aborted one was forgotten: %s", log)
	}
}
