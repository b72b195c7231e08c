package analysis

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestStats_NormalQuantile(t *testing.T) {
	for p, want := range map[float64]float64{0.5: 0, 0.975: 1.959964, 0.99: 2.326348} {
		if got := normalQuantile(p); math.Abs(got-want) > 1e-4 {
			t.Errorf("normalQuantile(%v) = %v, want %v", p, got, want)
		}
	}
}

func TestStats_ExcessTest(t *testing.T) {
	cases := []struct {
		name               string
		errC, nC, errB, nB uint64
		margin             float64
		significantAt99    bool
	}{
		{"same rates", 50, 1000, 500, 10000, 0, false},
		{"5% vs 0.5%", 25, 500, 22, 4500, 0.01, true},
		{"small excess inside margin", 12, 1000, 10, 1000, 0.01, false},
		{"too few requests to tell", 2, 20, 1, 200, 0, false},
		{"both zero", 0, 1000, 0, 1000, 0, false},
		{"all fail vs none", 100, 100, 0, 100, 0.01, true},
	}
	for _, c := range cases {
		_, p := excessTest(c.errC, c.nC, c.errB, c.nB, c.margin)
		if (p < 0.01) != c.significantAt99 {
			t.Errorf("%s: p = %v, significant %v, want %v", c.name, p, p < 0.01, c.significantAt99)
		}
	}
}

func TestStats_WilsonLower(t *testing.T) {
	if lo := wilsonLower(10, 100, 2.326); lo >= 0.1 || lo < 0.04 {
		t.Errorf("wilson lower of 10/100 = %v", lo)
	}
	if lo := wilsonLower(0, 100, 2.326); lo > 1e-12 {
		t.Errorf("wilson lower of 0/100 = %v", lo)
	}
	// With few requests a 50% observed rate does not prove > 20%.
	if lo := wilsonLower(2, 4, 2.326); lo > 0.2 {
		t.Errorf("wilson lower of 2/4 = %v", lo)
	}
}

func latencies(r *rand.Rand, n int, base, extra time.Duration) *sketch.Sketch {
	s := sketch.New()
	for range n {
		s.Add(base.Seconds() + r.ExpFloat64()*0.005 + extra.Seconds())
	}
	return s
}

func TestStats_MannWhitney(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	same1, same2 := latencies(r, 2000, 20*time.Millisecond, 0), latencies(r, 2000, 20*time.Millisecond, 0)
	if p := mannWhitneyGreater(same1, same2); p < 0.01 {
		t.Errorf("same distribution: p = %v", p)
	}
	slow := latencies(r, 500, 20*time.Millisecond, 10*time.Millisecond)
	if p := mannWhitneyGreater(slow, same1); p > 1e-6 {
		t.Errorf("shifted by 10ms: p = %v", p)
	}
	if p := mannWhitneyGreater(same1, slow); p < 0.99 {
		t.Errorf("faster side: p = %v", p)
	}
	if p := mannWhitneyGreater(sketch.New(), same1); p != 1 {
		t.Errorf("empty side: p = %v", p)
	}
}

func aggregate(r *rand.Rand, requests, errors uint64, latency time.Duration, queue uint32) *Aggregate {
	return &Aggregate{Requests: requests, Errors: errors, Latency: latencies(r, int(requests), latency, 0), MaxQueue: queue, Nodes: 1}
}

// defaultAnalysis is the windows method's defaults: Judge's relative tests
// run only there.
func defaultAnalysis() *sv1.AnalysisSpec {
	s := &sv1.RolloutSpec{Analysis: &sv1.AnalysisSpec{Method: spec.MethodWindows}}
	spec.Default(s)
	s.Analysis.Latency.Max = durationpb.New(500 * time.Millisecond)
	s.Analysis.Saturation = &sv1.SaturationGuardrail{MaxQueue: 10}
	return s.Analysis
}

func TestJudge_Verdicts(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	cases := []struct {
		name      string
		cand      *Aggregate
		base      *Aggregate
		verdict   Verdict
		guardrail string
	}{
		{"healthy", aggregate(r, 500, 2, 20*time.Millisecond, 0), aggregate(r, 4500, 20, 20*time.Millisecond, 0), Pass, ""},
		{"too little traffic", aggregate(r, 20, 0, 20*time.Millisecond, 0), aggregate(r, 4500, 20, 20*time.Millisecond, 0), Inconclusive, ""},
		{"errors up", aggregate(r, 500, 25, 20*time.Millisecond, 0), aggregate(r, 4500, 22, 20*time.Millisecond, 0), Fail, "error_rate"},
		{"both bad alike", aggregate(r, 500, 40, 20*time.Millisecond, 0), aggregate(r, 4500, 360, 20*time.Millisecond, 0), Pass, ""},
		{"over absolute limit, no baseline", aggregate(r, 500, 50, 20*time.Millisecond, 0), aggregate(r, 0, 0, 0, 0), Fail, "error_rate"},
		{"slower by 100ms", aggregate(r, 500, 0, 120*time.Millisecond, 0), aggregate(r, 4500, 0, 20*time.Millisecond, 0), Fail, "latency"},
		{"slower within margin", aggregate(r, 500, 0, 40*time.Millisecond, 0), aggregate(r, 4500, 0, 20*time.Millisecond, 0), Pass, ""},
		{"both slow alike", aggregate(r, 500, 0, 700*time.Millisecond, 0), aggregate(r, 4500, 0, 700*time.Millisecond, 0), Pass, ""},
		{"slow with no baseline", aggregate(r, 500, 0, 700*time.Millisecond, 0), aggregate(r, 0, 0, 0, 0), Fail, "latency"},
		{"queueing", aggregate(r, 500, 0, 20*time.Millisecond, 30), aggregate(r, 4500, 0, 20*time.Millisecond, 2), Fail, "saturation"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := Judge(defaultAnalysis(), "green", "blue", c.cand, c.base)
			if res.Verdict != c.verdict || res.Guardrail != c.guardrail {
				t.Fatalf("verdict %v guardrail %q (%s), want %v %q", res.Verdict, res.Guardrail, res.Reason, c.verdict, c.guardrail)
			}
			if res.Reason == "" {
				t.Fatal("no reason given")
			}
		})
	}
}

func report(node string, end time.Time, wave int32, backends ...*sv1.BackendHealth) *sv1.HealthReport {
	return &sv1.HealthReport{Node: node, Service: "web", RolloutId: "r1", Generation: 5, Wave: wave,
		WindowStart: timestamppb.New(end.Add(-time.Second)), WindowEnd: timestamppb.New(end), Backends: backends}
}

func backend(name string, requests, errors uint64, latency time.Duration) *sv1.BackendHealth {
	s := sketch.New()
	s.AddWithCount(latency.Seconds(), float64(requests))
	return &sv1.BackendHealth{Backend: name, Requests: requests, Errors: errors, Latency: s.ToProto()}
}

func TestStore_AssessFindsBreachAfterConsecutiveWindows(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodWindows}}
	spec.Default(sp)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0)}
	s := NewStore()
	// 30 s of telemetry from 10 nodes; green goes bad at t0+15s.
	for sec := 1; sec <= 30; sec++ {
		end := t0.Add(time.Duration(sec) * time.Second)
		gErr := uint64(0)
		if sec > 15 {
			gErr = 5
		}
		for n := range 10 {
			node := string(rune('a' + n))
			if err := s.Add(report(node, end, 0, backend("green", 10, gErr, 20*time.Millisecond), backend("blue", 90, 0, 20*time.Millisecond))); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := s.Assess(r, t0.Add(30*time.Second+Grace))
	if len(a.Windows) != 6 {
		t.Fatalf("%d windows, want 6", len(a.Windows))
	}
	for i, w := range a.Windows {
		want := Pass
		if i >= 3 {
			want = Fail
		}
		if w.Verdict != want {
			t.Errorf("window %d: %v (%s), want %v", i, w.Verdict, w.Reason, want)
		}
	}
	if a.Breach == nil || a.Breach.GetGuardrail() != "error_rate" || len(a.Breach.GetWindows()) != 2 {
		t.Fatalf("breach %v", a.Breach)
	}
	if !strings.Contains(a.Breach.GetSummary(), "2 consecutive windows") {
		t.Errorf("summary %q", a.Breach.GetSummary())
	}
	if got := a.PassedSince(t0); got != 0 {
		t.Errorf("passed since start after failures: %d", got)
	}
	// Before the second failing window closes there is no breach yet.
	if early := s.Assess(r, t0.Add(20*time.Second+Grace)); early.Breach != nil {
		t.Fatal("breach after one failing window")
	}
}

func TestStore_AddRefusesBadReports(t *testing.T) {
	s := NewStore()
	now := time.Now()
	bad := []*sv1.HealthReport{
		{Service: "web", WindowEnd: timestamppb.New(now)},
		report("n", now, 0, &sv1.BackendHealth{Backend: "green", Requests: 1, Errors: 2}),
		report("n", now, 0, &sv1.BackendHealth{Backend: "green", Requests: 1, Latency: &sv1.LatencySketch{RelativeAccuracy: 0.5}}),
	}
	for i, r := range bad {
		if err := s.Add(r); err == nil {
			t.Errorf("report %d accepted", i)
		}
	}
}

// TestJudge_LatencyLimitNeedsConfidence: a window's p99 of a few dozen
// requests is its slowest one or two. A green whose true p99 is under
// latency.max (0.8% of requests over it) with no old backend to compare
// with (at 100%) must fail a window no more often than the guardrails'
// confidence allows, and a green whose tail is well over it still fails.
func TestJudge_LatencyLimitNeedsConfidence(t *testing.T) {
	a := &sv1.RolloutSpec{}
	spec.Default(a)
	a.Analysis.Latency.Max = durationpb.New(500 * time.Millisecond)
	rng := rand.New(rand.NewPCG(11, 12))
	window := func(n int, overShare float64) *Aggregate {
		s := sketch.New()
		for range n {
			v := 0.02 * math.Exp(0.35*rng.NormFloat64())
			if rng.Float64() < overShare {
				v = 0.6 + rng.ExpFloat64()
			}
			s.Add(v)
		}
		return &Aggregate{Requests: uint64(n), Latency: s, Nodes: 1}
	}
	none := &Aggregate{Latency: sketch.New()}
	const windows = 2000
	fails := 0
	for range windows {
		if Judge(a.Analysis, "green", "blue", window(60, 0.008), none).Verdict == Fail {
			fails++
		}
	}
	t.Logf("%d of %d windows failed", fails, windows)
	if rate := float64(fails) / windows; rate > 1-a.Analysis.GetConfidence() {
		t.Errorf("true p99 under the limit: %d of %d windows failed (%.1f%%), more than the %.0f%% the confidence allows",
			fails, windows, 100*rate, 100*(1-a.Analysis.GetConfidence()))
	}
	caught := 0
	for range 100 {
		if res := Judge(a.Analysis, "green", "blue", window(60, 0.15), none); res.Verdict == Fail && res.Guardrail == "latency" {
			caught++
		}
	}
	t.Logf("caught %d of 100", caught)
	if caught < 95 {
		t.Errorf("15%% of requests over the limit failed only %d of 100 windows", caught)
	}
}

// TestStore_GreenDownWhileWeightedFailsWindows: HAProxy's health checks
// took green out of rotation while the rollout weighted it, so green
// answered nothing and failed nothing: its windows would only ever be
// inconclusive, and a canary of timed pauses would walk it to 100%. Such
// windows fail with the default (sequential) method, naming the nodes,
// and breachWindows of them roll back. A node whose blue was down too (a
// sick host), at any weight, does not count against green, nor does blue
// down alone, nor green down at weight 0 (a node whose wave has not begun).
func TestStore_GreenDownWhileWeightedFailsWindows(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green"}
	spec.Default(sp)
	if spec.Method(sp.GetAnalysis()) != spec.MethodSequential {
		t.Fatalf("default method %q", spec.Method(sp.GetAnalysis()))
	}
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0)}
	// at reports a backend at a weight; down, also out of rotation.
	at := func(w uint32, b *sv1.BackendHealth) *sv1.BackendHealth { b.Weight = w; return b }
	down := func(b *sv1.BackendHealth) *sv1.BackendHealth {
		b.Down = true
		if b.Weight == 0 {
			b.Weight = 50
		}
		return b
	}

	// 15 s: n1..n3 have green down (blue serves all), n4 is a sick host
	// with both down, n5 is healthy and quiet on green, n6 is a sick host
	// at 100% (blue down at weight 0), n7 has green down at weight 0.
	s := NewStore()
	for sec := 1; sec <= 15; sec++ {
		end := t0.Add(time.Duration(sec) * time.Second)
		for _, n := range []string{"n1", "n2", "n3"} {
			if err := s.Add(report(n, end, 0, down(backend("green", 0, 0, 0)), backend("blue", 90, 0, 20*time.Millisecond))); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Add(report("n4", end, 0, down(backend("green", 0, 0, 0)), down(backend("blue", 0, 0, 0)))); err != nil {
			t.Fatal(err)
		}
		if err := s.Add(report("n5", end, 0, backend("green", 2, 0, 20*time.Millisecond), backend("blue", 90, 0, 20*time.Millisecond))); err != nil {
			t.Fatal(err)
		}
		r6 := report("n6", end, 0, down(at(100, backend("green", 0, 0, 0))), at(0, backend("blue", 0, 0, 0)))
		r6.GetBackends()[1].Down = true
		if err := s.Add(r6); err != nil {
			t.Fatal(err)
		}
		r7 := report("n7", end, 0, at(0, backend("green", 0, 0, 0)), at(100, backend("blue", 90, 0, 20*time.Millisecond)))
		r7.GetBackends()[0].Down = true
		if err := s.Add(r7); err != nil {
			t.Fatal(err)
		}
	}
	a := s.Assess(r, t0.Add(15*time.Second+Grace))
	if len(a.Windows) != 3 {
		t.Fatalf("%d windows, want 3", len(a.Windows))
	}
	const want = "green down (failing the proxy's health checks) while weighted on 3 nodes: n1, n2, n3"
	for i, w := range a.Windows {
		if w.Verdict != Fail || w.Guardrail != "health_check" || w.Reason != want {
			t.Errorf("window %d: %v %q: %s; want fail health_check: %s", i, w.Verdict, w.Guardrail, w.Reason, want)
		}
	}
	if a.Breach == nil || a.Breach.GetGuardrail() != "health_check" || len(a.Breach.GetWindows()) != 2 ||
		!strings.Contains(a.Breach.GetSummary(), "3 nodes: n1, n2, n3") {
		t.Fatalf("breach %v", a.Breach)
	}

	// Blue down on a node, green fine (or down there too): not green's
	// fault, and nothing fails.
	r2 := &sv1.Rollout{Id: "r2", Spec: sp, CreatedAt: timestamppb.New(t0)}
	s = NewStore()
	for sec := 1; sec <= 15; sec++ {
		end := t0.Add(time.Duration(sec) * time.Second)
		for _, rep := range []*sv1.HealthReport{
			report("n1", end, 0, backend("green", 60, 0, 20*time.Millisecond), down(backend("blue", 0, 0, 0))),
			report("n2", end, 0, down(backend("green", 0, 0, 0)), down(backend("blue", 0, 0, 0))),
			report("n3", end, 0, backend("green", 60, 0, 20*time.Millisecond), backend("blue", 90, 0, 20*time.Millisecond)),
		} {
			rep.RolloutId = "r2"
			if err := s.Add(rep); err != nil {
				t.Fatal(err)
			}
		}
	}
	a = s.Assess(r2, t0.Add(15*time.Second+Grace))
	for i, w := range a.Windows {
		if w.Verdict == Fail {
			t.Errorf("blue down: window %d failed: %s", i, w.Reason)
		}
	}
	if a.Breach != nil {
		t.Fatalf("blue down: breach %v", a.Breach)
	}
}

func TestNodeList_NamesAFew(t *testing.T) {
	if got, want := nodeList([]string{"n1"}), "1 node: n1"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if got, want := nodeList([]string{"a", "b", "c", "d", "e", "f", "g"}), "7 nodes: a, b, c, d, e and 2 more"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
}

// Past its first wave, a rollout's old backend serves only the current
// wave's nodes. A region failing on whatever it serves (the first wave's
// nodes, all on green by now, 8% errors) is no reason to roll back a
// release that does as well as the old one where both serve (the second
// wave); the same release failing where both serve is. The error-rate
// limit still reads all of green's traffic.
func TestStore_AnEarlierWavesRegionalProblemIsNotChargedToTheRelease(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green", Analysis: &sv1.AnalysisSpec{Method: spec.MethodWindows}}
	spec.Default(sp)
	r := &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0), Wave: 1}
	assess := func(greenErrorsInWave1 uint64, limit float64) Assessment {
		sp.Analysis.ErrorRate.Max = limit
		s := NewStore()
		for sec := 1; sec <= 20; sec++ {
			end := t0.Add(time.Duration(sec) * time.Second)
			for n := range 5 {
				eu := fmt.Sprintf("eu-%d", n)
				if err := s.Add(report(eu, end, 0, backend("green", 100, 8, 20*time.Millisecond))); err != nil {
					t.Fatal(err)
				}
				us := fmt.Sprintf("us-%d", n)
				if err := s.Add(report(us, end, 1, backend("green", 50, greenErrorsInWave1, 20*time.Millisecond), backend("blue", 50, 0, 20*time.Millisecond))); err != nil {
					t.Fatal(err)
				}
			}
		}
		return s.Assess(r, t0.Add(20*time.Second+Grace))
	}
	a := assess(0, 0)
	if len(a.Windows) == 0 || a.Breach != nil {
		t.Fatalf("a healthy release rolled back for the first wave's regional problem: %v", a.Breach)
	}
	for i, w := range a.Windows {
		if w.Verdict != Pass {
			t.Fatalf("window %d: %v (%s), want pass", i, w.Verdict, w.Reason)
		}
	}
	bad := assess(5, 0) // 10% errors where both serve, blue none
	if bad.Breach == nil || bad.Breach.GetGuardrail() != "error_rate" || !strings.Contains(bad.Breach.GetSummary(), "on the nodes both serve") {
		t.Fatalf("a release failing where both serve: breach %v", bad.Breach)
	}
	// Over an absolute limit overall but no worse than blue where both
	// serve: the limit asks for both, as without waves.
	if limited := assess(0, 0.02); limited.Breach != nil {
		t.Fatalf("over the limit only where blue does not serve: breach %v", limited.Breach)
	}
}
