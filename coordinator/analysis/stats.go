package analysis

import (
	"math"

	"github.com/switchyard/switchyard/internal/sketch"
)

// normalCDF is P(Z <= z) for a standard normal Z.
func normalCDF(z float64) float64 { return 0.5 * math.Erfc(-z/math.Sqrt2) }

// normalQuantile is the z with normalCDF(z) = p, for 0 < p < 1, found by
// bisection (it runs once per confidence level).
func normalQuantile(p float64) float64 {
	lo, hi := -40.0, 40.0
	for range 200 {
		mid := (lo + hi) / 2
		if normalCDF(mid) < p {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// excessTest is a one-sided test that the candidate's error rate exceeds the
// baseline's by more than margin: it returns the z statistic and its p-value
// (small p: confident the excess is real). It uses the unpooled standard
// error, which stays right when the two rates differ.
func excessTest(errC, nC, errB, nB uint64, margin float64) (z, p float64) {
	pc := float64(errC) / float64(nC)
	pb := float64(errB) / float64(nB)
	se := math.Sqrt(pc*(1-pc)/float64(nC) + pb*(1-pb)/float64(nB))
	d := pc - pb - margin
	if se == 0 {
		// Both rates are 0 or 1: the difference is exact.
		switch {
		case d > 0:
			return math.Inf(1), 0
		default:
			return math.Inf(-1), 1
		}
	}
	z = d / se
	return z, 1 - normalCDF(z)
}

// wilsonLower is the lower bound of the Wilson score interval of a
// proportion at the given z: with few requests a high observed rate is not
// yet proof of a high true rate.
func wilsonLower(errs, n uint64, z float64) float64 {
	if n == 0 {
		return 0
	}
	nf := float64(n)
	p := float64(errs) / nf
	z2 := z * z
	centre := p + z2/(2*nf)
	spread := z * math.Sqrt(p*(1-p)/nf+z2/(4*nf*nf))
	return (centre - spread) / (1 + z2/nf)
}

// mannWhitneyGreater tests whether latencies in a tend to be larger than in
// b (one-sided), from their sketches: samples in the same bin count as ties.
// It returns the p-value, 1 when either side is empty.
func mannWhitneyGreater(a, b *sketch.Sketch) float64 {
	n1, n2 := a.Count(), b.Count()
	if n1 == 0 || n2 == 0 {
		return 1
	}
	ab, bb := a.Bins(), b.Bins()
	var (
		u, below, ties float64
		i, j           int
	)
	for i < len(ab) || j < len(bb) {
		var ca, cb float64
		switch {
		case j >= len(bb) || (i < len(ab) && ab[i].Index < bb[j].Index):
			ca = ab[i].Count
			i++
		case i >= len(ab) || bb[j].Index < ab[i].Index:
			cb = bb[j].Count
			j++
		default:
			ca, cb = ab[i].Count, bb[j].Count
			i++
			j++
		}
		u += ca * (below + cb/2)
		below += cb
		t := ca + cb
		ties += t*t*t - t
	}
	n := n1 + n2
	mean := n1 * n2 / 2
	variance := n1 * n2 / 12 * ((n + 1) - ties/(n*(n-1)))
	if variance <= 0 {
		return 1
	}
	z := (u - mean) / math.Sqrt(variance)
	return 1 - normalCDF(z)
}
