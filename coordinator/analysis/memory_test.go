package analysis

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// What a coordinator holds for a fleet in a canary once the telemetry it
// keeps is full: every node reporting 10 backends with sketches every
// second for Retention and two minutes more, the sequential judge reading
// each second as a leader's does.

// fillRetention feeds s nodes' reports for that long.
func fillRetention(tb testing.TB, s *Store, nodes int) {
	tb.Helper()
	base := int64(1_700_000_000)
	wire := benchWire(tb, nodes, base)
	rollout := benchCanary(base)
	var d Decoder
	batch := make([]*Report, 0, 256)
	last := base + int64((Retention+2*time.Minute)/time.Second)
	for sec := base; sec <= last; sec++ {
		for i, w := range wire {
			rep, err := d.Decode(w)
			if err != nil {
				tb.Fatal(err)
			}
			rep.End = sec
			batch = append(batch, rep)
			if len(batch) == cap(batch) || i == len(wire)-1 {
				s.AddReports(batch)
				d.Reuse()
				batch = batch[:0]
			}
		}
		s.Assess(rollout, time.Unix(sec, 0).Add(Grace))
	}
}

// TestStore_MemoryPerNodeOverRetentionIsSmall: what each node more costs
// once 15 minutes of telemetry are kept, by the store's own estimate (the
// size gauge): its numbers in the windows are a bit a cell once a cell
// holds many, its own traffic is kept for NodeDetail and only its having
// reported after that. It was 72 KB a node when every node's number and
// counts stayed in every second. BenchmarkStore_MemoryPerNode measures
// the heap at fleet sizes.
func TestStore_MemoryPerNodeOverRetentionIsSmall(t *testing.T) {
	const small, large = 40, 200
	bytes := map[int]int64{}
	for _, n := range []int{small, large} {
		s := NewStore()
		fillRetention(t, s, n)
		sz := s.Size()
		if sz.Nodes != n {
			t.Fatalf("%d nodes: the store counts %d in the newest second", n, sz.Nodes)
		}
		if got, want := s.size.bytes, recount(s); got != want {
			t.Errorf("%d nodes: the size counted as reports came and went is %d bytes, what the store holds %d", n, got, want)
		}
		bytes[n] = sz.Bytes
	}
	per := (bytes[large] - bytes[small]) / (large - small)
	t.Logf("store estimate: %d bytes at %d nodes, %d at %d: %d bytes a node more", bytes[small], small, bytes[large], large, per)
	if per > 8<<10 {
		t.Errorf("each node more costs %d bytes over 15 minutes, want under 8 KB", per)
	}
}

// TestStore_NodeHealthLeavesOutOnlyWhereItKnowsEachNode: over the last
// NodeDetail a drill's targets are left out of the fleet's traffic; a
// second older than that keeps the sums and who reported, not each node's
// counts, so a query leaving nodes out skips it and one leaving none out
// reads it whole.
func TestStore_NodeHealthLeavesOutOnlyWhereItKnowsEachNode(t *testing.T) {
	s := NewStore()
	base := int64(1_700_000_000)
	detail := int64(NodeDetail / time.Second)
	last := base + detail + 20
	for sec := base; sec <= last; sec++ {
		var batch []*Report
		for i, node := range []string{"edge-1", "edge-2", "target"} {
			batch = append(batch, &Report{Node: node, Service: "web", End: sec,
				Backends: []BackendReport{{Backend: "blue", Requests: uint64(10 * (i + 1)), Errors: uint64(i)}}})
		}
		s.AddReports(batch)
	}
	at := func(sec int64) time.Time { return time.Unix(sec, 0) }
	// The last 10 seconds, as the drill controller asks.
	req, errs, nodes := s.NodeHealth("web", map[string]bool{"target": true}, at(last-10), at(last))
	if req != 10*30 || errs != 10*1 || nodes != 2 {
		t.Errorf("last 10 s without the target: %d requests, %d errors on %d nodes; want 300, 10 on 2", req, errs, nodes)
	}
	// Everything kept, nobody left out: the sums of every second.
	req, errs, nodes = s.NodeHealth("web", nil, at(base-1), at(last))
	if n := uint64(last - base + 1); req != 60*n || errs != 3*n || nodes != 3 {
		t.Errorf("every second, every node: %d requests, %d errors on %d nodes; want %d, %d on 3", req, errs, nodes, 60*n, 3*n)
	}
	// Leaving the target out of seconds before the detail kept: those
	// seconds are skipped, not counted with the target in.
	req, _, _ = s.NodeHealth("web", map[string]bool{"target": true}, at(base-1), at(last))
	if kept := uint64(detail + 1); req > 30*kept {
		t.Errorf("without the target since the first second: %d requests, want at most the %d of the %d seconds still known node by node", req, 30*kept, kept)
	}
	// A name that never reported leaves nothing out.
	if req, _, nodes = s.NodeHealth("web", map[string]bool{"nowhere": true}, at(last-1), at(last)); req != 60 || nodes != 3 {
		t.Errorf("without a node that never reported: %d requests on %d nodes, want 60 on 3", req, nodes)
	}
}

// BenchmarkStore_MemoryPerNode fills a store as
// TestStore_MemoryPerNodeOverRetentionIsSmall does at 1,000 and 10,000
// nodes and reports the live heap each fleet size holds (after a garbage
// collection, less the empty store's) and the store's own estimate, per
// node and as the marginal cost of a node between the two sizes.
func BenchmarkStore_MemoryPerNode(b *testing.B) {
	sizes := []int{1_000, 10_000}
	heap := map[int]float64{}
	est := map[int]float64{}
	for range b.N {
		for _, n := range sizes {
			base := liveHeap()
			s := NewStore()
			fillRetention(b, s, n)
			heap[n] = float64(liveHeap() - base)
			est[n] = float64(s.Size().Bytes)
			runtime.KeepAlive(s)
		}
	}
	for _, n := range sizes {
		b.ReportMetric(heap[n]/float64(n), fmt.Sprintf("heap-bytes/node@%d", n))
		b.ReportMetric(est[n]/float64(n), fmt.Sprintf("estimate-bytes/node@%d", n))
	}
	d := float64(sizes[1] - sizes[0])
	b.ReportMetric((heap[sizes[1]]-heap[sizes[0]])/d, "marginal-heap-bytes/node")
	b.ReportMetric((est[sizes[1]]-est[sizes[0]])/d, "marginal-estimate-bytes/node")
}

// liveHeap is the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
