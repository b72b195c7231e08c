package analysis

import (
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/switchyard/switchyard/internal/names"
	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var zCache sync.Map // confidence -> z

func zFor(confidence float64) float64 {
	if v, ok := zCache.Load(confidence); ok {
		return v.(float64)
	}
	z := normalQuantile(confidence)
	zCache.Store(confidence, z)
	return z
}

func backendWindow(name string, a *Aggregate, quantile float64) *sv1.BackendWindow {
	bw := &sv1.BackendWindow{Backend: name, Requests: a.Requests, Errors: a.Errors, MaxQueue: a.MaxQueue, Nodes: uint32(a.Nodes)}
	if a.Requests > 0 {
		bw.ErrorRate = float64(a.Errors) / float64(a.Requests)
	}
	bw.LatencySeconds = a.Latency.Quantile(quantile)
	return bw
}

// Judge decides one window: the candidate (new backend) against its
// guardrails, absolutely and relative to the baseline (old backend) in the
// same window. A relative failure needs statistical confidence that the
// candidate is worse by more than the allowed margin, so load that swings
// both backends alike fails nothing. An absolute failure needs the
// candidate's own numbers over the limit with confidence and, when there is
// a baseline, the candidate worse than it: a fleet-wide problem is not the
// release's fault and rolling back would not fix it.
//
// Before any of that, a candidate its proxies held out of rotation (failing
// their health checks) while it was weighted fails the window outright, on
// any node where the baseline was not down too (a sick host is not the
// release's fault): it answered none of its traffic there, so its counts
// alone would never fail it, and at 100% the proxy answers every request
// itself with no backend to charge.
func Judge(a *sv1.AnalysisSpec, candName, baseName string, cand, base *Aggregate) WindowResult {
	return JudgePaired(a, candName, baseName, cand, nil, base)
}

// JudgePaired is Judge with the candidate's traffic on the baseline's
// nodes (paired) given apart from all of it (cand): once a rollout is past
// its first wave, the old backend serves only the current wave's nodes,
// while the new one serves every wave it reached. Whether the candidate is
// worse than the baseline is then asked on the nodes where both serve, when
// the candidate served enough there, so that a problem of one region (an
// earlier wave's nodes failing on whatever backend they serve) is not
// charged to the release for lack of a baseline there. Its own limits
// (error rate, latency, queue) are checked on all of its traffic. A nil
// paired, or one with too little traffic, compares all of it.
func JudgePaired(a *sv1.AnalysisSpec, candName, baseName string, cand, paired, base *Aggregate) WindowResult {
	q := a.GetLatency().GetQuantile()
	res := WindowResult{
		Verdict:   Pass,
		Candidate: backendWindow(candName, cand, q),
		Baseline:  backendWindow(baseName, base, q),
		PValue:    1,
	}
	if down := without(cand.Down, base.OutOfRotation); len(down) > 0 {
		res.Verdict, res.Guardrail, res.PValue = Fail, "health_check", 0
		res.Reason = fmt.Sprintf("%s down (failing the proxy's health checks) while weighted on %s", candName, nodeList(down))
		return res
	}
	minReq := a.GetMinRequests()
	if cand.Requests < minReq || cand.Requests == 0 {
		res.Verdict = Inconclusive
		res.Reason = fmt.Sprintf("%s served %d requests, fewer than the %d needed", candName, cand.Requests, max(minReq, 1))
		return res
	}
	z := zFor(a.GetConfidence())
	alpha := 1 - a.GetConfidence()
	haveBase := base.Requests >= max(minReq, 1)
	// rel is the candidate's traffic the comparisons with the baseline
	// read.
	rel := cand
	if paired != nil && paired.Requests >= max(minReq, 1) {
		rel = paired
	}
	// The sequential judge makes the relative comparisons; windows then
	// carry only the absolute guardrails.
	relative := spec.Method(a) == spec.MethodWindows
	fail := func(guardrail, reason string, p float64) {
		if res.Verdict == Fail {
			return // the first failure explains the window
		}
		res.Verdict, res.Guardrail, res.Reason, res.PValue = Fail, guardrail, reason, p
	}

	// Error rate.
	if g := a.GetErrorRate(); g != nil {
		cRate := float64(cand.Errors) / float64(cand.Requests)
		if haveBase && relative {
			bRate := float64(base.Errors) / float64(base.Requests)
			rRate := float64(rel.Errors) / float64(rel.Requests)
			if _, p := excessTest(rel.Errors, rel.Requests, base.Errors, base.Requests, g.GetMaxIncrease()); p < alpha {
				fail("error_rate", fmt.Sprintf("%s error rate %.2f%% vs %s %.2f%%%s: more than %.2f points worse (p=%.2g)",
					candName, 100*rRate, baseName, 100*bRate, onBaseNodes(rel, cand), 100*g.GetMaxIncrease(), p), p)
			}
		}
		if g.GetMax() > 0 && wilsonLower(cand.Errors, cand.Requests, z) > g.GetMax() {
			worse := !haveBase
			p := 0.0
			if haveBase {
				_, p = excessTest(rel.Errors, rel.Requests, base.Errors, base.Requests, 0)
				worse = p < alpha
			}
			if worse {
				fail("error_rate", fmt.Sprintf("%s error rate %.2f%% is over the %.2f%% limit", candName, 100*cRate, 100*g.GetMax()), p)
			}
		}
	}

	// Latency.
	if l := a.GetLatency(); l != nil && cand.Latency.Count() >= float64(max(minReq, 1)) {
		cq := cand.Latency.Quantile(q)
		haveBaseLat := base.Latency.Count() >= float64(max(minReq, 1))
		relLat := rel.Latency
		if relLat.Count() < float64(max(minReq, 1)) {
			relLat = cand.Latency
		}
		if haveBaseLat && relative {
			bq, rq := base.Latency.Quantile(q), relLat.Quantile(q)
			if inc := l.GetMaxIncrease().AsDuration().Seconds(); l.GetMaxIncrease() != nil && rq-bq > inc {
				if p := mannWhitneyGreater(relLat, base.Latency); p < alpha {
					on := ""
					if relLat != cand.Latency {
						on = onBaseNodes(rel, cand)
					}
					fail("latency", fmt.Sprintf("%s p%s %s vs %s %s%s: more than %s slower (p=%.2g)",
						candName, pct(q), dur(rq), baseName, dur(bq), on, l.GetMaxIncrease().AsDuration(), p), p)
				}
			}
		}
		if lim := l.GetMax().AsDuration().Seconds(); l.GetMax() != nil && lim > 0 && cq > lim {
			// The quantile over the limit with confidence, and slower
			// than the baseline when there is one.
			p := overLimit(cand.Latency, lim, q)
			if haveBaseLat {
				p = max(p, mannWhitneyGreater(relLat, base.Latency))
			}
			if p < alpha {
				fail("latency", fmt.Sprintf("%s p%s %s is over the %s limit", candName, pct(q), dur(cq), l.GetMax().AsDuration()), p)
			}
		}
	}

	// Saturation.
	if s := a.GetSaturation(); s != nil && s.GetMaxQueue() > 0 && cand.MaxQueue > s.GetMaxQueue() &&
		(!haveBase || base.MaxQueue <= s.GetMaxQueue()) {
		fail("saturation", fmt.Sprintf("%s queued %d requests on a node, over the limit of %d", candName, cand.MaxQueue, s.GetMaxQueue()), 0)
	}
	if res.Verdict == Pass {
		res.Reason = fmt.Sprintf("%s %d requests, %.2f%% errors, p%s %s", candName, cand.Requests,
			100*float64(cand.Errors)/float64(cand.Requests), pct(q), dur(cand.Latency.Quantile(q)))
	}
	return res
}

// onBaseNodes says, in a comparison's reason, that the candidate's numbers
// are those of the baseline's nodes when they are not all of its traffic.
func onBaseNodes(rel, cand *Aggregate) string {
	if rel == cand {
		return ""
	}
	return " on the nodes both serve"
}

// without is the names of a not in b, which is sorted.
func without(a, b []string) []string {
	var out []string
	for _, n := range a {
		if _, found := slices.BinarySearch(b, n); !found {
			out = append(out, n)
		}
	}
	return out
}

// shownNodes is how many node names a reason lists.
const shownNodes = 5

// nodeList says how many nodes and names the first few: "3 nodes: n1, n2,
// n3", "12 nodes: n1, n2, n3, n4, n5 and 7 more".
func nodeList(list []string) string {
	word := "nodes"
	if len(list) == 1 {
		word = "node"
	}
	return fmt.Sprintf("%d %s: %s", len(list), word, names.Few(list, shownNodes))
}

func pct(q float64) string { return fmt.Sprintf("%g", math.Round(q*1000)/10) }

func dur(seconds float64) string {
	return fmt.Sprintf("%.0fms", seconds*1000)
}

// overLimit is the p-value of "the q-quantile of the latencies in s is
// over lim": the chance of as many samples over lim as s holds, or more,
// were exactly a share 1−q of requests over it. A window's p99 of a few
// dozen requests is its slowest one or two; over the limit, it is not yet
// proof that the quantile is, as a high error rate in few requests is not
// (wilsonLower).
func overLimit(s *sketch.Sketch, lim, q float64) float64 {
	total, above := s.CountAbove(sketch.IndexOf(lim))
	return BinomialUpperTail(uint64(above), uint64(total), 1-q)
}
