package agent

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var green100 = httpFault(&sv1.HTTPFault{Backend: "green", ErrorPercent: 100})

// allAnswered fails unless every request of s got a 200 from backend.
func allAnswered(t *testing.T, what string, s *sample, backend string) {
	t.Helper()
	if s.byBody[backend] != s.n {
		t.Fatalf("%s: %v, want every request answered by %s", what, s, backend)
	}
}

func TestDrillsLive_EndsOnTimeWithTheBusGone(t *testing.T) {
	b := startBusAt(t, t.TempDir())
	p := startChaosProxy(t, "")
	ra, cfg := chaosAgent(t, b, p, allGreen)
	doc := drillDoc("no-bus", 5, green100, time.Now(), 5*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, doc.GetDrill(), true)
	if s := measure(t, p.frontend, 50, 2, 2*time.Second); s.share(503) != 1 {
		t.Fatalf("with the fault: %v, want every request answered 503", s)
	}

	// NATS goes away for good: no coordinator, no abort, no bus.
	b.stopServer()
	waitFor(t, 10*time.Second, "the agent to notice the bus is gone", func() error {
		if _, down := ra.BusDownFor(); !down {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	gone := ra.waitFault(t, 15*time.Second, doc.GetDrill(), false)
	late := gone.Sub(doc.GetEndAt().AsTime())
	t.Logf("with NATS stopped, the fault was reverted %v after its end", late.Round(time.Millisecond))
	if late > revertSlack {
		t.Fatalf("reverted %v after its end, want within %v", late, revertSlack)
	}
	allAnswered(t, "after the end, bus still gone", measure(t, p.frontend, 200, 2, 2*time.Second), "green")
	ra.stop(t)
	recs := readJournal(t, cfg.StateDir)
	if len(recs) != 1 || !recs[0].Reverted || recs[0].OrigAddr == "" {
		t.Fatalf("journal %+v, want one reverted record with the original address", recs)
	}
}

func TestDrillsLive_CrashMidFaultRevertedOnRestart(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, cfg := chaosAgent(t, b, p, allGreen)
	greenAddr := p.serverAddr(t, "green")
	doc := drillDoc("crash", 7, green100, time.Now(), time.Minute)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, doc.GetDrill(), true)
	if s := measure(t, p.frontend, 50, 2, 2*time.Second); s.share(503) != 1 {
		t.Fatalf("with the fault: %v, want every request answered 503", s)
	}

	// The agent dies as with SIGKILL: nothing is reverted, its fault proxy
	// dies with it and HAProxy points green at a closed port.
	ra.drills.crashed.Store(true)
	ra.stop(t)
	dead := measure(t, p.frontend, 4, 4, 5*time.Second)
	t.Logf("agent dead mid-fault: %v", dead)
	if dead.byBody["green"] != 0 {
		t.Fatalf("with the agent dead mid-fault: %v, want green unreachable", dead)
	}
	recs := readJournal(t, cfg.StateDir)
	if len(recs) != 1 || recs[0].Reverted || recs[0].OrigAddr != greenAddr || recs[0].Drill != "crash" {
		t.Fatalf("journal after the crash %+v, want the active fault with original address %s", recs, greenAddr)
	}

	// The drill still runs on the bus; the new agent reverts the fault from
	// its journal and does not inject the drill again.
	ra2 := startLiveAgent(t, cfg)
	waitFor(t, 5*time.Second, "green at its own address", func() error {
		if got := p.serverAddr(t, "green"); got != greenAddr {
			return fmt.Errorf("green at %s", got)
		}
		return nil
	})
	waitFor(t, 10*time.Second, "the running drill read from the bucket", func() error {
		if ra2.drills.accepted.Load() == 0 {
			return fmt.Errorf("no drill document yet")
		}
		return nil
	})
	allAnswered(t, "after the restart", measure(t, p.frontend, 200, 2, 2*time.Second), "green")
	if f := ra2.Status().GetFaults(); len(f) != 0 {
		t.Fatalf("status after the restart lists %v", f)
	}
	if got := ra2.metric(t, "switchyard_agent_faults_total", "kind", "http", "result", "applied"); got != 0 {
		t.Fatalf("the restarted agent injected the drill again (%v applies)", got)
	}
	ra2.waitMetric(t, 1, "switchyard_agent_faults_total", "kind", "http", "result", "reverted")
	ra2.stop(t)
	recs = readJournal(t, cfg.StateDir)
	if len(recs) != 1 || !recs[0].Reverted {
		t.Fatalf("journal after the restart %+v, want the record reverted", recs)
	}
}

func TestDrillsLive_DocumentsDecideTheFault(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)
	greenAddr := p.serverAddr(t, "green")
	atGreen := func(want bool) error {
		if got := p.serverAddr(t, "green"); (got == greenAddr) != want {
			return fmt.Errorf("green at %s (its own: %s)", got, greenAddr)
		}
		return nil
	}

	t.Run("starts at start_at", func(t *testing.T) {
		start := time.Now().Add(1500 * time.Millisecond)
		doc := drillDoc("later", 2, green100, start, 2*time.Second)
		b.putDrill(t, doc)
		at := ra.waitFault(t, 5*time.Second, "later", true)
		if early := start.Sub(at); early > 0 {
			t.Fatalf("injected %v before its start", early)
		}
		t.Logf("injected %v after start_at", at.Sub(start).Round(time.Millisecond))
		ra.waitFault(t, 10*time.Second, "later", false)
	})
	t.Run("aborted", func(t *testing.T) {
		doc := drillDoc("abort-me", 3, green100, time.Now(), time.Minute)
		b.putDrill(t, doc)
		ra.waitFault(t, 5*time.Second, "abort-me", true)
		ab := proto.CloneOf(doc)
		ab.Generation, ab.Aborted = 4, true
		sent := time.Now()
		b.putDrill(t, ab)
		gone := ra.waitFault(t, 5*time.Second, "abort-me", false)
		t.Logf("reverted %v after the aborted document was written", gone.Sub(sent).Round(time.Millisecond))
		waitFor(t, time.Second, "green back", func() error { return atGreen(true) })
	})
	t.Run("untargeted", func(t *testing.T) {
		doc := drillDoc("move-on", 5, green100, time.Now(), time.Minute)
		b.putDrill(t, doc)
		ra.waitFault(t, 5*time.Second, "move-on", true)
		moved := proto.CloneOf(doc)
		moved.Generation, moved.Targets = 6, []string{"edge-2"}
		b.putDrill(t, moved)
		ra.waitFault(t, 5*time.Second, "move-on", false)
		waitFor(t, time.Second, "green back", func() error { return atGreen(true) })
	})
	t.Run("refused", func(t *testing.T) {
		before := ra.drills.accepted.Load()
		over := drillDoc("too-wide", 7, green100, time.Now(), time.Minute)
		over.Targets = []string{"edge-1", "edge-2"} // maxNodes is 1
		b.putDrill(t, over)
		other := drillDoc("other-service", 8, green100, time.Now(), time.Minute)
		other.Spec.Service = "api"
		b.putDrill(t, other)
		elsewhere := drillDoc("elsewhere", 9, green100, time.Now(), time.Minute)
		elsewhere.Spec.Selector = map[string]string{"region": "us"}
		b.putDrill(t, elsewhere)
		ra.waitMetric(t, 1, "switchyard_agent_drill_documents_rejected_total", "reason", "over_cap")
		waitFor(t, 5*time.Second, "three documents read", func() error {
			if got := ra.drills.accepted.Load() - before; got != 3 {
				return fmt.Errorf("%d read", got)
			}
			return nil
		})
		if f := ra.Status().GetFaults(); len(f) != 0 {
			t.Fatalf("faults %v; none of these drills may inject here", f)
		}
		if err := atGreen(true); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("stale and malformed", func(t *testing.T) {
		doc := drillDoc("fenced", 20, green100, time.Now(), 3*time.Second)
		b.putDrill(t, doc)
		ra.waitFault(t, 5*time.Second, "fenced", true)
		old := proto.CloneOf(doc)
		old.Generation, old.Aborted = 19, true
		raw, err := testSigner.SealDrill(old, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		b.publishDrillRaw(t, "fenced", raw)
		b.publishDrillRaw(t, "fenced", []byte("\xff\x00 not a drill"))
		ra.waitMetric(t, 1, "switchyard_agent_drill_documents_rejected_total", "reason", "stale")
		ra.waitMetric(t, 1, "switchyard_agent_drill_documents_rejected_total", "reason", "malformed")
		if f := ra.Status().GetFaults(); len(f) != 1 {
			t.Fatalf("an older aborted document reverted the fault: %v", f)
		}
		ra.waitFault(t, 10*time.Second, "fenced", false)
	})
}
