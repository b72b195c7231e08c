package agent

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
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

// schedDemand is, per thread of this process, the nanoseconds it spent
// on a CPU or waiting in a run queue for one (/proc/self/task/*/schedstat).
func schedDemand(t *testing.T) map[string]int64 {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int64, len(tasks))
	for _, task := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + task.Name() + "/schedstat")
		if err != nil {
			continue // the thread ended meanwhile
		}
		f := strings.Fields(string(b))
		if len(f) < 2 {
			t.Fatalf("schedstat of thread %s: %q", task.Name(), b)
		}
		for _, v := range f[:2] {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatalf("schedstat of thread %s: %q: %v", task.Name(), b, err)
			}
			out[task.Name()] += n
		}
	}
	return out
}

// demand measures this process over a window of d: the cores it asked
// for (time running plus time runnable but waiting for a core, which a
// machine loaded by other processes does not shrink), the cores it used,
// and how many of its threads spun (asked for a core at least 80% of the
// window).
func demand(t *testing.T, d time.Duration) (asked, used float64, spinning int) {
	t.Helper()
	n0, c0, w0 := schedDemand(t), cpuSeconds(t), time.Now()
	time.Sleep(d) // a measurement window, not a wait for an event
	n1, c1, window := schedDemand(t), cpuSeconds(t), time.Since(w0)
	var total int64
	for tid, ns := range n1 {
		total += ns - n0[tid]
		if float64(ns-n0[tid]) >= 0.8*float64(window.Nanoseconds()) {
			spinning++
		}
	}
	return float64(total) / float64(window.Nanoseconds()), (c1 - c0) / window.Seconds(), spinning
}

func TestDrillsLive_CPUBurnKeepsCoresBusyUntilTheEnd(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)
	idle, _, _ := demand(t, 500*time.Millisecond)
	// Asking for more cores than the host has burns all of them, no more.
	doc := drillDoc("burn", 2, &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 64}}}, time.Now(), 3*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, "burn", true)
	asked, used, _ := demand(t, time.Second)
	gone := ra.waitFault(t, 15*time.Second, "burn", false)
	after, _, spinning := demand(t, 500*time.Millisecond)
	cores := runtime.NumCPU()
	t.Logf("cores asked for: %.2f idle, %.2f burning (%.2f used; host has %d), %.2f after with %d threads spinning; reverted %v after the end",
		idle, asked, used, cores, after, spinning, gone.Sub(doc.GetEndAt().AsTime()).Round(time.Millisecond))
	// The burn asks for every core (other test binaries may take them from
	// it: that is load, not a weaker burn) and never uses more than the
	// host has; after it no thread spins.
	if asked < 0.85*float64(cores) || used > float64(cores)+0.3 {
		t.Fatalf("%.2f cores asked for during the burn (%.2f idle), %.2f used: want every core of the host's %d asked for, at most %d used", asked, idle, used, cores, cores)
	}
	if spinning > 0 {
		t.Fatalf("%d threads still spin after the burn (%.2f cores asked for, %.2f idle)", spinning, after, idle)
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
