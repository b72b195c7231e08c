package analysis

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Nodes come and go under new names (autoscaled hosts, reinstalled ones):
// the store's memory is bounded by the nodes of the last 15 minutes, not
// by every name it has seen. Twenty nodes report at any time, renamed
// every 10 s: once the telemetry kept is full, the store stops growing.
func TestStore_SizeIsBoundedWithNodeChurn(t *testing.T) {
	const live = 20
	t0 := int64(1_700_000_000)
	retention := int64(Retention / time.Second)
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodSequential}}
	spec.Default(sp)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(time.Unix(t0, 0))}
	s := NewStore()
	sizes := map[int64]Size{}
	batch := make([]*Report, 0, live)
	for sec := t0 + 1; sec <= t0+2*retention+120; sec++ {
		batch = batch[:0]
		for n := range live {
			node := fmt.Sprintf("edge-%d-gen-%d", n, (sec-t0)/10)
			batch = append(batch, &Report{Node: node, Service: "web", Rollout: "r1", Generation: 5, End: sec,
				Backends: []BackendReport{{Backend: "blue", Requests: 40}, {Backend: "green", Requests: 40}}})
		}
		s.AddReports(batch)
		s.Assess(r, time.Unix(sec, 0))
		if sec == t0+retention+120 || sec == t0+2*retention+120 {
			sizes[sec] = s.Size()
			if got, want := s.size.bytes, recount(s); got != want {
				t.Errorf("second %d: the size counted as reports came and went is %d bytes, what the store holds %d", sec-t0, got, want)
			}
		}
	}
	// Not to the byte: whether a second's nodes are kept as a list of
	// their numbers or as a bitset depends on which numbers the new
	// names were given.
	a, b := sizes[t0+retention+120], sizes[t0+2*retention+120]
	if b.Bytes > a.Bytes+a.Bytes/100 {
		t.Errorf("size grew with node churn over another 15 minutes: %+v, then %+v", a, b)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// The nodes of the telemetry kept, and of the minute before it may be
	// let go: 2 new names a second.
	if most := 2 * int(retention+2*60+10); len(s.ids) > most {
		t.Errorf("%d node names kept, want at most %d", len(s.ids), most)
	}
}

// recount is the store's size estimate summed afresh from what it holds,
// which the count kept as reports come and go must equal.
func recount(s *Store) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for name := range s.ids {
		n += int64(len(name)) + nodeIDBytes
	}
	for _, series := range s.services {
		for _, cells := range series {
			for _, c := range cells {
				n += int64(cellBytes + c.latency.SizeBytes() + c.idBytes())
			}
		}
	}
	for _, series := range s.nodes {
		for _, h := range series {
			n += h.bytes()
		}
	}
	for _, bySec := range s.reports {
		for _, reps := range bySec {
			for _, r := range reps {
				n += r.sizeBytes()
			}
		}
	}
	return n
}
