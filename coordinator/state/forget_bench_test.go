package state

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// BenchmarkState_RetentionMemory is what the retention saves: 20,000
// canaries of two waves, one every five minutes (about 69 days at 300 a
// day), each aborted and rolled back, held in the state with its audit
// records exported (as the leader exports them); then every one
// but the newest KeepFinishedPerService forgotten in entries of 500, as
// the leader does. Reported: the heap and the snapshot before and after,
// and the state machine's time per rollout forgotten.
func BenchmarkState_RetentionMemory(b *testing.B) {
	const rollouts = 20_000
	for range b.N {
		b.StopTimer()
		s := New()
		var index uint64
		at := t0
		for i := range rollouts {
			name := fmt.Sprintf("web-%05d", i)
			at = at.Add(5 * time.Minute)
			index++
			if a := s.ApplyIntent(index, applyEntry("apply-"+name, canarySpec(name), at)); !a.Result.GetAccepted() {
				b.Fatalf("apply %s: %v", name, a.Result)
			}
			index++
			s.ApplyIntent(index, abortEntry("abort-"+name, name, at))
			gen := index
			index++
			s.ApplyConverged(index, &sv1.RolloutConvergedEntry{Rollout: name, Generation: gen, Nodes: 3, StampedAt: timestamppb.New(at)})
		}
		// The leader exports the audit records as they come; the state
		// keeps the newest AuditKeep.
		s.ApplyAuditExported(&sv1.AuditExportedEntry{Through: s.AuditHead().GetSeq()})
		heldHeap := heapInUse()
		heldSnap := snapshotBytes(b, s)

		ids := s.ForgetCandidates(at, 0)
		b.StartTimer()
		for len(ids) > 0 {
			n := min(len(ids), 500)
			index++
			s.ApplyForget(index, &sv1.ForgetEntry{Rollouts: ids[:n], StampedAt: timestamppb.New(at), Reason: "bench"})
			ids = ids[n:]
		}
		b.StopTimer()
		s.ApplyAuditExported(&sv1.AuditExportedEntry{Through: s.AuditHead().GetSeq()})
		held, forgotten := s.RolloutCounts()
		if held != KeepFinishedPerService || forgotten != rollouts-KeepFinishedPerService {
			b.Fatalf("held %d, forgotten %d", held, forgotten)
		}
		b.ReportMetric(float64(heldHeap)/1e6, "heap_MB_all_held")
		b.ReportMetric(float64(heapInUse())/1e6, "heap_MB_after_forgetting")
		b.ReportMetric(float64(heldSnap)/1e6, "snapshot_MB_all_held")
		b.ReportMetric(float64(snapshotBytes(b, s))/1e6, "snapshot_MB_after_forgetting")
		runtime.KeepAlive(s)
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*(rollouts-KeepFinishedPerService)), "µs/forgotten")
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func snapshotBytes(b *testing.B, s *State) int {
	out, err := proto.Marshal(s.Snapshot())
	if err != nil {
		b.Fatal(err)
	}
	return len(out)
}
