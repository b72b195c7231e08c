// Package sketch is the mergeable latency distribution agents report and
// coordinators merge: a DDSketch with a fixed 1% relative accuracy, and its
// wire form.
package sketch

import (
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// RelativeAccuracy of every sketch: a quantile is within 1% of the true value.
// All parties use the same value so sketches merge bin for bin.
const RelativeAccuracy = 0.01

// MaxBins bounds a decoded sketch: 1% bins from 1 µs to an hour take about
// 1,100 bins, so more than this is not a latency sketch.
const MaxBins = 4096

// ErrInvalid is returned for a wire sketch that cannot be used.
var ErrInvalid = errors.New("invalid latency sketch")

// ZeroIndex is the index Bins gives the bucket of values too small to map.
const ZeroIndex = math.MinInt32

// Sketch is a latency distribution in seconds. The zero value is not usable;
// call New.
type Sketch struct {
	m *mapping.LogarithmicMapping
	s *ddsketch.DDSketch
}

var sharedMapping = func() *mapping.LogarithmicMapping {
	m, err := mapping.NewLogarithmicMapping(RelativeAccuracy)
	if err != nil {
		panic(err)
	}
	return m
}()

// New returns an empty sketch.
func New() *Sketch {
	return &Sketch{m: sharedMapping, s: ddsketch.NewDDSketch(sharedMapping, store.NewDenseStore(), store.NewDenseStore())}
}

// Add records one latency. Negative or non-finite values count as zero: a
// proxy's clock can go backwards, and a lost sample would bias the count.
func (s *Sketch) Add(seconds float64) { s.AddWithCount(seconds, 1) }

// AddWithCount records count latencies of the same value.
func (s *Sketch) AddWithCount(seconds, count float64) {
	if count <= 0 || math.IsNaN(count) || math.IsInf(count, 0) {
		return
	}
	if seconds < 0 || math.IsNaN(seconds) || math.IsInf(seconds, 0) {
		seconds = 0
	}
	if seconds > s.m.MaxIndexableValue() {
		seconds = s.m.MaxIndexableValue()
	}
	_ = s.s.AddWithCount(seconds, count) // cannot fail for a finite non-negative value
}

// Merge adds o's samples to s.
func (s *Sketch) Merge(o *Sketch) {
	if o == nil {
		return
	}
	_ = s.s.MergeWith(o.s) // same mapping by construction
}

// Count is the number of samples.
func (s *Sketch) Count() float64 { return s.s.GetCount() }

// Quantile returns the q-quantile in seconds, 0 for an empty sketch.
func (s *Sketch) Quantile(q float64) float64 {
	if s.s.IsEmpty() {
		return 0
	}
	v, err := s.s.GetValueAtQuantile(q)
	if err != nil {
		return 0
	}
	return v
}

// Bin is one bucket of the distribution.
type Bin struct {
	// Index orders bins by value; ZeroIndex is the bucket of zero latency.
	Index int
	Count float64
}

// Bins returns the non-empty bins in increasing order of value.
func (s *Sketch) Bins() []Bin {
	var out []Bin
	if z := s.s.GetZeroCount(); z > 0 {
		out = append(out, Bin{Index: ZeroIndex, Count: z})
	}
	s.s.GetPositiveValueStore().ForEach(func(i int, c float64) bool {
		if c > 0 {
			out = append(out, Bin{Index: i, Count: c})
		}
		return false
	})
	slices.SortFunc(out, func(a, b Bin) int { return a.Index - b.Index })
	return out
}

// Value is a representative latency of a bin, in seconds.
func Value(index int) float64 {
	if index == ZeroIndex {
		return 0
	}
	return sharedMapping.Value(index)
}

// ToProto encodes the sketch as contiguous counts from its lowest bin.
func (s *Sketch) ToProto() *sv1.LatencySketch {
	p := &sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, ZeroCount: s.s.GetZeroCount()}
	st := s.s.GetPositiveValueStore()
	if st.IsEmpty() {
		return p
	}
	lo, _ := st.MinIndex()
	hi, _ := st.MaxIndex()
	p.IndexOffset = int32(lo)
	p.Counts = make([]float64, hi-lo+1)
	st.ForEach(func(i int, c float64) bool {
		p.Counts[i-lo] += c
		return false
	})
	return p
}

// FromProto decodes a wire sketch. It refuses, with an error and never a
// panic, sketches of another accuracy, with too many bins, or with counts
// that are negative or not finite.
func FromProto(p *sv1.LatencySketch) (*Sketch, error) {
	s := New()
	if p == nil {
		return s, nil
	}
	if math.Abs(p.GetRelativeAccuracy()-RelativeAccuracy) > 1e-9 {
		return nil, fmt.Errorf("%w: relative accuracy %v, want %v", ErrInvalid, p.GetRelativeAccuracy(), RelativeAccuracy)
	}
	if len(p.GetCounts()) > MaxBins {
		return nil, fmt.Errorf("%w: %d bins, at most %d", ErrInvalid, len(p.GetCounts()), MaxBins)
	}
	off := int64(p.GetIndexOffset())
	if off+int64(len(p.GetCounts())) > int64(sharedMapping.Index(sharedMapping.MaxIndexableValue()))+1 || off < int64(sharedMapping.Index(sharedMapping.MinIndexableValue())) {
		return nil, fmt.Errorf("%w: bins %d..%d outside the mapping", ErrInvalid, off, off+int64(len(p.GetCounts())))
	}
	if !validCount(p.GetZeroCount()) {
		return nil, fmt.Errorf("%w: zero count %v", ErrInvalid, p.GetZeroCount())
	}
	st := s.s.GetPositiveValueStore()
	for i, c := range p.GetCounts() {
		if !validCount(c) {
			return nil, fmt.Errorf("%w: count %v in bin %d", ErrInvalid, c, i)
		}
		if c > 0 {
			st.AddWithCount(int(off)+i, c)
		}
	}
	if z := p.GetZeroCount(); z > 0 {
		_ = s.s.AddWithCount(0, z)
	}
	return s, nil
}

func validCount(c float64) bool { return c >= 0 && !math.IsNaN(c) && !math.IsInf(c, 0) }

// IndexOf is the index of the bin a latency falls in, in the order Bins
// uses.
func IndexOf(seconds float64) int {
	if seconds < sharedMapping.MinIndexableValue() {
		return ZeroIndex
	}
	return sharedMapping.Index(min(seconds, sharedMapping.MaxIndexableValue()))
}
