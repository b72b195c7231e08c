package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
)

// The kill switch sent while no coordinator leads (fewer than a quorum up)
// cannot end anything yet. The operator must learn what still ends the
// faults meanwhile: each drill's own end on the agents, and, on a node, a
// restart of its agent.
func TestCLI_StopAllWithoutALeaderSaysHowFaultsEndMeanwhile(t *testing.T) {
	url, nc := runNATS(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The stream outlives the coordinators: they are down, the bus is not.
	if _, err := bus.EnsureIntentStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCLI(t, "chaos", "stop-all", "--reason", "outage", "--nats", url, "--timeout", "1s")
	t.Logf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, want := range []string{"no coordinator could answer as the leader", "the next leader applies it",
		"each drill's faults stay until its end", "restart its agent"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not say %q", want)
		}
	}
	// A rollout intent says nothing of drills.
	_, _, stderr = runCLI(t, "rollout", "abort", "r1", "--nats", url, "--timeout", "1s")
	if strings.Contains(stderr, "drill") {
		t.Errorf("rollout abort without a leader speaks of drills: %s", stderr)
	}
}
