package rollout

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func fleetOf(n int) []SimNode {
	var out []SimNode
	for i := range n {
		out = append(out, SimNode{ID: fmt.Sprintf("edge-%02d", i+1)})
	}
	return out
}

func synthetic(nodes int, seconds int, green func(t time.Time) Behavior) *Synthetic {
	blue := Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond}
	return &Synthetic{
		Service: "web", Fleet: fleetOf(nodes), Rate: 100, Interval: time.Second,
		Initial: map[string]uint32{"blue": 100, "green": 0},
		Behave: func(b string, t time.Time) Behavior {
			if b == "green" {
				return green(t)
			}
			return blue
		},
		End:  t0.Add(time.Duration(seconds) * time.Second),
		Rand: rand.New(rand.NewPCG(3, 4)),
	}
}

func canarySpec(t *testing.T, yaml string) *sv1.RolloutSpec {
	t.Helper()
	sp, err := spec.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

const simCanary = `
version: v1
name: web-sim
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 10
      - analysis: {windows: 3}
      - setWeight: 50
      - pause: {duration: 20s}
      - setWeight: 100
`

func TestSimulate_HealthyCanaryCompletes(t *testing.T) {
	src := synthetic(10, 300, func(time.Time) Behavior { return Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond} })
	res, err := Simulate(canarySpec(t, simCanary), src, SimOptions{Start: t0, ApplyDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Final.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
		t.Fatalf("phase %v; events %v", res.Final.GetPhase(), res.Events)
	}
	for _, e := range res.Events {
		if e.Action == Rollback {
			t.Fatalf("healthy canary rolled back: %v", e.Evidence)
		}
	}
}

func TestSimulate_BadGreenRollsBackWithEvidence(t *testing.T) {
	bad := t0.Add(40 * time.Second)
	src := synthetic(10, 300, func(now time.Time) Behavior {
		if now.After(bad) {
			return Behavior{ErrorRate: 0.05, Latency: 20 * time.Millisecond}
		}
		return Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond}
	})
	sp := canarySpec(t, strings.Replace(simCanary, "- analysis: {windows: 3}", "- pause: {duration: 5m}", 1))
	res, err := Simulate(sp, src, SimOptions{Start: t0, ApplyDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var rb *Event
	for i, e := range res.Events {
		if e.Action == Rollback {
			rb = &res.Events[i]
		}
	}
	if rb == nil || res.Final.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		t.Fatalf("no rollback; final %v events %v", res.Final.GetPhase(), res.Events)
	}
	if d := rb.At.Sub(bad); d < 0 || d > 20*time.Second {
		t.Fatalf("rolled back %v after the regression, want within 20s", d)
	}
	seq := rb.Evidence.GetSequential()
	if rb.Evidence.GetGuardrail() != "error_rate" || seq.GetTest() != "errors" || seq.GetStatistic() < seq.GetThreshold() ||
		len(seq.GetNodes()) == 0 || seq.GetCandidateEvents() == 0 || seq.GetPValue() >= 0.001 {
		t.Fatalf("evidence %v", rb.Evidence)
	}
	for _, w := range []string{"errors: new backend", "log-likelihood ratio", "threshold", "driven by edge-"} {
		if !strings.Contains(rb.Evidence.GetSummary(), w) {
			t.Errorf("summary %q does not say %q", rb.Evidence.GetSummary(), w)
		}
	}
}

func TestSimulate_ReplaysARecording(t *testing.T) {
	src := synthetic(3, 60, func(time.Time) Behavior { return Behavior{ErrorRate: 0.2, Latency: 20 * time.Millisecond} })
	var buf bytes.Buffer
	all := fleetOf(3)
	for i := range all {
		all[i].Weights = map[string]uint32{"blue": 50, "green": 50}
	}
	for _, r := range src.Reports(t0, t0.Add(60*time.Second), all) {
		b, _ := protojson.Marshal(r)
		buf.Write(b)
		buf.WriteByte('\n')
	}
	rec, err := ReadRecording(&buf)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Simulate(canarySpec(t, simCanary), rec, SimOptions{Start: rec.Start(), ApplyDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if res.Final.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		t.Fatalf("recording with 20%% green errors: final %v, events %v", res.Final.GetPhase(), res.Events)
	}
}

func TestSimulate_ReadRecordingRefusesBadLines(t *testing.T) {
	for name, in := range map[string]string{
		"not json":   "{nope\n",
		"no node":    `{"windowEnd": "2026-01-01T00:00:00Z"}` + "\n",
		"empty file": "\n# only a comment\n",
	} {
		if _, err := ReadRecording(strings.NewReader(in)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestSimulate_AnalysisAtFullWeightPassesOnItsWindows: after a blue-green
// switch (postPromotionWindows) or a canary's setWeight 100, the old
// backend serves nothing, so no node has both backends for the sequential
// judge to compare: the step passes on its windows, as with method:
// windows, and a bad green still fails them.
func TestSimulate_AnalysisAtFullWeightPassesOnItsWindows(t *testing.T) {
	for name, strategy := range map[string]string{
		"blue-green": "  blueGreen: {postPromotionWindows: 2}",
		"canary":     "  canary:\n    steps:\n      - setWeight: 100\n      - analysis: {windows: 2}",
	} {
		yaml := "version: v1\nname: web-full\nservice: web\nfrom: blue\nto: green\nstrategy:\n" + strategy + "\n"
		healthy := synthetic(10, 120, func(time.Time) Behavior { return Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond} })
		res, err := Simulate(canarySpec(t, yaml), healthy, SimOptions{Start: t0, ApplyDelay: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Final.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
			t.Errorf("%s: healthy green at 100%%: final %v, events %v", name, res.Final.GetPhase(), res.Events)
		}
		bad := synthetic(10, 120, func(time.Time) Behavior { return Behavior{ErrorRate: 0.3, Latency: 20 * time.Millisecond} })
		res, err = Simulate(canarySpec(t, yaml), bad, SimOptions{Start: t0, ApplyDelay: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if res.Final.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
			t.Errorf("%s: green failing 30%% at 100%%: final %v, events %v", name, res.Final.GetPhase(), res.Events)
		}
	}
}
