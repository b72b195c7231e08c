package agent

import (
	"fmt"
	"runtime"
	"syscall"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// cpuSeconds is the CPU time this process used so far.
func cpuSeconds(t *testing.T) float64 {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	tv := func(v syscall.Timeval) float64 { return float64(v.Sec) + float64(v.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

// coresBusy measures the cores this process keeps busy over d.
func coresBusy(t *testing.T, d time.Duration) float64 {
	t.Helper()
	c0, w0 := cpuSeconds(t), time.Now()
	time.Sleep(d) // a measurement window, not a wait for an event
	return (cpuSeconds(t) - c0) / time.Since(w0).Seconds()
}

func TestDrillsLive_CPUBurnKeepsCoresBusyUntilTheEnd(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)
	idle := coresBusy(t, 500*time.Millisecond)
	// Asking for more cores than the host has burns all of them, no more.
	doc := drillDoc("burn", 2, &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 64}}}, time.Now(), 3*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, "burn", true)
	busy := coresBusy(t, time.Second)
	gone := ra.waitFault(t, 15*time.Second, "burn", false)
	after := coresBusy(t, 500*time.Millisecond)
	t.Logf("cores busy: %.2f idle, %.2f burning (host has %d), %.2f after; reverted %v after the end",
		idle, busy, runtime.NumCPU(), after, gone.Sub(doc.GetEndAt().AsTime()).Round(time.Millisecond))
	// Other test binaries may share the cores (go test runs packages in
	// parallel), so the burn is asked to be clearly there and bounded by the
	// host, not to own every core.
	if busy < idle+0.5 || busy > float64(runtime.NumCPU())+0.3 {
		t.Fatalf("%.2f cores busy during the burn (%.2f idle), want well above idle and at most the host's %d", busy, idle, runtime.NumCPU())
	}
	if after > idle+0.3 {
		t.Fatalf("%.2f cores busy after the burn, want back near %.2f", after, idle)
	}
}

func TestDrillsLive_BusDropKeepsTheBusAwayUntilTheEnd(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)
	statuses := b.statuses(t, "edge-1")
	doc := drillDoc("cut", 2, &sv1.Fault{Kind: &sv1.Fault_BusDrop{BusDrop: &sv1.BusDropFault{}}}, time.Now(), 4*time.Second)
	b.putDrill(t, doc)
	st := waitStatus(t, statuses, "the bus_drop fault", func(st *sv1.AgentStatus) bool {
		return len(st.GetFaults()) == 1 && st.GetFaults()[0].GetKind() == "bus_drop"
	})
	t.Logf("last status before the drop lists %v", st.GetFaults())
	waitFor(t, 5*time.Second, "the agent off the bus", func() error {
		if _, down := ra.BusDownFor(); !down {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	// Nothing gets through while the fault holds, though nats.go retries
	// every 250ms and the server is up.
	deadline := doc.GetEndAt().AsTime().Add(-500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if _, down := ra.BusDownFor(); !down {
			t.Fatalf("reconnected %v before the fault's end", time.Until(doc.GetEndAt().AsTime()))
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(t, 5*time.Second, "the agent back on the bus", func() error {
		if _, down := ra.BusDownFor(); down {
			return fmt.Errorf("still off the bus")
		}
		return nil
	})
	back := time.Now()
	t.Logf("back on the bus %v after the fault's end", back.Sub(doc.GetEndAt().AsTime()).Round(time.Millisecond))
	if back.Sub(doc.GetEndAt().AsTime()) > 2*time.Second {
		t.Fatalf("back %v after the end", back.Sub(doc.GetEndAt().AsTime()))
	}
	waitStatus(t, statuses, "no fault after reconnecting", func(st *sv1.AgentStatus) bool { return len(st.GetFaults()) == 0 })
	ra.waitMetric(t, 1, "switchyard_agent_faults_total", "kind", "bus_drop", "result", "reverted")
	ra.waitMetric(t, 1, "switchyard_agent_bus_connected")
}
