package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The kill switch sent while no coordinator leads waits on the intent
// stream. A drill whose start came meanwhile must not start when a leader
// is back before that leader has read the kill switch: a drill stopped
// before it began injects nothing (a process fault's kill cannot be taken
// back).
func TestCoordinator_StopAllSentWithoutALeaderStopsADrillBeforeItStarts(t *testing.T) {
	nc, url := startNATS(t)
	dir := t.TempDir()
	fast := func(c *Config) { c.StaleAfter = 300 * time.Millisecond }
	c := startCoordinatorWith(t, url, dir, fast)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for ctx.Err() == nil {
			for _, n := range []string{"edge-1", "edge-2", "edge-3"} {
				_ = nc.Publish(bus.StatusSubject(n), statusBody("web", n))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	waitFor(t, "three live nodes", 5*time.Second, func() bool { return len(c.srv.fleet.Live("web")) == 3 })
	sp := drillSpec(t, strings.Replace(strings.Replace(testDrill, "maxNodes: 2", "maxNodes: 3", 1), "duration: 1m", "startAfter: 2s\nduration: 10m", 1))
	if res := sendChaos(t, nc, &sv1.Intent{Id: "run", Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}); !res.GetAccepted() {
		t.Fatalf("drill refused: %v", res)
	}
	startAt := c.srv.fsm.State().Drill("d1").GetStartAt().AsTime()

	// No leader: the kill switch waits on the stream.
	c.stop()
	sctx, scancel := context.WithTimeout(context.Background(), time.Second)
	_, err := bus.SendIntent(sctx, nc, bus.IntentKindChaos, &sv1.Intent{Id: "stop", Operator: "sre",
		Action: &sv1.Intent_StopAllDrills{StopAllDrills: &sv1.StopAllDrills{Reason: "outage"}}})
	scancel()
	if err == nil {
		t.Fatal("stop-all answered with no coordinator running")
	}
	time.Sleep(time.Until(startAt.Add(500 * time.Millisecond)))

	// A leader again, hearing the fleet at once.
	c = startCoordinatorWith(t, url, dir, fast)
	waitFor(t, "the drill ended", 10*time.Second, func() bool {
		d := c.srv.fsm.State().Drill("d1")
		return d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ABORTED || d.GetPhase() == sv1.DrillPhase_DRILL_PHASE_ENDED
	})
	d := c.srv.fsm.State().Drill("d1")
	if d.GetGeneration() != 0 || len(d.GetTargets()) != 0 || d.GetAbortReason() != "outage" {
		t.Fatalf("drill started before the kill switch waiting for the leader was read: generation %d, targets %v, reason %q",
			d.GetGeneration(), d.GetTargets(), d.GetAbortReason())
	}
}

func statusBody(service, node string) []byte {
	b, _ := (&sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{{
		Service: service, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK, ObservedMatches: true,
	}}}).MarshalVT()
	return b
}
