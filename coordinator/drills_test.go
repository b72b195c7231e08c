package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func sendChaos(t *testing.T, nc *nats.Conn, in *sv1.Intent) *sv1.IntentResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := bus.SendIntent(ctx, nc, bus.IntentKindChaos, in)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func drillSpec(t *testing.T, yaml string) *sv1.DrillSpec {
	t.Helper()
	sp, err := chaos.ParseDrill([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

const testDrill = `
version: v1
name: d1
service: web
maxNodes: 2
maxPercent: 100
duration: 1m
fault:
  http: {backend: green, errorPercent: 20}
`

func TestCoordinator_DrillRunsThroughTheLeaderAndStopAll(t *testing.T) {
	nc, url := startNATS(t)
	startCoordinator(t, url, t.TempDir())
	for _, n := range []string{"edge-1", "edge-2", "edge-3"} {
		publishStatus(t, nc, n, 0)
	}
	waitFor(t, "three nodes seen", 5*time.Second, func() bool {
		var ans sv1.FleetAnswer
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return bus.Query(ctx, nc, bus.QueryFleet, &sv1.FleetQuery{Service: "web"}, &ans) == nil && len(ans.GetNodes()) == 3
	})
	// Over the cap: three nodes for a cap of two is refused before commit.
	res := sendChaos(t, nc, &sv1.Intent{Id: "d-over", Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: drillSpec(t, testDrill)}}})
	if res.GetAccepted() || res.GetCode() != "blast_radius" || !strings.Contains(res.GetError(), "more than drill.maxNodes 2") {
		t.Fatalf("over the cap: %v", res)
	}

	sp := drillSpec(t, strings.Replace(testDrill, "maxNodes: 2", "maxNodes: 3", 1))
	res = sendChaos(t, nc, &sv1.Intent{Id: "d-ok", Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}})
	if !res.GetAccepted() {
		t.Fatalf("drill refused: %v", res)
	}
	js, _ := jetstream.New(nc)
	var doc sv1.DrillDocument
	waitFor(t, "the drill document", 5*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, bus.DrillsBucket)
		if err != nil {
			return false
		}
		e, err := kv.Get(ctx, "d1")
		if err != nil {
			return false
		}
		opened, _, err := testTrust.OpenDrill(e.Value(), "d1", time.Now())
		proto.Reset(&doc)
		proto.Merge(&doc, opened)
		return err == nil && len(doc.GetTargets()) == 3
	})
	if !chaos.Targets(&doc, "edge-2", nil) || doc.GetAborted() {
		t.Fatalf("document %v", &doc)
	}

	res = sendChaos(t, nc, &sv1.Intent{Id: "stop", Action: &sv1.Intent_StopAllDrills{StopAllDrills: &sv1.StopAllDrills{Reason: "test"}}})
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	waitFor(t, "the aborted document", 5*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		kv, _ := js.KeyValue(ctx, bus.DrillsBucket)
		e, err := kv.Get(ctx, "d1")
		if err != nil {
			return false
		}
		d, _, err := testTrust.OpenDrill(e.Value(), "d1", time.Now())
		return err == nil && d.GetAborted() && d.GetGeneration() > doc.GetGeneration()
	})
	var ans sv1.DrillsAnswer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := bus.Query(ctx, nc, bus.QueryDrills, &sv1.DrillsQuery{Drill: "d1"}, &ans); err != nil {
		t.Fatal(err)
	}
	if d := ans.GetDrills()[0].GetDrill(); d.GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED {
		t.Fatalf("drill %v", d)
	}
}

const rollbackDrillOverCap = `
version: v1
name: rb-drill
service: web
rollout: web-1
maxNodes: 2
maxPercent: 100
duration: 1m
detectWithin: 30s
recoverWithin: 60s
fault:
  http: {backend: green, errorPercent: 30}
`

// TestCoordinator_RollbackDrillOverItsCapIsRefusedBeforeCommit: a rollback
// drill's targets are its rollout's current wave; a wave larger than the
// drill's cap is refused before anything is committed, not committed and
// then aborted at start.
func TestCoordinator_RollbackDrillOverItsCapIsRefusedBeforeCommit(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	for _, n := range []string{"edge-1", "edge-2", "edge-3"} {
		publishStatus(t, nc, n, 0)
	}
	waitFor(t, "three nodes seen", 5*time.Second, func() bool { return len(c.srv.fleet.Live("web")) == 3 })
	if res := send(t, nc, applyIntent("apply", "web-1")); !res.GetAccepted() {
		t.Fatal(res)
	}
	res := sendChaos(t, nc, &sv1.Intent{Id: "rb", Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: drillSpec(t, rollbackDrillOverCap)}}})
	if res.GetAccepted() || res.GetCode() != "blast_radius" || !strings.Contains(res.GetError(), "would touch 3 nodes, more than drill.maxNodes 2") {
		t.Fatalf("rollback drill over its cap: %v", res)
	}
	if d := c.srv.fsm.State().Drill("rb-drill"); d != nil {
		t.Fatalf("the refused drill was committed: %v", d)
	}
}
