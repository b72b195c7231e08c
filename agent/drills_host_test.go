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

// schedDemand is the nanoseconds this process's threads spent on a CPU
// or waiting in a run queue for one, from /proc/self/task/*/schedstat.
func schedDemand(t *testing.T) int64 {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
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
			total += n
		}
	}
	return total
}

// coresDemanded measures the cores this process asks for over d: time
// running plus time runnable but waiting for a core. Unlike the cores it
// gets, this does not shrink when other processes load the machine, so a
// burn is seen as a burn however busy the host is.
func coresDemanded(t *testing.T, d time.Duration) float64 {
	t.Helper()
	n0, w0 := schedDemand(t), time.Now()
	time.Sleep(d) // a measurement window, not a wait for an event
	return float64(schedDemand(t)-n0) / float64(time.Since(w0).Nanoseconds())
}

func TestDrillsLive_CPUBurnKeepsCoresBusyUntilTheEnd(t *testing.T) {
	b := startBus(t)
	p := startChaosProxy(t, "")
	ra, _ := chaosAgent(t, b, p, allGreen)
	idle := coresDemanded(t, 500*time.Millisecond)
	// Asking for more cores than the host has burns all of them, no more.
	doc := drillDoc("burn", 2, &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 64}}}, time.Now(), 3*time.Second)
	b.putDrill(t, doc)
	ra.waitFault(t, 5*time.Second, "burn", true)
	c0, w0 := cpuSeconds(t), time.Now()
	demanded := coresDemanded(t, time.Second)
	got := (cpuSeconds(t) - c0) / time.Since(w0).Seconds()
	gone := ra.waitFault(t, 15*time.Second, "burn", false)
	after := coresDemanded(t, 500*time.Millisecond)
	cores := float64(runtime.NumCPU())
	t.Logf("cores demanded: %.2f idle, %.2f burning (%.2f got; host has %d), %.2f after; reverted %v after the end",
		idle, demanded, got, runtime.NumCPU(), after, gone.Sub(doc.GetEndAt().AsTime()).Round(time.Millisecond))
	// The burn keeps every core's worth of threads running or runnable
	// (other test binaries may take the cores from it: that is load, not
	// a weaker burn), and never more than the host has.
	if demanded < idle+cores-0.5 || got > cores+0.3 {
		t.Fatalf("%.2f cores demanded during the burn (%.2f idle), %.2f used: want about the host's %d more than idle, and at most %d used", demanded, idle, got, runtime.NumCPU(), runtime.NumCPU())
	}
	if after > idle+0.3 {
		t.Fatalf("%.2f cores demanded after the burn, want back near %.2f", after, idle)
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
