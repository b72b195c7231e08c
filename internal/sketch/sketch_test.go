package sketch

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"

	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestSketch_QuantilesWithinAccuracy(t *testing.T) {
	s := New()
	for i := 1; i <= 1000; i++ {
		s.Add(float64(i) / 1000) // 1 ms .. 1 s
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := q
		got := s.Quantile(q)
		if math.Abs(got-want)/want > 0.02 {
			t.Errorf("p%v = %v, want %v within 2%%", q*100, got, want)
		}
	}
	if s.Count() != 1000 {
		t.Errorf("count %v", s.Count())
	}
}

func TestSketch_RoundTripAndMerge(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	a, b := New(), New()
	for range 5000 {
		a.Add(0.010 + r.ExpFloat64()*0.005)
		b.Add(0.060 + r.ExpFloat64()*0.005)
	}
	a.Add(0)
	wire, err := proto.Marshal(a.ToProto())
	if err != nil {
		t.Fatal(err)
	}
	var p sv1.LatencySketch
	if err := proto.Unmarshal(wire, &p); err != nil {
		t.Fatal(err)
	}
	back, err := FromProto(&p)
	if err != nil {
		t.Fatal(err)
	}
	if back.Count() != a.Count() || back.Quantile(0.99) != a.Quantile(0.99) {
		t.Fatalf("round trip: count %v p99 %v, want %v %v", back.Count(), back.Quantile(0.99), a.Count(), a.Quantile(0.99))
	}
	back.Merge(b)
	if back.Count() != 10001 {
		t.Fatalf("merged count %v", back.Count())
	}
	if p50 := back.Quantile(0.5); p50 < 0.010 || p50 > 0.070 {
		t.Fatalf("merged p50 %v", p50)
	}
	bins := back.Bins()
	if bins[0].Index != ZeroIndex || bins[0].Count != 1 {
		t.Fatalf("first bin %v, want the zero bucket", bins[0])
	}
	for i := 1; i < len(bins); i++ {
		if bins[i].Index <= bins[i-1].Index {
			t.Fatal("bins out of order")
		}
	}
}

func TestSketch_BadValuesCountAsZero(t *testing.T) {
	s := New()
	s.Add(-1)
	s.Add(math.NaN())
	s.Add(math.Inf(1))
	if s.Count() != 3 {
		t.Fatalf("count %v", s.Count())
	}
}

func TestSketch_FromProtoRefuses(t *testing.T) {
	for name, p := range map[string]*sv1.LatencySketch{
		"other accuracy":  {RelativeAccuracy: 0.05},
		"negative count":  {RelativeAccuracy: RelativeAccuracy, Counts: []float64{1, -1}},
		"nan count":       {RelativeAccuracy: RelativeAccuracy, Counts: []float64{math.NaN()}},
		"negative zero":   {RelativeAccuracy: RelativeAccuracy, ZeroCount: -3},
		"too many bins":   {RelativeAccuracy: RelativeAccuracy, Counts: make([]float64, MaxBins+1)},
		"offset too high": {RelativeAccuracy: RelativeAccuracy, IndexOffset: math.MaxInt32, Counts: []float64{1}},
		"offset too low":  {RelativeAccuracy: RelativeAccuracy, IndexOffset: math.MinInt32, Counts: []float64{1}},
	} {
		if _, err := FromProto(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzSketch_FromProto(f *testing.F) {
	s := New()
	s.Add(0.01)
	s.Add(0.2)
	b, _ := proto.Marshal(s.ToProto())
	f.Add(b)
	for _, p := range []*sv1.LatencySketch{
		{RelativeAccuracy: RelativeAccuracy, IndexOffset: -3, Counts: []float64{1, 0.5, 2}},
		{RelativeAccuracy: RelativeAccuracy, Counts: []float64{1}, WholeCounts: []uint64{1}},
		{RelativeAccuracy: RelativeAccuracy, WholeCounts: []uint64{1 << 53, 300, 0, 1}},
	} {
		b, _ := proto.Marshal(p)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var p sv1.LatencySketch
		if proto.Unmarshal(data, &p) != nil {
			return
		}
		got, err := FromProto(&p)
		if err != nil {
			return
		}
		// What was accepted goes out again in the form ToProto picks
		// and reads back the same.
		again, err := FromProto(got.ToProto())
		if err != nil {
			t.Fatalf("re-encoded sketch refused: %v", err)
		}
		if !reflect.DeepEqual(again.Bins(), got.Bins()) || again.Count() != got.Count() {
			t.Fatalf("re-encoded sketch differs: %v vs %v", again.Bins(), got.Bins())
		}
		got.Quantile(0.99)
		got.Bins()
		got.Merge(s)
	})
}

// CountAbove is what summing Bins() gives, to the last bit: the sequential
// judge reads sketches through it.
func TestSketch_CountAboveIsTheSumOfBins(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var empty *Sketch
	if n, a := empty.CountAbove(0); n != 0 || a != 0 {
		t.Fatalf("nil sketch: %v %v", n, a)
	}
	for range 50 {
		s := New()
		for range r.IntN(200) {
			v := 0.01 + r.ExpFloat64()*0.01
			if r.IntN(20) == 0 {
				v = 0
			}
			c := float64(1 + r.IntN(3))
			if r.IntN(2) == 0 {
				c = 0.1 + r.Float64() // counts a sum in another order would round differently
			}
			s.AddWithCount(v, c)
		}
		bins := s.Bins()
		idx := []int{ZeroIndex - 1, ZeroIndex, 0, IndexOf(0.015), IndexOf(0.02), IndexOf(0.5)}
		for _, b := range bins {
			idx = append(idx, b.Index, b.Index-1)
		}
		for _, i := range idx {
			var total, above float64
			for _, b := range bins {
				total += b.Count
				if b.Index > i {
					above += b.Count
				}
			}
			if n, a := s.CountAbove(i); n != total || a != above {
				t.Fatalf("CountAbove(%d) = %v, %v; Bins say %v, %v", i, n, a, total, above)
			}
		}
	}
}

func TestSketch_CopyToSharesNothing(t *testing.T) {
	a, b := New(), New()
	for i := range 50 {
		a.Add(0.001 * float64(i+1))
		b.Add(0.1 * float64(i+1))
	}
	buf := make([]float64, 0, a.NumBins()+b.NumBins())
	ca, buf := a.CopyTo(buf)
	cb, buf := b.CopyTo(buf)
	if len(buf) != a.NumBins()+b.NumBins() {
		t.Fatalf("buffer holds %d bins, want %d", len(buf), a.NumBins()+b.NumBins())
	}
	for _, c := range []struct {
		name      string
		orig, cpy *Sketch
	}{{"a", a, &ca}, {"b", b, &cb}} {
		if c.cpy.Count() != c.orig.Count() || c.cpy.Quantile(0.5) != c.orig.Quantile(0.5) || c.cpy.Quantile(0.99) != c.orig.Quantile(0.99) {
			t.Errorf("%s: copy count %v p50 %v p99 %v, original %v %v %v", c.name, c.cpy.Count(), c.cpy.Quantile(0.5), c.cpy.Quantile(0.99),
				c.orig.Count(), c.orig.Quantile(0.5), c.orig.Quantile(0.99))
		}
	}
	// Changing the original or merging into the first copy leaves the
	// others alone.
	before := cb.Count()
	a.Add(5)
	ca.Merge(b)
	if cb.Count() != before || a.Count() == ca.Count() {
		t.Errorf("copies not independent: b's copy %v (was %v), a %v, a's copy %v", cb.Count(), before, a.Count(), ca.Count())
	}
}
