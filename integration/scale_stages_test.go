package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/coordinator"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Per-stage timing of the scale benchmark: the coordinator's own stages
// from its record of the write, the agents' from the stamps their statuses
// carry. Everything runs in this process, so every stage is on one clock.

// stageOrder is the decision path, in order.
var stageOrder = []string{"commit", "publish", "deliver", "verify", "apply", "persist", "status", "report"}

// stampedStatus is one agent's stamps of one generation, and when its
// status reached the benchmark.
type stampedStatus struct {
	timing   *sv1.ApplyTiming
	sent     time.Time
	received time.Time
}

// stageTimings keeps the first status of each node that carried the stamps
// of a generation. Statuses are kept raw as they arrive and decoded only
// once every agent applied, so that hearing them costs the agents nothing.
type stageTimings struct {
	mu    sync.Mutex
	raw   []rawStatus
	byGen map[uint64]map[string]stampedStatus
	// decodeCPU is the CPU time spent decoding statuses: the benchmark's
	// own work, left out of the decision path's.
	decodeCPU time.Duration
}

type rawStatus struct {
	data     []byte
	received time.Time
}

func newStageTimings() *stageTimings {
	return &stageTimings{byGen: map[uint64]map[string]stampedStatus{}}
}

func (s *stageTimings) onStatus(m *nats.Msg) {
	received := time.Now()
	s.mu.Lock()
	s.raw = append(s.raw, rawStatus{data: m.Data, received: received})
	s.mu.Unlock()
}

// decode files the statuses that arrived since the last call. The caller
// holds s.mu.
func (s *stageTimings) decode() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start := threadCPU()
	defer func() { s.decodeCPU += threadCPU() - start }()
	for _, r := range s.raw {
		var st sv1.AgentStatus
		if proto.Unmarshal(r.data, &st) != nil {
			continue
		}
		for _, svc := range st.GetServices() {
			t := svc.GetApplyTiming()
			if t == nil {
				continue
			}
			g := s.byGen[t.GetGeneration()]
			if g == nil {
				g = map[string]stampedStatus{}
				s.byGen[t.GetGeneration()] = g
			}
			if _, ok := g[st.GetNode()]; !ok {
				g[st.GetNode()] = stampedStatus{timing: t, sent: st.GetAt().AsTime(), received: r.received}
			}
		}
	}
	s.raw = s.raw[:0]
}

// collect waits until n agents reported the stamps of pub's generation and
// adds every stage to stages.
//
// It returns this decision's slowest time in each stage, in stageOrder, so
// that a p99 over the decisions can be traced to the decision it came
// from.
func (s *stageTimings) collect(ctx context.Context, b testing.TB, pub coordinator.DecisionTiming, n int, stages map[string][]time.Duration) string {
	gen := pub.Fence.Generation
	for {
		s.mu.Lock()
		s.decode()
		got := len(s.byGen[gen])
		s.mu.Unlock()
		if got >= n {
			break
		}
		select {
		case <-ctx.Done():
			b.Fatalf("%d of %d agents reported the stamps of generation %d", got, n, gen)
		case <-time.After(5 * time.Millisecond):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	slowest := map[string]time.Duration{}
	add := func(stage string, from, to time.Time) {
		d := max(to.Sub(from), 0)
		stages[stage] = append(stages[stage], d)
		slowest[stage] = max(slowest[stage], d)
	}
	add("commit", pub.IssuedAt, pub.CommittedAt)
	add("publish", pub.CommittedAt, pub.AckedAt)
	for _, r := range s.byGen[gen] {
		t := r.timing
		add("deliver", pub.SignedAt, t.GetDeliveredAt().AsTime())
		add("verify", t.GetDeliveredAt().AsTime(), t.GetVerifiedAt().AsTime())
		add("apply", t.GetVerifiedAt().AsTime(), t.GetAppliedAt().AsTime())
		add("persist", t.GetAppliedAt().AsTime(), t.GetPersistedAt().AsTime())
		add("status", t.GetPersistedAt().AsTime(), r.sent)
		add("report", r.sent, r.received)
	}
	delete(s.byGen, gen)
	var line []string
	for _, st := range stageOrder {
		line = append(line, fmt.Sprintf("%s %.3f", st, ms(slowest[st])))
	}
	return strings.Join(line, ", ")
}

// stageFigures adds the median and p99 of every stage.
func stageFigures(fig figures, stages map[string][]time.Duration) {
	for _, st := range stageOrder {
		ds := stages[st]
		if len(ds) == 0 {
			continue
		}
		p50, p99, _ := quantiles(ds)
		fig["stage_"+st+"_p50_ms"] = ms(p50)
		fig["stage_"+st+"_p99_ms"] = ms(p99)
	}
}

// profileDirEnv names a directory the scale benchmark writes its CPU and
// heap profiles to (make bench sets it); unset, it writes none.
const profileDirEnv = "SWITCHYARD_BENCH_PROFILES"

// startProfile starts a CPU profile of the decisions into
// $SWITCHYARD_BENCH_PROFILES/<name>.cpu.pprof (name: the benchmark's, e.g.
// BenchmarkScale_DecisionToApplied_agents-10000_keyring-own); the returned
// function stops it and writes the heap profile <name>.heap.pprof beside
// it.
func startProfile(b testing.TB, name string) (stop func()) {
	dir := os.Getenv(profileDirEnv)
	if dir == "" {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatalf("%s: %v", profileDirEnv, err)
	}
	cpu, err := os.Create(filepath.Join(dir, name+".cpu.pprof"))
	if err != nil {
		b.Fatalf("%s: %v", profileDirEnv, err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		// Another profile runs (go test -cpuprofile): keep that one.
		b.Logf("no CPU profile of %s: %v", name, err)
		_ = cpu.Close()
		_ = os.Remove(cpu.Name())
		cpu = nil
	}
	var once sync.Once
	return func() { once.Do(func() { stopProfiles(b, dir, name, cpu) }) }
}

// stopProfiles ends the CPU profile, if one runs, and writes the heap
// profile.
func stopProfiles(b testing.TB, dir, name string, cpu *os.File) {
	if cpu != nil {
		pprof.StopCPUProfile()
		if err := cpu.Close(); err != nil {
			b.Errorf("write CPU profile: %v", err)
		}
	}
	runtime.GC()
	heap, err := os.Create(filepath.Join(dir, name+".heap.pprof"))
	if err != nil {
		b.Errorf("heap profile: %v", err)
		return
	}
	defer heap.Close()
	if err := pprof.Lookup("heap").WriteTo(heap, 0); err != nil {
		b.Errorf("write heap profile: %v", err)
	}
}
