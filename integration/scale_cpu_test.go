package integration

import (
	"runtime/metrics"
	"syscall"
	"time"
)

// CPU accounting of the scale benchmark: everything of the decision path
// (NATS server, coordinator, agents) runs in this process, so the process's
// CPU time over a decision, divided by the agents, is what each agent's
// share of the burst costs.

// rusageThread is Linux's RUSAGE_THREAD: the calling thread alone.
const rusageThread = 1

func rusageCPU(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// processCPU is the user and system CPU time this process has used.
func processCPU() time.Duration { return rusageCPU(syscall.RUSAGE_SELF) }

// threadCPU is the CPU time of the calling OS thread; the caller locks its
// goroutine to the thread (runtime.LockOSThread) for as long as it measures.
func threadCPU() time.Duration { return rusageCPU(rusageThread) }

// heapAllocated is the bytes this process has allocated on the heap so
// far (read without stopping the world).
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64()
}
