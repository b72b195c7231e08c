// Package sketch is the mergeable latency distribution agents report and
// coordinators merge: a DDSketch with a fixed 1% relative accuracy, and its
// wire form.
package sketch

import (
	"errors"
	"fmt"
	"math"

	"github.com/DataDog/sketches-go/ddsketch/mapping"

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

// Sketch is a latency distribution in seconds: DDSketch's logarithmic
// mapping with its bins held in one dense slice. Coordinators merge a
// million wire sketches a second, so decoding one is a copy of its counts
// and merging one is an addition over the overlapping bins; quantiles are
// computed exactly as DDSketch computes them. The zero value is not usable;
// call New.
type Sketch struct {
	// zero counts values too small to map (zero latency).
	zero float64
	// bins[i] counts values of index offset+i; positive is their sum.
	offset   int
	bins     []float64
	positive float64
}

var sharedMapping = func() *mapping.LogarithmicMapping {
	m, err := mapping.NewLogarithmicMapping(RelativeAccuracy)
	if err != nil {
		panic(err)
	}
	return m
}()

// New returns an empty sketch.
func New() *Sketch { return &Sketch{} }

// Add records one latency. Negative or non-finite values count as zero: a
// proxy's clock can go backwards, and a lost sample would bias the count.
func (s *Sketch) Add(seconds float64) { s.AddWithCount(seconds, 1) }

// Scale multiplies every count by f, 0 ≤ f ≤ 1: the same distribution of
// fewer samples. The counts are changed in place, also where s shares them
// (Load).
func (s *Sketch) Scale(f float64) {
	s.zero *= f
	for i := range s.bins {
		s.bins[i] *= f
	}
	s.positive *= f
}

// AddWithCount records count latencies of the same value.
func (s *Sketch) AddWithCount(seconds, count float64) {
	if count <= 0 || math.IsNaN(count) || math.IsInf(count, 0) {
		return
	}
	if seconds < 0 || math.IsNaN(seconds) || math.IsInf(seconds, 0) {
		seconds = 0
	}
	if seconds > sharedMapping.MaxIndexableValue() {
		seconds = sharedMapping.MaxIndexableValue()
	}
	if seconds <= sharedMapping.MinIndexableValue() {
		s.zero += count
		return
	}
	i := sharedMapping.Index(seconds)
	s.cover(i, i)
	s.bins[i-s.offset] += count
	s.positive += count
}

// cover grows the bins to hold indexes lo..hi.
func (s *Sketch) cover(lo, hi int) {
	if len(s.bins) == 0 {
		s.offset = lo
		s.bins = make([]float64, hi-lo+1)
		return
	}
	curHi := s.offset + len(s.bins) - 1
	if lo >= s.offset && hi <= curHi {
		return
	}
	nlo, nhi := min(lo, s.offset), max(hi, curHi)
	grown := make([]float64, nhi-nlo+1)
	copy(grown[s.offset-nlo:], s.bins)
	s.offset, s.bins = nlo, grown
}

// Merge adds o's samples to s.
func (s *Sketch) Merge(o *Sketch) {
	if o == nil {
		return
	}
	s.zero += o.zero
	if len(o.bins) == 0 {
		return
	}
	s.cover(o.offset, o.offset+len(o.bins)-1)
	dst := s.bins[o.offset-s.offset:]
	for i, c := range o.bins {
		dst[i] += c
	}
	s.positive += o.positive
}

// Count is the number of samples.
func (s *Sketch) Count() float64 { return s.zero + s.positive }

// Quantile returns the q-quantile in seconds, 0 for an empty sketch. It is
// DDSketch's GetValueAtQuantile: the value of the bin holding rank
// q×(count−1).
func (s *Sketch) Quantile(q float64) float64 {
	count := s.Count()
	if count == 0 || q < 0 || q > 1 {
		return 0
	}
	// An explicit conversion keeps the compiler from fusing the multiply
	// and the subtraction below, as DDSketch does.
	rank := float64(q * (count - 1))
	if rank < s.zero {
		return 0
	}
	rank -= s.zero
	var n float64
	for i, c := range s.bins {
		n += c
		if n > rank {
			return sharedMapping.Value(s.offset + i)
		}
	}
	return sharedMapping.Value(s.offset + len(s.bins) - 1)
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
	if s.zero > 0 {
		out = append(out, Bin{Index: ZeroIndex, Count: s.zero})
	}
	for i, c := range s.bins {
		if c > 0 {
			out = append(out, Bin{Index: s.offset + i, Count: c})
		}
	}
	return out
}

// CountAbove sums the sketch's counts, and those of bins whose index is
// above index: what summing Bins() gives, in the same order, without
// building them.
func (s *Sketch) CountAbove(index int) (total, above float64) {
	if s == nil {
		return 0, 0
	}
	if s.zero > 0 {
		total += s.zero
		if ZeroIndex > index {
			above += s.zero
		}
	}
	// The bins run up from s.offset: those above index are a tail, summed
	// without a test per bin (empty bins add nothing).
	from := min(max(index-s.offset+1, 0), len(s.bins))
	for _, c := range s.bins[:from] {
		total += c
	}
	for _, c := range s.bins[from:] {
		total += c
		above += c
	}
	return total, above
}

// Value is a representative latency of a bin, in seconds.
func Value(index int) float64 {
	if index == ZeroIndex {
		return 0
	}
	return sharedMapping.Value(index)
}

// NumBins is how many bins the sketch holds (CopyTo's share of a buffer).
func (s *Sketch) NumBins() int { return len(s.bins) }

// CopyTo returns a copy of s whose bins are appended to buf, and buf after
// them: one allocation can hold the bins of many copies. The copy shares
// nothing with s.
func (s *Sketch) CopyTo(buf []float64) (Sketch, []float64) {
	at := len(buf)
	buf = append(buf, s.bins...)
	c := *s
	c.bins = buf[at:len(buf):len(buf)]
	return c, buf
}

// SizeBytes estimates the memory the sketch holds.
func (s *Sketch) SizeBytes() int { return 48 + 8*cap(s.bins) }

// MaxWholeCount is the largest count whole_counts may carry: a float64
// holds every whole number up to it exactly (2^53 − 1).
const MaxWholeCount = 1<<53 - 1

// ToProto encodes the sketch as contiguous counts from its lowest non-empty
// bin: as whole_counts (a varint a bin, one byte for a count below 128)
// when every count is a whole number up to MaxWholeCount, as a sketch of
// requests always is, else as counts (8 bytes a bin).
func (s *Sketch) ToProto() *sv1.LatencySketch {
	p := &sv1.LatencySketch{RelativeAccuracy: RelativeAccuracy, ZeroCount: s.zero}
	lo, hi := 0, len(s.bins)-1
	for lo <= hi && s.bins[lo] == 0 {
		lo++
	}
	for hi >= lo && s.bins[hi] == 0 {
		hi--
	}
	if lo > hi {
		return p
	}
	p.IndexOffset = int32(s.offset + lo)
	bins := s.bins[lo : hi+1]
	for _, c := range bins {
		if !isWhole(c) {
			p.Counts = append([]float64(nil), bins...)
			return p
		}
	}
	p.WholeCounts = make([]uint64, len(bins))
	for i, c := range bins {
		p.WholeCounts[i] = uint64(c)
	}
	// The whole form leaves the accuracy out: it is implied. A reader from
	// before whole_counts skips them as an unknown field and would read
	// the sketch as holding no samples (its latency checks blind, without
	// a word); missing the accuracy, it refuses the sketch instead, and
	// the report with it, and counts the report as malformed.
	p.RelativeAccuracy = 0
	return p
}

// isWhole reports whether whole_counts can carry c exactly.
func isWhole(c float64) bool { return c >= 0 && c <= MaxWholeCount && c == math.Trunc(c) }

// FromProto decodes a wire sketch in either form. It refuses, with an error
// and never a panic, sketches of another accuracy, with too many bins, with
// counts that are negative or not finite, with whole counts above
// MaxWholeCount, or with bins in both forms.
func FromProto(p *sv1.LatencySketch) (*Sketch, error) {
	if p == nil {
		return New(), nil
	}
	whole := p.GetWholeCounts()
	if len(whole) == 0 {
		return FromCounts(p.GetRelativeAccuracy(), p.GetZeroCount(), p.GetIndexOffset(), p.GetCounts())
	}
	var most uint64
	for _, c := range whole {
		most = max(most, c)
	}
	accuracy, err := CheckForms(p.GetRelativeAccuracy(), len(p.GetCounts()), len(whole), most)
	if err != nil {
		return nil, err
	}
	if len(whole) > MaxBins {
		return nil, errTooManyBins(len(whole))
	}
	counts := make([]float64, len(whole))
	for i, c := range whole {
		counts[i] = float64(c)
	}
	s := New()
	if err := s.Load(accuracy, p.GetZeroCount(), p.GetIndexOffset(), counts); err != nil {
		return nil, err
	}
	return s, nil
}

// CheckForms refuses what the two forms of a wire sketch's bins cannot mean
// together: bins in both counts and whole_counts (doubles and wholes are
// how many each holds), or a whole count a float64 does not hold exactly
// (mostWhole is the largest). It returns the accuracy to Load the sketch
// with: a sketch in the whole form leaves it out (see ToProto), and one
// that gives it must give RelativeAccuracy, which Load checks. A reader of
// the wire that converts whole counts itself calls it before Load, as
// FromProto does.
func CheckForms(relativeAccuracy float64, doubles, wholes int, mostWhole uint64) (float64, error) {
	if doubles > 0 && wholes > 0 {
		return 0, fmt.Errorf("%w: both counts (%d bins) and whole_counts (%d bins) are set; a sketch carries its bins in one of them",
			ErrInvalid, doubles, wholes)
	}
	if mostWhole > MaxWholeCount {
		return 0, fmt.Errorf("%w: whole_counts holds %d, above %d (2^53 − 1)", ErrInvalid, mostWhole, uint64(MaxWholeCount))
	}
	if wholes > 0 && relativeAccuracy == 0 {
		return RelativeAccuracy, nil
	}
	return relativeAccuracy, nil
}

func errTooManyBins(n int) error {
	return fmt.Errorf("%w: %d bins, at most %d", ErrInvalid, n, MaxBins)
}

// FromCounts builds a sketch from the fields of a wire sketch, checked as
// FromProto checks them. The counts are copied.
func FromCounts(relativeAccuracy, zeroCount float64, indexOffset int32, counts []float64) (*Sketch, error) {
	s := New()
	if err := s.Load(relativeAccuracy, zeroCount, indexOffset, counts); err != nil {
		return nil, err
	}
	s.bins = append([]float64(nil), s.bins...)
	return s, nil
}

// Load sets s to the wire sketch's fields, checked as FromProto checks them;
// counts are the bins of either form, whole counts converted to float64
// after CheckForms. s keeps counts (without copying them): the caller must
// not change them afterwards. On error s is left empty.
func (s *Sketch) Load(relativeAccuracy, zeroCount float64, indexOffset int32, counts []float64) error {
	return s.load(relativeAccuracy, zeroCount, indexOffset, counts, 0, false)
}

// LoadWhole is Load for counts that came as whole numbers, CheckForms
// passed, and sum to sum (their reader added them as it converted them):
// Load would walk them again to check and add them, a chain of float
// additions per bin. A sum above MaxWholeCount is added as Load adds it.
func (s *Sketch) LoadWhole(relativeAccuracy, zeroCount float64, indexOffset int32, counts []float64, sum uint64) error {
	return s.load(relativeAccuracy, zeroCount, indexOffset, counts, float64(sum), sum <= MaxWholeCount)
}

// load is Load; with summed set, counts are whole and sum to positive (as
// float additions of whole numbers whose sum stays within MaxWholeCount
// do, exactly).
func (s *Sketch) load(relativeAccuracy, zeroCount float64, indexOffset int32, counts []float64, positive float64, summed bool) error {
	*s = Sketch{}
	if len(counts) > MaxBins {
		return errTooManyBins(len(counts))
	}
	if math.Abs(relativeAccuracy-RelativeAccuracy) > 1e-9 {
		return fmt.Errorf("%w: relative accuracy %v, want %v", ErrInvalid, relativeAccuracy, RelativeAccuracy)
	}
	off := int64(indexOffset)
	if off+int64(len(counts)) > maxMappedIndex+1 || off < minMappedIndex {
		return fmt.Errorf("%w: bins %d..%d outside the mapping", ErrInvalid, off, off+int64(len(counts)))
	}
	if !validCount(zeroCount) {
		return fmt.Errorf("%w: zero count %v", ErrInvalid, zeroCount)
	}
	if !summed {
		positive = 0
		for i, c := range counts {
			if !validCount(c) {
				return fmt.Errorf("%w: count %v in bin %d", ErrInvalid, c, i)
			}
			positive += c
		}
	}
	if !validCount(zeroCount + positive) {
		return fmt.Errorf("%w: counts sum to %v", ErrInvalid, zeroCount+positive)
	}
	lo, hi := 0, len(counts)-1
	for lo <= hi && counts[lo] == 0 {
		lo++
	}
	for hi >= lo && counts[hi] == 0 {
		hi--
	}
	s.zero, s.positive = zeroCount, positive
	if lo <= hi {
		// Capped, so growing s never writes past its own counts.
		s.offset, s.bins = int(off)+lo, counts[lo:hi+1:hi+1]
	}
	return nil
}

// minMappedIndex and maxMappedIndex bound the bins the mapping reaches;
// Load checks every decoded sketch against them.
var (
	minMappedIndex = int64(sharedMapping.Index(sharedMapping.MinIndexableValue()))
	maxMappedIndex = int64(sharedMapping.Index(sharedMapping.MaxIndexableValue()))
)

// validCount: NaN fails both comparisons, +Inf the second.
func validCount(c float64) bool { return c >= 0 && c <= math.MaxFloat64 }

// IndexOf is the index of the bin a latency falls in, in the order Bins
// uses.
func IndexOf(seconds float64) int {
	if seconds < sharedMapping.MinIndexableValue() {
		return ZeroIndex
	}
	return sharedMapping.Index(min(seconds, sharedMapping.MaxIndexableValue()))
}
