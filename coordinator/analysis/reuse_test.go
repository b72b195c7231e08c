package analysis

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The intake decodes each batch into the memory of the one before
// (Decoder.Reuse): the store's kept reports must be its own copies, equal
// to what the generic decoder reads, and once a read has named the
// rollout's two backends they hold only those.
func TestStore_KeptReportsOutliveTheDecodersReuse(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	base := int64(1_700_000_000)
	sp := &sv1.RolloutSpec{Name: "web-1", Service: "web", From: "b0", To: "b1"}
	spec.Default(sp)
	if spec.Method(sp.GetAnalysis()) != spec.MethodSequential {
		t.Fatalf("test needs the sequential method, spec has %s", spec.Method(sp.GetAnalysis()))
	}
	created := time.Unix(base-1, 0)
	rollout := &sv1.Rollout{Id: "web-1", Generation: 7, Spec: sp, CreatedAt: timestamppb.New(created), StepStartedAt: timestamppb.New(created)}

	s := NewStore()
	var d Decoder
	// want are the reports as proto.Unmarshal reads them, per second and
	// node.
	want := map[int64]map[string]*Report{}
	second := func(sec int64, nodes int) {
		want[sec] = map[string]*Report{}
		var batch []*Report
		for i := range nodes {
			wire, err := proto.Marshal(testReport(fmt.Sprintf("edge-%d", i), sec, 10, r))
			if err != nil {
				t.Fatal(err)
			}
			slow, fast, slowErr, fastErr := decodeBoth(&d, wire)
			if slowErr != nil || fastErr != nil {
				t.Fatal(slowErr, fastErr)
			}
			want[sec][slow.Node] = slow
			batch = append(batch, fast)
			if len(batch) == 7 {
				s.AddReports(batch)
				d.Reuse()
				batch = batch[:0]
			}
		}
		s.AddReports(batch)
		d.Reuse()
	}
	check := func(sec int64, only map[string]bool) {
		t.Helper()
		kept := s.reports["web-1"][sec]
		if len(kept) != len(want[sec]) {
			t.Fatalf("second %d: %d reports kept, want %d", sec, len(kept), len(want[sec]))
		}
		for _, nr := range kept {
			w := &Report{Node: nr.node}
			for _, b := range want[sec][nr.node].Backends {
				if only == nil || only[b.Backend] {
					w.Backends = append(w.Backends, b)
				}
			}
			if !sameReport(w, &Report{Node: nr.node, Backends: nr.backends}) {
				t.Fatalf("second %d, %s: kept %+v, want %+v", sec, nr.node, nr.backends, w.Backends)
			}
		}
	}

	// Before any read the store keeps every backend's part.
	second(base, 40)
	second(base+1, 40)
	// Decoding more into the reused memory leaves them alone.
	for range 100 {
		wire, _ := proto.Marshal(testReport("other", base+1, 10, r))
		if _, err := d.Decode(wire); err != nil {
			t.Fatal(err)
		}
	}
	check(base, nil)
	check(base+1, nil)

	// A read names b0 and b1 (and takes what it read out of the store);
	// later reports keep those two parts only.
	s.Assess(rollout, time.Unix(base+1, 0).Add(Grace))
	if n := len(s.reports["web-1"]); n != 0 {
		t.Fatalf("%d seconds of reports left after the read", n)
	}
	second(base+2, 40)
	d.Reuse()
	for range 100 {
		wire, _ := proto.Marshal(testReport("other", base+2, 10, r))
		if _, err := d.Decode(wire); err != nil {
			t.Fatal(err)
		}
	}
	check(base+2, map[string]bool{"b0": true, "b1": true})
}

// Nodes are numbered inside the store; windows still count distinct nodes
// over their seconds (a node reporting twice in a second or in every
// second counts once) and NodeHealth leaves the excluded nodes out by name.
func TestStore_WindowsAndNodeHealthCountDistinctNodes(t *testing.T) {
	s := NewStore()
	base := int64(1_700_000_000)
	rep := func(node string, sec int64, req uint64) *Report {
		return &Report{Node: node, Service: "web", Rollout: "r1", Generation: 2, End: sec,
			Backends: []BackendReport{{Backend: "green", Requests: req, Errors: 1}}}
	}
	for sec := base + 1; sec <= base+3; sec++ {
		s.AddReports([]*Report{rep("a", sec, 10), rep("b", sec, 20), rep("a", sec, 5)})
	}
	s.AddReports([]*Report{rep("c", base+3, 40)})
	w := s.Window("web", "r1", "green", AnyWave, time.Unix(base, 0), time.Unix(base+3, 0))
	if w.Nodes != 3 || w.Requests != 3*35+40 || w.Errors != 10 {
		t.Errorf("window: %d nodes, %d requests, %d errors; want 3, %d, 10", w.Nodes, w.Requests, w.Errors, 3*35+40)
	}
	if w := s.Window("web", "r1", "green", AnyWave, time.Unix(base, 0), time.Unix(base+2, 0)); w.Nodes != 2 {
		t.Errorf("first two seconds: %d nodes, want 2", w.Nodes)
	}
	req, errs, nodes := s.NodeHealth("web", map[string]bool{"b": true}, time.Unix(base, 0), time.Unix(base+3, 0))
	if nodes != 2 || req != 3*15+40 || errs != 7 {
		t.Errorf("health without b: %d nodes, %d requests, %d errors; want 2, %d, 7", nodes, req, errs, 3*15+40)
	}
}

// A run's per-node counts over more nodes than one chunk holds, through a
// restart: each node's counts are its strata's sums since the run began,
// and nodes only of an earlier run are not in it.
func TestSequential_CUSUMCountsManyNodesAcrossRestarts(t *testing.T) {
	const nodes = 2500
	c := NewCUSUM(4)
	bad := func(i int) Stratum {
		return Stratum{Node: fmt.Sprintf("n%04d", i), CandRequests: 10, CandEvents: 3, BaseRequests: 90, BaseEvents: uint64(i % 2)}
	}
	var strata []Stratum
	for i := range nodes {
		strata = append(strata, bad(i))
	}
	c.Update(1, strata)
	c.Update(2, strata)
	if n := len(c.RunNodes()); n != nodes {
		t.Fatalf("%d nodes in the run, want %d", n, nodes)
	}
	// Old-backend errors on a few nodes bring the statistic to zero; the
	// next run holds only the nodes that report after it.
	c.Update(3, []Stratum{{Node: "n0001", CandRequests: 10, BaseRequests: 90, BaseEvents: 1e6}})
	if c.Statistic != 0 {
		t.Fatalf("statistic %g, want 0", c.Statistic)
	}
	c.Update(4, strata[nodes-1500:])
	c.Update(5, strata[nodes-1500:])
	run := c.RunNodes()
	if len(run) != 1500 || run[0] != "n1000" || run[len(run)-1] != "n2499" {
		t.Fatalf("run after the restart: %d nodes %v..%v", len(run), run[0], run[len(run)-1])
	}
	if d := c.driverCounts(); len(d) != 1500 {
		t.Fatalf("%d drivers, want all 1500 nodes of the run", len(d))
	}
	for _, n := range c.driverCounts() {
		var i int
		fmt.Sscanf(n.node, "n%d", &i)
		s := bad(i)
		if n.CandRequests != 2*s.CandRequests || n.CandEvents != 2*s.CandEvents || n.BaseEvents != 2*s.BaseEvents {
			t.Fatalf("%s: %+v, want twice %+v", n.node, *n, s)
		}
	}
	if c.CandRequests != 2*1500*10 || c.Since != 4 {
		t.Errorf("run counts %d requests since %d, want %d since 4", c.CandRequests, c.Since, 2*1500*10)
	}
}

// The store finds a report's cells through a hint of the last
// service-seconds before its map: reports that interleave services,
// seconds, rollouts and waves, reorder and rename backends, and bring back
// a second the store already dropped must land in the cells the windows
// read, each counted once.
func TestStore_CellsFoundThroughTheHintAreTheWindowsCells(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	s := NewStore()
	base := int64(1_700_000_000)
	retention := int64(Retention / time.Second)
	type key struct {
		service, rollout, backend string
		wave                      int32
		sec                       int64
	}
	want := map[key]uint64{}
	newest := map[string]int64{}
	services := []string{"web", "api"}
	rollouts := []string{"r1", "r2"}
	backends := []string{"blue", "green", "grey", "b-3", "b-4"}
	put := func(rep *Report) {
		for _, b := range rep.Backends {
			want[key{rep.Service, rep.Rollout, b.Backend, rep.Wave, rep.End}] += b.Requests
		}
		s.AddReports([]*Report{rep})
		// The store drops a service's old seconds when a newer one comes.
		if sec := rep.End; sec > newest[rep.Service] {
			newest[rep.Service] = sec
			for k := range want {
				if k.service == rep.Service && k.sec < sec-retention {
					delete(want, k)
				}
			}
		}
	}
	add := func(svc string, sec int64) {
		rep := &Report{Node: fmt.Sprintf("n%d", r.IntN(50)), Service: svc, Rollout: rollouts[r.IntN(2)],
			Generation: 3, Wave: int32(r.IntN(2)), End: sec}
		for _, j := range r.Perm(len(backends))[:1+r.IntN(len(backends))] {
			rep.Backends = append(rep.Backends, BackendReport{Backend: backends[j], Requests: uint64(1 + r.IntN(100))})
		}
		put(rep)
	}
	for i := range 20_000 {
		sec := base + int64(i/500) + int64(r.IntN(3)) // seconds overlap
		if r.IntN(200) == 0 {
			sec -= retention + 5 // a second the store dropped, or will
		}
		add(services[r.IntN(len(services))], sec)
	}
	// A second too old to keep, taken, dropped when a newer one (of the
	// other hint) comes, and then taken again: only the last report's
	// traffic is in it.
	old := newest["web"] - retention - 10
	next := newest["web"] + 1
	if (next-old)%2 == 0 {
		next++
	}
	again := func(sec int64) *Report {
		return &Report{Node: "n1", Service: "web", Rollout: "r1", Generation: 3, End: sec,
			Backends: []BackendReport{{Backend: "blue", Requests: 7}, {Backend: "green", Requests: 11}}}
	}
	put(again(old))
	put(again(next))
	put(again(old))
	seen := 0
	for k, req := range want {
		w := s.Window(k.service, k.rollout, k.backend, k.wave, time.Unix(k.sec-1, 0), time.Unix(k.sec, 0))
		if w.Requests != req {
			t.Fatalf("%+v: window has %d requests, want %d", k, w.Requests, req)
		}
		seen++
	}
	// And nothing beyond: every cell's requests are wanted ones.
	var total, inCells uint64
	for _, req := range want {
		total += req
	}
	for _, series := range s.services {
		for _, cells := range series {
			for _, c := range cells {
				inCells += c.requests
			}
		}
	}
	if inCells != total || seen == 0 {
		t.Fatalf("cells hold %d requests, want %d over %d cells", inCells, total, seen)
	}
}

// Batches of about the same size, as an intake worker takes them, decode
// into the memory of the ones before: once the slabs have grown to a
// batch's size, a batch a little bigger or smaller allocates nothing but
// its reports' node names. The reports are big enough (40 backends) that
// a batch's bins take more than one slab.
func TestDecoder_ReusedAcrossBatchesOfVaryingSizeStopsAllocating(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	var wire [][]byte
	for i := range 300 {
		w, err := proto.Marshal(testReport(fmt.Sprintf("edge-%d", i), 1_700_000_000, 40, r))
		if err != nil {
			t.Fatal(err)
		}
		wire = append(wire, w)
	}
	var d Decoder
	batch := func(n int) {
		for _, w := range wire[:n] {
			if _, err := d.Decode(w); err != nil {
				t.Fatal(err)
			}
		}
		d.Reuse()
	}
	for _, n := range []int{256, 240, 256} {
		batch(n)
	}
	sizes := []int{250, 256, 231, 256, 244, 255, 256}
	reports := 0
	for _, n := range sizes {
		reports += n
	}
	i := 0
	allocs := testing.AllocsPerRun(len(sizes)*5, func() { batch(sizes[i%len(sizes)]); i++ })
	if names := float64(reports) / float64(len(sizes)); allocs > names {
		t.Errorf("a batch of 231 to 256 reports after batches of 256 allocated %.1f times, want %.1f (the node names)", allocs, names)
	}
}
