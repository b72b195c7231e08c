package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// chaos status NAME shows what the drill's report holds: which targets
// reported the fault active and when, and which never did, not only how
// many.
func TestCLI_ChaosStatusOfADrillSaysWhichTargetsWereInjectedWhen(t *testing.T) {
	url, nc := runNATS(t)
	start := time.Date(2026, 11, 25, 12, 0, 5, 0, time.UTC)
	at1 := start.Add(300 * time.Millisecond)
	at3 := start.Add(2 * time.Second)
	detected := start.Add(9 * time.Second)
	answerQuery(t, nc, bus.QueryDrills, &sv1.DrillsAnswer{Drills: []*sv1.DrillView{{Drill: &sv1.Drill{
		Id: "d1", Spec: &sv1.DrillSpec{Name: "d1", Service: "web"}, Phase: sv1.DrillPhase_DRILL_PHASE_ENDED,
		Targets: []string{"edge-1", "edge-2", "edge-3"}, StartAt: timestamppb.New(start), EndAt: timestamppb.New(start.Add(time.Minute)),
		Report: &sv1.DrillReport{
			Injected:        []*sv1.NodeFaultTime{{Node: "edge-1", At: timestamppb.New(at1)}, {Node: "edge-3", At: timestamppb.New(at3)}},
			FirstInjectedAt: timestamppb.New(at1), DetectedAt: timestamppb.New(detected),
			Verdict: "fail", Summary: "fault seen active on 2 of 3 targets",
		},
	}}}})
	code, stdout, stderr := runCLI(t, "chaos", "status", "d1", "--nats", url, "--timeout", "5s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	t.Log(stdout)
	line := func(node string) string {
		for _, l := range strings.Split(stdout, "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == node {
				return l
			}
		}
		return ""
	}
	if l := line("edge-1"); !strings.Contains(l, clockMillis(at1)) {
		t.Errorf("edge-1: %q, want its injection time", l)
	}
	if l := line("edge-3"); !strings.Contains(l, clockMillis(at3)) {
		t.Errorf("edge-3: %q, want its injection time", l)
	}
	if l := line("edge-2"); !strings.Contains(l, "never reported") {
		t.Errorf("edge-2: %q, want never reported", l)
	}
	if !strings.Contains(stdout, "rollback decided at "+clockMillis(detected)) {
		t.Error("the detection time is not shown")
	}
}
