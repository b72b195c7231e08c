package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/coordinator/rollout"
)

// TestCLI_SimulateShowsSequentialEvidenceInWords replays a recording in
// which green fails 20% of its requests against blue's 0.5%, and checks that
// `rollout simulate` explains the rollback: the test, the statistic against
// its threshold and guarantee, the counts and the nodes.
func TestCLI_SimulateShowsSequentialEvidenceInWords(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var fleet []rollout.SimNode
	for i := range 3 {
		fleet = append(fleet, rollout.SimNode{ID: fmt.Sprintf("edge-%d", i+1), Weights: map[string]uint32{"blue": 50, "green": 50}})
	}
	src := &rollout.Synthetic{Service: "web", Fleet: fleet, Rate: 100, Interval: time.Second,
		Behave: func(b string, _ time.Time) rollout.Behavior {
			if b == "green" {
				return rollout.Behavior{ErrorRate: 0.2, Latency: 20 * time.Millisecond}
			}
			return rollout.Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond}
		},
		End: t0.Add(time.Minute), Rand: rand.New(rand.NewPCG(1, 2))}
	var buf bytes.Buffer
	for _, r := range src.Reports(t0, t0.Add(time.Minute), fleet) {
		b, err := protojson.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	dir := t.TempDir()
	tel := filepath.Join(dir, "reports.jsonl")
	if err := os.WriteFile(tel, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr := runCLI(t, "rollout", "simulate", "-f", example(t, "canary.yaml"), "--telemetry", tel)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"rollback",
		"Rollback evidence: errors: new backend",
		"test:       errors",
		"statistic:",
		"reached the threshold 14.18", // log(3600 / (0.005 × 0.5)): the error test holds half the budget
		"guarantee:  a release no worse than the old backend is rolled back with probability at most 0.005 over 1h0m0s of canary (at most twice that however long it runs)",
		"NODE", "edge-",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("simulate output lacks %q:\n%s", want, out)
		}
	}
}
