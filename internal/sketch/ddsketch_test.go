package sketch

import (
	"math/rand/v2"
	"testing"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/store"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The dense sketch must answer exactly as DDSketch does with the same
// mapping: the judge's thresholds and tests read its quantiles and bins.
func TestSketch_QuantilesAndBinsAreDDSketchs(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for round := range 200 {
		ours := New()
		var parts []*Sketch
		ref := ddsketch.NewDDSketch(sharedMapping, store.NewDenseStore(), store.NewDenseStore())
		for p := range 1 + r.IntN(5) {
			part := New()
			for range r.IntN(300) {
				v := r.ExpFloat64() * []float64{0.001, 0.02, 0.5, 3}[(round+p)%4]
				if r.IntN(50) == 0 {
					v = 0
				}
				part.Add(v)
				if v <= sharedMapping.MinIndexableValue() {
					_ = ref.AddWithCount(0, 1)
				} else {
					_ = ref.Add(v)
				}
			}
			// Through the wire, as coordinators receive them.
			wire, err := proto.Marshal(part.ToProto())
			if err != nil {
				t.Fatal(err)
			}
			var back Sketch
			if err := back.unmarshal(wire); err != nil {
				t.Fatal(err)
			}
			parts = append(parts, &back)
		}
		for _, p := range parts {
			ours.Merge(p)
		}
		if ours.Count() != ref.GetCount() {
			t.Fatalf("round %d: count %v, DDSketch %v", round, ours.Count(), ref.GetCount())
		}
		for _, q := range []float64{0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1} {
			want := 0.0
			if !ref.IsEmpty() {
				want, _ = ref.GetValueAtQuantile(q)
			}
			if got := ours.Quantile(q); got != want {
				t.Fatalf("round %d: p%v = %v, DDSketch %v", round, q*100, got, want)
			}
		}
		var refBins []Bin
		if z := ref.GetZeroCount(); z > 0 {
			refBins = append(refBins, Bin{Index: ZeroIndex, Count: z})
		}
		ref.GetPositiveValueStore().ForEach(func(i int, c float64) bool {
			if c > 0 {
				refBins = append(refBins, Bin{Index: i, Count: c})
			}
			return false
		})
		got := ours.Bins()
		if len(got) != len(refBins) {
			t.Fatalf("round %d: %d bins, DDSketch %d", round, len(got), len(refBins))
		}
		byIndex := map[int]float64{}
		for _, b := range refBins {
			byIndex[b.Index] = b.Count
		}
		for i, b := range got {
			if byIndex[b.Index] != b.Count || (i > 0 && b.Index <= got[i-1].Index) {
				t.Fatalf("round %d: bin %d = %+v, DDSketch has %v there (bins in order: %v)", round, i, b, byIndex[b.Index], i == 0 || b.Index > got[i-1].Index)
			}
		}
	}
}

func (s *Sketch) unmarshal(wire []byte) error {
	var p sv1.LatencySketch
	if err := proto.Unmarshal(wire, &p); err != nil {
		return err
	}
	d, err := FromProto(&p)
	if err != nil {
		return err
	}
	*s = *d
	return nil
}
