package sketch

import (
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// throughWire marshals p and decodes it as a coordinator does.
func throughWire(t *testing.T, p *sv1.LatencySketch) (*Sketch, int) {
	t.Helper()
	wire, err := proto.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back sv1.LatencySketch
	if err := proto.Unmarshal(wire, &back); err != nil {
		t.Fatal(err)
	}
	s, err := FromProto(&back)
	if err != nil {
		t.Fatalf("FromProto: %v", err)
	}
	return s, len(wire)
}

func sameSketch(t *testing.T, what string, got, want *Sketch) {
	t.Helper()
	if !reflect.DeepEqual(got.Bins(), want.Bins()) || got.Count() != want.Count() {
		t.Fatalf("%s: bins %v count %v, want %v count %v", what, got.Bins(), got.Count(), want.Bins(), want.Count())
	}
	for _, q := range []float64{0, 0.5, 0.9, 0.99, 1} {
		if got.Quantile(q) != want.Quantile(q) {
			t.Fatalf("%s: q%v = %v, want %v", what, q, got.Quantile(q), want.Quantile(q))
		}
	}
}

// A sketch of requests has whole counts: it goes out as whole_counts, and
// reads back bin for bin. So does the same sketch in the double form older
// agents send.
func TestSketch_WholeCountsRoundTripAndReadLikeTheDoubleForm(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for round := range 50 {
		s := New()
		for range 1 + r.IntN(500) {
			v := 0.015 + r.ExpFloat64()*[]float64{0.004, 0.05, 1}[round%3]
			if r.IntN(40) == 0 {
				v = 0
			}
			s.Add(v)
		}
		s.AddWithCount(0.2, 300) // a count that takes two bytes
		p := s.ToProto()
		if len(p.GetWholeCounts()) == 0 || len(p.GetCounts()) != 0 {
			t.Fatalf("round %d: %d whole counts, %d double counts; want the whole form only", round, len(p.GetWholeCounts()), len(p.GetCounts()))
		}
		compact, compactBytes := throughWire(t, p)
		sameSketch(t, "whole form", compact, s)

		old := &sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, ZeroCount: p.GetZeroCount(), IndexOffset: p.GetIndexOffset()}
		for _, c := range p.GetWholeCounts() {
			old.Counts = append(old.Counts, float64(c))
		}
		doubles, doubleBytes := throughWire(t, old)
		sameSketch(t, "double form", doubles, s)
		if compactBytes >= doubleBytes {
			t.Fatalf("round %d: whole form %d bytes, double form %d", round, compactBytes, doubleBytes)
		}
	}
}

// Counts that are not whole, or too big for a double to hold every whole
// number up to them, go out in the double form, unchanged.
func TestSketch_CountsNotWholeOrHugeKeepTheDoubleForm(t *testing.T) {
	for name, c := range map[string]struct {
		count float64
		whole bool
	}{
		"fraction":          {1.5, false},
		"2^53":              {1 << 53, false},
		"2^53-1":            {MaxWholeCount, true},
		"one whole":         {1, true},
		"fraction above 1k": {1000.25, false},
	} {
		s := New()
		s.Add(0.01)
		s.AddWithCount(0.5, c.count)
		p := s.ToProto()
		if got := len(p.GetWholeCounts()) > 0; got != c.whole || (len(p.GetCounts()) > 0) == c.whole {
			t.Errorf("%s: %d whole counts, %d double counts; want whole form %v", name, len(p.GetWholeCounts()), len(p.GetCounts()), c.whole)
			continue
		}
		back, _ := throughWire(t, p)
		sameSketch(t, name, back, s)
	}
	if p := New().ToProto(); len(p.GetCounts())+len(p.GetWholeCounts()) != 0 {
		t.Fatalf("empty sketch carries bins: %v", p)
	}
}

// A sketch with bins in both forms, or a whole count no double holds, is
// refused naming the fields; so is the whole form with too many bins or
// the wrong accuracy, as the double form is.
func TestSketch_FromProtoRefusesBothFormsAndHugeWholeCounts(t *testing.T) {
	for name, c := range map[string]struct {
		p    *sv1.LatencySketch
		want string
	}{
		"both forms":      {&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, Counts: []float64{1}, WholeCounts: []uint64{1}}, "both counts (1 bins) and whole_counts (1 bins)"},
		"2^53":            {&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, WholeCounts: []uint64{1, 1 << 53}}, "whole_counts holds 9007199254740992"},
		"max uint64":      {&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, WholeCounts: []uint64{math.MaxUint64}}, "whole_counts holds 18446744073709551615"},
		"too many bins":   {&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, WholeCounts: make([]uint64, MaxBins+1)}, "4097 bins, at most 4096"},
		"other accuracy":  {&sv1.LatencySketch{RelativeAccuracy: 0.05, WholeCounts: []uint64{1}}, "relative accuracy 0.05"},
		"offset too high": {&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, IndexOffset: math.MaxInt32, WholeCounts: []uint64{1}}, "outside the mapping"},
		"negative zero":   {&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, ZeroCount: -1, WholeCounts: []uint64{1}}, "zero count -1"},
	} {
		_, err := FromProto(c.p)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want ErrInvalid saying %q", name, err, c.want)
		}
	}
	// The largest whole count a double holds is read exactly.
	s, err := FromProto(&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, WholeCounts: []uint64{MaxWholeCount}})
	if err != nil || s.Count() != MaxWholeCount {
		t.Fatalf("2^53-1: %v, count %v", err, s)
	}
}

// MaxBins bins are accepted in either form.
func TestSketch_MaxBinsInEitherForm(t *testing.T) {
	whole := make([]uint64, MaxBins)
	doubles := make([]float64, MaxBins)
	whole[0], whole[MaxBins-1], doubles[0], doubles[MaxBins-1] = 1, 2, 1, 2
	a, err := FromProto(&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, IndexOffset: -2000, WholeCounts: whole})
	if err != nil {
		t.Fatal(err)
	}
	b, err := FromProto(&sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, IndexOffset: -2000, Counts: doubles})
	if err != nil {
		t.Fatal(err)
	}
	sameSketch(t, "MaxBins", a, b)
}

// The whole form leaves the accuracy out. A reader from before
// whole_counts skips them as an unknown field: what it then holds has no
// accuracy, and it refuses the sketch (its report counted as malformed)
// instead of reading a sketch of no samples and judging latency blind.
func TestSketch_WholeFormLeavesTheAccuracyOutSoOlderReadersRefuseIt(t *testing.T) {
	s := New()
	for i := range 50 {
		s.Add(0.02 + 0.001*float64(i))
	}
	p := s.ToProto()
	if len(p.GetWholeCounts()) == 0 || p.GetRelativeAccuracy() != 0 {
		t.Fatalf("whole form: %d whole counts, accuracy %v; want whole counts and no accuracy", len(p.GetWholeCounts()), p.GetRelativeAccuracy())
	}
	got, err := FromProto(p)
	if err != nil {
		t.Fatal(err)
	}
	sameSketch(t, "whole form without accuracy", got, s)

	// What a reader from before whole_counts keeps of it.
	older := &sv1.LatencySketch{RelativeAccuracy: p.GetRelativeAccuracy(), ZeroCount: p.GetZeroCount(), IndexOffset: p.GetIndexOffset()}
	if _, err := FromProto(older); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "relative accuracy 0") {
		t.Fatalf("an older reader's view of the whole form: %v; want refused for its accuracy", err)
	}

	// The accuracy may still be given in the whole form, but only the one.
	given := &sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, IndexOffset: p.GetIndexOffset(), WholeCounts: p.GetWholeCounts()}
	if got, err := FromProto(given); err != nil {
		t.Fatalf("whole form with its accuracy: %v", err)
	} else {
		sameSketch(t, "whole form with accuracy", got, s)
	}
	other := &sv1.LatencySketch{RelativeAccuracy: 0.05, WholeCounts: []uint64{1}}
	if _, err := FromProto(other); err == nil {
		t.Fatal("whole form of another accuracy was read")
	}
	// The double form and an empty sketch still need it.
	for name, q := range map[string]*sv1.LatencySketch{
		"double form": {IndexOffset: p.GetIndexOffset(), Counts: []float64{1, 2}},
		"empty":       {ZeroCount: 3},
	} {
		if _, err := FromProto(q); err == nil {
			t.Errorf("%s without an accuracy was read", name)
		}
	}
	if e := New().ToProto(); e.GetRelativeAccuracy() != RelativeAccuracy {
		t.Errorf("an empty sketch went out with accuracy %v", e.GetRelativeAccuracy())
	}
}

// LoadWhole, given the sum its reader added up, loads what Load loads:
// the same bins and count, for small counts, for counts near
// MaxWholeCount whose sum passes it (then added as Load adds them), and
// with empty bins at either end.
func TestSketch_LoadWholeLoadsWhatLoadLoads(t *testing.T) {
	r := rand.New(rand.NewPCG(51, 52))
	cases := [][]uint64{{0, 3, 0, 1, 0}, {MaxWholeCount, MaxWholeCount, 7}, {1 << 52, 1 << 52, 1}, {MaxWholeCount, 1, 1, 1}, {}, {0, 0}}
	for range 200 {
		c := make([]uint64, 1+r.IntN(60))
		for i := range c {
			c[i] = uint64(r.IntN(300))
		}
		cases = append(cases, c)
	}
	for _, whole := range cases {
		counts := make([]float64, len(whole))
		var sum uint64
		for i, c := range whole {
			counts[i] = float64(c)
			if sum+c < sum {
				sum = math.MaxUint64
			} else {
				sum += c
			}
		}
		var want, got Sketch
		if err := want.Load(RelativeAccuracy, 2, -3, slices.Clone(counts)); err != nil {
			t.Fatal(err)
		}
		if err := got.LoadWhole(RelativeAccuracy, 2, -3, slices.Clone(counts), sum); err != nil {
			t.Fatal(err)
		}
		if got.Count() != want.Count() || !reflect.DeepEqual(got.Bins(), want.Bins()) {
			t.Fatalf("%v: LoadWhole count %v bins %v, Load count %v bins %v", whole, got.Count(), got.Bins(), want.Count(), want.Bins())
		}
	}
}
