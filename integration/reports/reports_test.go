package reports

import (
	"bytes"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The generator process and the in-process load publish the same bodies,
// decodable, with the from and to backends first and the sketches as
// agents send them (whole counts); a node field and a window make a whole
// report.
func TestReports_BodiesAreTheSameEveryCallAndWholeReports(t *testing.T) {
	a, err := Bodies("web", "blue", "green", "web-1", 7, 10, 8)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Bodies("web", "blue", "green", "web-1", 7, 10, 8)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 8 {
		t.Fatalf("%d bodies, want 8", len(a))
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("body %d differs between calls", i)
		}
		wire := AppendWindow(append(AppendNode(nil, "sim-000001"), a[i]...), 1_700_000_000)
		var rep sv1.HealthReport
		if err := proto.Unmarshal(wire, &rep); err != nil {
			t.Fatal(err)
		}
		if rep.GetNode() != "sim-000001" || rep.GetService() != "web" || rep.GetRolloutId() != "web-1" || rep.GetGeneration() != 7 ||
			rep.GetWindowStart().GetSeconds() != 1_699_999_999 || rep.GetWindowEnd().GetSeconds() != 1_700_000_000 || len(rep.GetBackends()) != 10 {
			t.Fatalf("report %d: %v", i, &rep)
		}
		if rep.GetBackends()[0].GetBackend() != "blue" || rep.GetBackends()[1].GetBackend() != "green" || rep.GetBackends()[2].GetBackend() != "pool-2" {
			t.Fatalf("report %d backends %v", i, rep.GetBackends())
		}
		for _, be := range rep.GetBackends() {
			l := be.GetLatency()
			if len(l.GetWholeCounts()) == 0 || len(l.GetCounts()) != 0 {
				t.Fatalf("report %d %s: %d whole and %d double bins, want whole counts", i, be.GetBackend(), len(l.GetWholeCounts()), len(l.GetCounts()))
			}
			sk, err := sketch.FromProto(l)
			if err != nil || sk.Count() != float64(be.GetRequests()) {
				t.Fatalf("report %d %s: sketch of %v samples (%v) for %d requests", i, be.GetBackend(), sk, err, be.GetRequests())
			}
		}
	}
}
