package agent

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// These tests inject each fault through a running agent into a real
// HAProxy carrying real requests, measure what the fault does to them, and
// measure again after the fault's end. Requests go on new connections, so
// HAProxy picks its server connection afresh for each one (see
// docs/agent.md on keep-alive connections opened before a fault).

// errTolerance is how far a measured error share may be from the injected
// one over errSamples requests: at p = 0.2 the binomial standard deviation
// over 1500 requests is 1.0 point, so 4 points is about four of them.
const (
	errSamples   = 1500
	errTolerance = 0.04
)

// revertSlack bounds how late after a drill's end the fault may still be
// seen: the revert runs off a local timer, so this is scheduling, the
// runtime API round trip and this test's polling.
const revertSlack = time.Second

// inFault fails a test whose measurement ran past the fault's end: its
// numbers would mix the fault with its absence.
func inFault(t *testing.T, s *sample, end time.Time) {
	t.Helper()
	if s.end.After(end) {
		t.Fatalf("the measurement (%v) ran %v past the fault's end; lengthen the drill", s.end.Sub(s.start).Round(time.Millisecond), s.end.Sub(end).Round(time.Millisecond))
	}
}

func TestDrillsLive_HTTPErrorShareAndRevertAtEnd(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)
	reports := b.telemetry(t, "web")
	greenAddr := p.serverAddr(t, "green")

	start := time.Now()
	doc := drillDoc("green-errors", 10, httpFault(&sv1.HTTPFault{Backend: "green", ErrorPercent: 20}), start, 12*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, "green-errors", true)
	if got := p.serverAddr(t, "green"); got == greenAddr {
		t.Fatalf("green still at %s with the fault active", got)
	}

	s := measure(t, p.frontend, errSamples, 4, 5*time.Second)
	inFault(t, s, doc.GetEndAt().AsTime())
	got := s.share(503)
	t.Logf("during the fault: %v; 503 share %.1f%% (injected 20%%)", s, 100*got)
	if math.Abs(got-0.20) > errTolerance || s.failures != 0 || s.byStatus[200]+s.byStatus[503] != s.n {
		t.Fatalf("503 share %.3f, want 0.20 ± %.2f with nothing but 200 and 503: %v", got, errTolerance, s)
	}

	// The fault ends at end_at by the agent's own timer.
	gone := ra.waitFault(t, 20*time.Second, "green-errors", false)
	late := gone.Sub(doc.GetEndAt().AsTime())
	t.Logf("fault reverted %v after the drill's end", late.Round(time.Millisecond))
	if late > revertSlack {
		t.Fatalf("fault reverted %v after its end, want within %v", late, revertSlack)
	}
	if got := p.serverAddr(t, "green"); got != greenAddr {
		t.Fatalf("after the revert green is at %s, want its own %s", got, greenAddr)
	}
	after := measure(t, p.frontend, 300, 4, 5*time.Second)
	if after.byBody["green"] != after.n {
		t.Fatalf("after the fault: %v, want every request answered by green", after)
	}
	ra.waitMetric(t, 1, "switchyard_agent_faults_total", "kind", "http", "result", "applied")
	ra.waitMetric(t, 1, "switchyard_agent_faults_total", "kind", "http", "result", "reverted")
	ra.waitMetric(t, 0, "switchyard_agent_faults_active", "kind", "http")

	// Telemetry of windows during the fault carries the drill and counts
	// the fault proxy's 503s as green's errors; windows after do not.
	var tagged, untaggedAfter int
	var errs, reqs uint64
	drain := time.After(2 * time.Second)
	for done := false; !done; {
		select {
		case r := <-reports:
			end := r.GetWindowEnd().AsTime()
			switch {
			case r.GetDrillId() == "green-errors":
				tagged++
				// The share is read over the windows wholly inside the
				// fault: the one it ended in also holds the requests
				// measured after it.
				if g := backendHealth(r, "green"); g != nil && !end.After(doc.GetEndAt().AsTime()) {
					reqs += g.GetRequests()
					errs += g.GetErrors()
				}
			case r.GetDrillId() != "":
				t.Errorf("report tagged with %q", r.GetDrillId())
			case end.After(gone.Add(time.Second)):
				untaggedAfter++
			case end.After(start.Add(time.Second)) && end.Before(doc.GetEndAt().AsTime()):
				t.Errorf("window %s..%s inside the fault has no drill id", r.GetWindowStart().AsTime().Format(time.StampMilli), end.Format(time.StampMilli))
			}
		case <-drain:
			done = true
		}
	}
	t.Logf("telemetry: %d windows tagged, green %d errors of %d requests; %d untagged windows after", tagged, errs, reqs, untaggedAfter)
	if tagged == 0 || reqs == 0 || math.Abs(float64(errs)/float64(reqs)-0.2) > 0.05 {
		t.Errorf("tagged windows %d with green errors %d/%d, want some near 20%%", tagged, errs, reqs)
	}
	if untaggedAfter == 0 {
		t.Errorf("no untagged window after the fault")
	}
}

func TestDrillsLive_HTTPDelayAtP50(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)

	base := measure(t, p.frontend, 300, 2, 5*time.Second)
	start := time.Now()
	doc := drillDoc("green-slow", 3, httpFault(&sv1.HTTPFault{Backend: "green", Delay: durationpb.New(100 * time.Millisecond)}), start, 15*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, "green-slow", true)
	s := measure(t, p.frontend, 300, 8, 5*time.Second)
	inFault(t, s, doc.GetEndAt().AsTime())
	added := s.p50() - base.p50()
	t.Logf("p50 %v before, %v with +100ms injected: +%v; fastest %v", base.p50(), s.p50(), added, s.fastest())
	// Every request waits the delay once: the fastest takes at least
	// 100ms and less than twice that (a machine loaded by other tests
	// slows the median, not the fastest of 300).
	if added < 90*time.Millisecond || s.fastest() < 100*time.Millisecond || s.fastest() >= 200*time.Millisecond || s.byBody["green"] != s.n {
		t.Fatalf("p50 rose by %v and the fastest took %v, want +100ms once (p50 +90ms or more, fastest 100..200ms), all answered by green: %v", added, s.fastest(), s)
	}
	ra.waitFault(t, 20*time.Second, "green-slow", false)
	after := measure(t, p.frontend, 300, 2, 5*time.Second)
	t.Logf("p50 after the fault: %v, fastest %v", after.p50(), after.fastest())
	if after.fastest() >= 100*time.Millisecond || after.p50() >= 100*time.Millisecond {
		t.Fatalf("after the fault p50 %v, fastest %v: want requests no longer delayed by 100ms (p50 %v before)", after.p50(), after.fastest(), base.p50())
	}
}

func TestDrillsLive_BackendStateTakesGreenOut(t *testing.T) {
	for _, st := range []string{"maint", "drain"} {
		t.Run(st, func(t *testing.T) {
			b := startBus(t)
			p := startChaosProxy(t, "")
			half := map[string]uint32{"blue": 50, "green": 50}
			ra, _ := chaosAgent(t, b, p, half)
			before := measure(t, p.frontend, 200, 2, 5*time.Second)
			if before.byBody["green"] < 60 || before.byBody["blue"] < 60 {
				t.Fatalf("before the fault: %v, want both backends serving", before)
			}
			doc := drillDoc("green-"+st, 4, stateFaultOf("green", st), time.Now(), 6*time.Second)
			b.putDrill(t, doc)
			ra.waitFault(t, 5*time.Second, doc.GetDrill(), true)
			s := measure(t, p.frontend, 300, 2, 5*time.Second)
			inFault(t, s, doc.GetEndAt().AsTime())
			t.Logf("green in %s: %v", st, s)
			if s.byBody["green"] != 0 || s.byBody["blue"] != s.n {
				t.Fatalf("green in %s: %v, want every request on blue", st, s)
			}
			gone := ra.waitFault(t, 15*time.Second, doc.GetDrill(), false)
			if late := gone.Sub(doc.GetEndAt().AsTime()); late > revertSlack {
				t.Fatalf("reverted %v after the end", late)
			}
			after := measure(t, p.frontend, 200, 2, 5*time.Second)
			if after.byBody["green"] < 60 || after.byBody["blue"] < 60 {
				t.Fatalf("after the fault: %v, want both backends serving again", after)
			}
			if w := p.weights(t); w["green"] != 50 {
				t.Fatalf("weights after the fault %v, want the rollout's 50/50", w)
			}
		})
	}
}

func TestDrillsLive_TCPFaults(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)
	base := measure(t, p.frontend, 200, 2, 5*time.Second)
	baseBig := measure(t, p.bigURL, 20, 1, 5*time.Second)
	gen := uint64(10)
	run := func(name string, f *sv1.TCPFault, d time.Duration, during func(*testing.T, time.Time)) {
		t.Run(name, func(t *testing.T) {
			gen++
			doc := drillDoc("tcp-"+name, gen, tcpFault(f), time.Now(), d)
			b.putDrill(t, doc)
			ra.waitFault(t, 5*time.Second, doc.GetDrill(), true)
			during(t, doc.GetEndAt().AsTime())
			gone := ra.waitFault(t, d+10*time.Second, doc.GetDrill(), false)
			if late := gone.Sub(doc.GetEndAt().AsTime()); late > revertSlack {
				t.Fatalf("reverted %v after the end", late)
			}
			after := measure(t, p.frontend, 200, 2, 5*time.Second)
			if after.byBody["green"] != after.n {
				t.Fatalf("after the fault: %v, want every request answered by green", after)
			}
		})
	}
	run("reset", &sv1.TCPFault{Backend: "green", Kind: "reset"}, 6*time.Second, func(t *testing.T, end time.Time) {
		// A reset can look like a failed connect to HAProxy, which then
		// waits a second before its retry: few requests, many clients.
		s := measure(t, p.frontend, 40, 8, 5*time.Second)
		inFault(t, s, end)
		t.Logf("reset: %v in %v", s, s.end.Sub(s.start).Round(time.Millisecond))
		if s.byBody["green"] != 0 || s.byStatus[502]+s.byStatus[503]+s.failures != s.n {
			t.Fatalf("reset: %v, want every request to fail", s)
		}
	})
	run("latency", &sv1.TCPFault{Backend: "green", Kind: "latency", Latency: durationpb.New(100 * time.Millisecond)}, 8*time.Second, func(t *testing.T, end time.Time) {
		s := measure(t, p.frontend, 200, 8, 5*time.Second)
		inFault(t, s, end)
		added := s.p50() - base.p50()
		t.Logf("latency: p50 %v before, %v during: +%v", base.p50(), s.p50(), added)
		// The fault adds 100 ms to every answer; a loaded machine adds its
		// own scheduling delay on top, so only a floor and a bound far
		// below a lost answer are checked.
		if added < 90*time.Millisecond || added > time.Second || s.byBody["green"] != s.n {
			t.Fatalf("p50 rose by %v, want at least +90ms of the +100ms fault and well under a lost answer, all answered: %v", added, s)
		}
	})
	run("blackhole", &sv1.TCPFault{Backend: "green", Kind: "blackhole"}, 4*time.Second, func(t *testing.T, end time.Time) {
		s := measure(t, p.frontend, 8, 8, 500*time.Millisecond)
		inFault(t, s, end)
		t.Logf("blackhole: %v", s)
		if s.failures != s.n {
			t.Fatalf("blackhole: %v, want every request without an answer within 500ms", s)
		}
	})
	const bps = 128 << 10
	run("bandwidth", &sv1.TCPFault{Backend: "green", Kind: "bandwidth", BytesPerSecond: bps}, 8*time.Second, func(t *testing.T, end time.Time) {
		s := measure(t, p.bigURL, 3, 1, 5*time.Second)
		inFault(t, s, end)
		// The limiter lets one second's worth through at once (its burst),
		// then bps: the rest of a 256 KiB answer at 128 KiB/s takes one
		// second.
		perReq := s.end.Sub(s.start) / time.Duration(s.n)
		rate := float64(bigBody-bps) / perReq.Seconds()
		t.Logf("bandwidth: %v per %d KiB answer (%v before): %.0f KiB/s after the burst, %d KiB/s injected", perReq.Round(time.Millisecond), bigBody>>10, baseBig.p50().Round(time.Millisecond), rate/1024, bps>>10)
		if s.byStatus[200] != s.n || rate > 1.25*bps || rate < 0.75*bps {
			t.Fatalf("bandwidth: %v at %.0f B/s after the burst, want %d B/s ± 25%%", s, rate, bps)
		}
	})
}

// TestDrillsLive_DrillHoldsOnlyItsOwnBackend: while a drill holds green in
// maintenance on purpose, an operator who puts blue in maintenance by hand
// leaves the node serving nothing. The drill excuses green alone: blue held
// is drift, reported and set back into rotation.
func TestDrillsLive_DrillHoldsOnlyItsOwnBackend(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	half := map[string]uint32{"blue": 50, "green": 50}
	ra, _ := chaosAgent(t, b, p, half)
	doc := drillDoc("green-maint", 4, stateFaultOf("green", "maint"), time.Now(), time.Minute)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, doc.GetDrill(), true)
	waitFor(t, 5*time.Second, "green held by the drill, the proxy matching", func() error {
		svc := serviceStatus(ra.Status(), "web")
		if svc.GetObservedStates()["green"] != "maint" || !svc.GetObservedMatches() {
			return fmt.Errorf("status %v", svc)
		}
		return nil
	})
	if err := p.driver(t).SetState(context.Background(), "blue", "maint"); err != nil {
		t.Fatal(err)
	}
	d := p.driver(t)
	waitFor(t, 5*time.Second, "blue back in rotation", func() error {
		st, err := d.ServerState(context.Background(), "blue")
		if err != nil {
			return err
		}
		if st != "ready" {
			return fmt.Errorf("blue is %s", st)
		}
		return nil
	})
	if n := ra.metric(t, "switchyard_agent_drift_total", "service", "web"); n < 1 {
		t.Errorf("switchyard_agent_drift_total = %v, want the hand-set maint of blue counted", n)
	}
	if st, err := d.ServerState(context.Background(), "green"); err != nil || st != "maint" {
		t.Errorf("green is %q (%v), want still in the drill's maint", st, err)
	}
}
