package analysis

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// fleetSecond is how one simulated node behaves in one second.
type fleetSecond struct {
	// errRate of blue and green; slowShare of green requests get slowBy.
	blueErr, greenErr float64
	slowShare         float64
	slowBy            time.Duration
}

// feed adds seconds (from, to] of reports from nodes whose error rates and
// latencies differ (node i runs (0.5 + i/nodes) times the base rates and
// latency), each serving 100 requests a second, 10% on green.
func feed(t *testing.T, s *Store, rng *rand.Rand, t0 time.Time, from, to, nodes int, at func(sec int) fleetSecond) {
	t.Helper()
	binom := func(n int, p float64) uint64 {
		k := uint64(0)
		for range n {
			if rng.Float64() < p {
				k++
			}
		}
		return k
	}
	for sec := from + 1; sec <= to; sec++ {
		fs := at(sec)
		end := t0.Add(time.Duration(sec) * time.Second)
		for n := range nodes {
			scale := 0.5 + float64(n)/float64(nodes)
			lat := func(count int, slowShare float64, slowBy time.Duration) *sketch.Sketch {
				sk := sketch.New()
				for range count {
					v := 0.02 * scale * math.Exp(0.35*rng.NormFloat64())
					if rng.Float64() < slowShare {
						v += slowBy.Seconds()
					}
					sk.Add(v)
				}
				return sk
			}
			g, b := 10, 90
			rep := report(string(rune('a'+n)), end, 0,
				&sv1.BackendHealth{Backend: "green", Requests: uint64(g), Errors: binom(g, fs.greenErr*scale), Latency: lat(g, fs.slowShare, fs.slowBy).ToProto()},
				&sv1.BackendHealth{Backend: "blue", Requests: uint64(b), Errors: binom(b, fs.blueErr*scale), Latency: lat(b, 0, 0).ToProto()})
			if err := s.Add(rep); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func seqRollout(t0 time.Time) *sv1.Rollout {
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green"}
	spec.Default(sp)
	return &sv1.Rollout{Id: "r1", Spec: sp, CreatedAt: timestamppb.New(t0), StepStartedAt: timestamppb.New(t0)}
}

func TestStore_SequentialStaysQuietOnHeterogeneousNodes(t *testing.T) {
	// Node rates differ by a factor of three, one node is ten times worse on
	// both backends, and a fleet-wide incident doubles every error rate for
	// 30 s: nothing the new backend is to blame for.
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s, r := NewStore(), seqRollout(t0)
	rng := rand.New(rand.NewPCG(5, 5))
	feed(t, s, rng, t0, 0, 300, 10, func(sec int) fleetSecond {
		if sec > 100 && sec <= 130 {
			return fleetSecond{blueErr: 0.02, greenErr: 0.02}
		}
		return fleetSecond{blueErr: 0.005, greenErr: 0.005}
	})
	a := s.Assess(r, t0.Add(300*time.Second+Grace))
	if a.Breach != nil {
		t.Fatalf("false alarm: %s", a.Breach.GetSummary())
	}
	// A one-minute horizon (no timed steps): ln(60 / (0.005 × 0.5)).
	if !strings.Contains(a.Sequential, "errors -") || !strings.Contains(a.Sequential, " of 10.1;") {
		t.Errorf("status %q", a.Sequential)
	}
	if !a.NotWorse.OK() {
		t.Errorf("300 s of a healthy canary must show it is not worse: %s", a.NotWorse)
	}
}

func TestStore_SequentialCatchesSmallErrorRegressionAndNamesNodes(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s, r := NewStore(), seqRollout(t0)
	rng := rand.New(rand.NewPCG(6, 6))
	// 0.5% -> 2% at second 100; before that, healthy.
	feed(t, s, rng, t0, 0, 100, 10, func(int) fleetSecond { return fleetSecond{blueErr: 0.005, greenErr: 0.005} })
	if a := s.Assess(r, t0.Add(100*time.Second+Grace)); a.Breach != nil {
		t.Fatalf("alarm before the regression: %s", a.Breach.GetSummary())
	}
	feed(t, s, rng, t0, 100, 160, 10, func(int) fleetSecond { return fleetSecond{blueErr: 0.005, greenErr: 0.02} })
	a := s.Assess(r, t0.Add(160*time.Second+Grace))
	if a.Breach == nil {
		t.Fatalf("0.5%% -> 2%% not caught in 60 s: %s", a.Sequential)
	}
	seq := a.Breach.GetSequential()
	if a.Breach.GetGuardrail() != "error_rate" || seq.GetTest() != "errors" || seq.GetStatistic() < seq.GetThreshold() ||
		seq.GetFalseAlarm() != spec.DefaultFalseAlarm || seq.GetHorizon().AsDuration() != spec.HorizonOf(r.GetSpec()) {
		t.Fatalf("evidence %v", seq)
	}
	if seq.GetSince().AsTime().Before(t0.Add(90 * time.Second)) {
		t.Errorf("the evidence run starts at %s, long before the regression at +100s", seq.GetSince().AsTime())
	}
	if len(seq.GetNodes()) < 3 || seq.GetNodes()[0].GetContribution() < seq.GetNodes()[len(seq.GetNodes())-1].GetContribution() {
		t.Errorf("nodes %v", seq.GetNodes())
	}
	if seq.GetPValue() > 1e-4 {
		t.Errorf("exact p %g", seq.GetPValue())
	}
	// The mixture holds the leading alternative's best start at its share
	// of the error test (a start weight of 1 in the first horizon).
	share := map[float64]float64{2: 0.1, 4: 0.3, 10: 0.6}[seq.GetOddsRatio()]
	if share == 0 || seq.GetRunStatistic() <= 0 || seq.GetStatistic() < math.Log(share)+seq.GetRunStatistic()-1e-9 {
		t.Errorf("mixture %g, leading ×%g with its best start %g", seq.GetStatistic(), seq.GetOddsRatio(), seq.GetRunStatistic())
	}
	t.Logf("caught at %s: %s", seq.GetAt().AsTime().Sub(t0), a.Breach.GetSummary())
}

func TestStore_SequentialCatchesTailOnlyLatency(t *testing.T) {
	// 5% of green's requests 300 ms slower: the median does not move.
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s, r := NewStore(), seqRollout(t0)
	rng := rand.New(rand.NewPCG(7, 7))
	feed(t, s, rng, t0, 0, 60, 10, func(int) fleetSecond { return fleetSecond{} })
	feed(t, s, rng, t0, 60, 120, 10, func(int) fleetSecond { return fleetSecond{slowShare: 0.05, slowBy: 300 * time.Millisecond} })
	a := s.Assess(r, t0.Add(120*time.Second+Grace))
	if a.Breach == nil || a.Breach.GetGuardrail() != "latency" {
		t.Fatalf("tail regression not caught: %v / %s", a.Breach, a.Sequential)
	}
	if !strings.Contains(a.Breach.GetSequential().GetTest(), "p99") && !strings.Contains(a.Breach.GetSequential().GetTest(), "p90") {
		t.Errorf("a tail regression should be caught in the tail: %s", a.Breach.GetSequential().GetTest())
	}
	t.Logf("%s", a.Breach.GetSummary())
}

func TestStore_SequentialWithoutBothBackendsIsInconclusive(t *testing.T) {
	// Only green serves (blue has no traffic on any node): no stratum, no
	// comparison, never a pass.
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s, r := NewStore(), seqRollout(t0)
	for sec := 1; sec <= 120; sec++ {
		end := t0.Add(time.Duration(sec) * time.Second)
		if err := s.Add(report("a", end, 0, backend("green", 100, 0, 20*time.Millisecond), backend("blue", 0, 0, 0))); err != nil {
			t.Fatal(err)
		}
	}
	a := s.Assess(r, t0.Add(120*time.Second+Grace))
	if a.Breach != nil || a.NotWorse.OK() {
		t.Fatalf("breach %v, not-worse %s", a.Breach, a.NotWorse)
	}
	if a.NotWorse.CandRequests != 0 || !strings.Contains(a.NotWorse.String(), "0 errors in 0 requests") {
		t.Errorf("not-worse %s", a.NotWorse)
	}
}

func TestStore_SequentialNotWorseRefusesAWorseBackend(t *testing.T) {
	// Green at 1.5% against 0.5%: below what the detectors need to roll back
	// within the run, but never enough to pass an analysis step.
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s, r := NewStore(), seqRollout(t0)
	rng := rand.New(rand.NewPCG(8, 8))
	feed(t, s, rng, t0, 0, 120, 10, func(int) fleetSecond { return fleetSecond{blueErr: 0.005, greenErr: 0.015} })
	a := s.Assess(r, t0.Add(120*time.Second+Grace))
	if a.NotWorse.OK() {
		t.Fatalf("a backend three times worse passed: %s", a.NotWorse)
	}
	if a.NotWorse.Errors >= 0 {
		t.Errorf("evidence %g should point against non-inferiority", a.NotWorse.Errors)
	}
}

// An analysis step does not pass on errors alone while agents send latency
// that the latency test cannot use yet: with little old-backend traffic
// (fewer than minBaselineSamples of its latencies so far), a green twenty
// times slower waits, saying why, until the latency test has evidence.
// Where no node sends latency, errors alone decide.
func TestNotWorse_WaitsForLatencyEvidenceWhenAgentsSendLatency(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	run := func(latency bool) NotWorse {
		s, r := NewStore(), seqRollout(t0)
		for sec := 1; sec <= 60; sec++ {
			end := t0.Add(time.Duration(sec) * time.Second)
			for _, n := range []string{"a", "b"} {
				g, b := backend("green", 20, 0, 420*time.Millisecond), backend("blue", 5, 0, 20*time.Millisecond)
				if !latency {
					g.Latency, b.Latency = nil, nil
				}
				if err := s.Add(report(n, end, 0, g, b)); err != nil {
					t.Fatal(err)
				}
			}
		}
		return s.Assess(r, t0.Add(60*time.Second+Grace)).NotWorse
	}
	nw := run(true)
	if nw.Errors < nw.Needed {
		t.Fatalf("setup: errors evidence %.1f of %.1f", nw.Errors, nw.Needed)
	}
	if nw.OK() {
		t.Fatalf("passed without latency evidence while agents send latency: %s", nw)
	}
	if want := "latency: waits for 1000 old-backend samples (600 so far)"; !strings.Contains(nw.String(), want) {
		t.Fatalf("%q does not say %q", nw, want)
	}
	if nw := run(false); !nw.OK() {
		t.Fatalf("without latency from any node, errors alone should decide: %s", nw)
	}
}
