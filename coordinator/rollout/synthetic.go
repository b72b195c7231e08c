package rollout

import (
	"math"
	"math/rand/v2"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Behavior is how one backend answers at one moment.
type Behavior struct {
	// ErrorRate is the share of requests that fail.
	ErrorRate float64
	// Latency is the median latency; individual requests spread around it
	// log-normally.
	Latency time.Duration
	// Extra is added to every request (an injected delay).
	Extra time.Duration
}

// Synthetic is a telemetry source for a simulated fleet: each node serves
// Rate requests per second split by the weights it applied, and each
// backend behaves as Behave says at that moment. Swing, when set, scales
// the load and worsens both backends alike (a fleet-wide event the release
// is not to blame for).
type Synthetic struct {
	Service  string
	Fleet    []SimNode
	Rate     float64
	Interval time.Duration
	// Initial weights of a node that has applied nothing yet.
	Initial map[string]uint32
	Behave  func(backend string, t time.Time) Behavior
	Swing   func(t time.Time) (rate, errorRate float64, latency float64)
	End     time.Time
	Rand    *rand.Rand
}

var _ Source = (*Synthetic)(nil)

// Nodes returns the fleet.
func (s *Synthetic) Nodes() []SimNode { return s.Fleet }

// Done reports whether the source has run to its end.
func (s *Synthetic) Done(t time.Time) bool { return !t.Before(s.End) }

// Reports generates the reports of every interval ending in (from, to].
func (s *Synthetic) Reports(from, to time.Time, nodes []SimNode) []*sv1.HealthReport {
	iv := s.Interval
	if iv <= 0 {
		iv = time.Second
	}
	var out []*sv1.HealthReport
	for end := from.Truncate(iv).Add(iv); !end.After(to); end = end.Add(iv) {
		if !end.After(from) {
			continue
		}
		rateMul, errAdd, latMul := 1.0, 0.0, 1.0
		if s.Swing != nil {
			rateMul, errAdd, latMul = s.Swing(end.Add(-iv))
		}
		for _, n := range nodes {
			weights := n.Weights
			if len(weights) == 0 {
				weights = s.Initial
			}
			total := s.poisson(s.Rate * rateMul * iv.Seconds())
			rep := &sv1.HealthReport{Node: n.ID, Service: s.Service, WindowStart: timestamppb.New(end.Add(-iv)), WindowEnd: timestamppb.New(end)}
			remaining, weightLeft := total, uint32(0)
			for _, w := range weights {
				weightLeft += w
			}
			for _, b := range sortedBackends(weights) {
				w := weights[b]
				if weightLeft == 0 {
					break
				}
				n := s.binomial(remaining, float64(w)/float64(weightLeft))
				remaining -= n
				weightLeft -= w
				// A report covering (end-iv, end] shows what held from its start.
				beh := s.Behave(b, end.Add(-iv))
				errRate := math.Min(1, beh.ErrorRate+errAdd)
				errs := s.binomial(n, errRate)
				lat := sketch.New()
				for range n {
					v := beh.Latency.Seconds() * latMul * math.Exp(0.35*s.Rand.NormFloat64())
					lat.Add(v + beh.Extra.Seconds())
				}
				rep.Backends = append(rep.Backends, &sv1.BackendHealth{Backend: b, Requests: uint64(n), Errors: uint64(errs), Latency: lat.ToProto(), Weight: w})
			}
			out = append(out, rep)
		}
	}
	return out
}

func sortedBackends(w map[string]uint32) []string {
	out := make([]string, 0, len(w))
	for b := range w {
		out = append(out, b)
	}
	// Deterministic order keeps runs with the same seed identical.
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func (s *Synthetic) poisson(mean float64) int {
	if mean <= 0 {
		return 0
	}
	if mean > 50 {
		return max(0, int(math.Round(mean+math.Sqrt(mean)*s.Rand.NormFloat64())))
	}
	l, k, p := math.Exp(-mean), 0, 1.0
	for {
		p *= s.Rand.Float64()
		if p <= l {
			return k
		}
		k++
	}
}

func (s *Synthetic) binomial(n int, p float64) int {
	if n <= 0 || p <= 0 {
		return 0
	}
	if p >= 1 {
		return n
	}
	if n > 100 {
		mean := float64(n) * p
		v := max(0, int(math.Round(mean+math.Sqrt(mean*(1-p))*s.Rand.NormFloat64())))
		return min(n, v)
	}
	k := 0
	for range n {
		if s.Rand.Float64() < p {
			k++
		}
	}
	return k
}
