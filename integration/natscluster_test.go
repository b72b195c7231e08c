package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestNATSCluster_OneServerKilledDuringFanOut runs three standalone
// nats-server processes, three coordinators and two agents with HAProxy on
// them. The stream and buckets get three replicas (shown by `coordinator
// members`); one NATS server is SIGKILLed right after an abort is
// committed, during its fan-out, and every node still ends on blue with
// the rollout rolled back.
func TestNATSCluster_OneServerKilledDuringFanOut(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	nc3, c, f := startGreenOnNATSCluster(t, ctx)
	res, err := harness.RunCLI(ctx, switchyardBin.get(t), nil, "coordinator", "members", "--http", c.Coordinators[0].HTTPAddr, "-o", "json", "--cluster-ca", c.CA.CAPath())
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("coordinator members: %v %+v", err, res)
	}
	var m coordinator.Members
	if err := json.Unmarshal([]byte(res.Stdout), &m); err != nil {
		t.Fatal(err)
	}
	if m.Replicas != 3 || m.Streams["SWITCHYARD_INTENTS"] != 3 || m.Streams["KV_switchyard_desired"] != 3 {
		t.Fatalf("replicas on a 3-server NATS cluster: configured %d, streams %v; want 3 everywhere", m.Replicas, m.Streams)
	}

	if _, err := f.Abort(ctx, exampleRollout, "nats server lost during fan-out"); err != nil {
		t.Fatal(err)
	}
	if err := nc3.Kill(0); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("with one NATS server killed: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	// It comes back and catches up; nothing is left behind.
	if err := nc3.Start(ctx, 0); err != nil {
		t.Fatal(err)
	}
}

// TestNATSCluster_AbortSentRightAfterTheIntentStreamsLeaderDied kills the
// NATS server leading the intent stream and, at once, has an operator
// abort the rollout: the CLI keeps sending the intent while the stream
// elects another leader, within its timeout, and the fleet goes back to
// blue with the rollout rolled back.
func TestNATSCluster_AbortSentRightAfterTheIntentStreamsLeaderDied(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	hub, _, f := startGreenOnNATSCluster(t, ctx)
	leader := hub.StreamLeader(ctx, bus.IntentStream)
	if leader < 0 {
		t.Fatal("no NATS server leads the intent stream")
	}
	if err := hub.Kill(leader); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	res, err := f.Run(ctx, "rollout", "abort", exampleRollout, "--reason", "intent stream leader lost", "--timeout", "60s")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("abort with nats-%d (the intent stream's leader) just killed: %v %+v", leader+1, err, res)
	}
	t.Logf("abort committed %s after nats-%d died: %s", time.Since(killed).Round(10*time.Millisecond), leader+1, strings.TrimSpace(res.Stdout))
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the abort: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
}

// startOnNATSCluster runs three standalone nats-server processes (see
// startNATSCluster), three coordinators and nodes agents with HAProxy on
// them, the agents trusting the coordinators' signing key.
func startOnNATSCluster(t *testing.T, ctx context.Context, nodes int) (*harness.NATSCluster, *harness.Cluster, *harness.Fleet) {
	t.Helper()
	sy, be := binaries(t)
	hub := startNATSCluster(t, ctx)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: nodes, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()}})
	return hub, c, f
}

// startGreenOnNATSCluster is startOnNATSCluster with two agents, once the
// example blue-green rollout completed: the fleet on green.
func startGreenOnNATSCluster(t *testing.T, ctx context.Context) (*harness.NATSCluster, *harness.Cluster, *harness.Fleet) {
	t.Helper()
	hub, c, f := startOnNATSCluster(t, ctx, 2)
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	return hub, c, f
}

// startNATSCluster runs three standalone, secured nats-server processes
// and the named leaf servers, stopped when the test ends.
func startNATSCluster(t *testing.T, ctx context.Context, leaves ...string) *harness.NATSCluster {
	t.Helper()
	return startNATSClusterWith(t, ctx, harness.NATSClusterOptions{Leaves: leaves})
}

// startNATSClusterWith is startNATSCluster with more options (Proxies: a
// fault proxy in front of every client port and route, and no client URL
// gossip).
func startNATSClusterWith(t *testing.T, ctx context.Context, o harness.NATSClusterOptions) *harness.NATSCluster {
	t.Helper()
	o.Binary, o.Dir = natsServerBin.get(t), filepath.Join(harnesstest.Dir(t), "nats")
	c, err := harness.StartNATSCluster(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Logf("stop nats cluster: %v", err)
		}
	})
	return c
}

// TestNATSCluster_AbortBehindAFloodOfJunkIntents runs three nats-server
// processes, three coordinators and two agents with HAProxy. Someone
// holding operator NATS credentials but no signing key publishes 3,000
// intents that do not decode; an abort published right behind them
// commits, the fleet goes back to blue, every piece of junk is accounted
// for in the audit (a burst of refusal records, the rest in summaries) and
// the chain verifies.
func TestNATSCluster_AbortBehindAFloodOfJunkIntents(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	hub, _, f := startGreenOnNATSCluster(t, ctx)
	nc, err := hub.Bus().Connect(bus.RoleOperator, "mallory")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(512))
	if err != nil {
		t.Fatal(err)
	}
	const junk = 3000
	for i := range junk {
		m := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
		m.Data = []byte("not an intent")
		m.Header.Set(bus.MsgIDHeader, fmt.Sprintf("junk-%d", i))
		if _, err := js.PublishMsgAsync(m); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("the junk was not all stored")
	}
	sent := time.Now()
	res, err := f.Run(ctx, "rollout", "abort", exampleRollout, "--reason", "behind a flood", "--timeout", "60s")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("abort behind %d pieces of junk: %v %+v", junk, err, res)
	}
	t.Logf("abort committed %s after it was sent behind %d pieces of junk", time.Since(sent).Round(10*time.Millisecond), junk)
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the abort: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}

	// The audit accounts for every piece, mostly in summaries.
	var one, summarized int
	if err := harness.Poll(ctx, 500*time.Millisecond, func(ctx context.Context) error {
		res, err := f.Run(ctx, "audit", "log", "-o", "json")
		if err != nil || res.ExitCode != 0 {
			return fmt.Errorf("audit log: %v %+v", err, res)
		}
		one, summarized = 0, 0
		for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
			var e struct {
				Record struct{ Kind, Actor, Code, Message string }
			}
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				return fmt.Errorf("audit log line %q: %v", line, err)
			}
			switch r := e.Record; {
			case r.Kind == "refused" && r.Code == "malformed":
				one++
			case r.Kind == "refused" && r.Code == "refusals_not_recorded" && r.Actor == "switchyard":
				var n int
				if _, err := fmt.Sscanf(r.Message, "%d refused intents", &n); err != nil || !strings.Contains(r.Message, fmt.Sprintf("malformed %d", n)) {
					t.Fatalf("summary record %+v", r)
				}
				summarized += n
			}
		}
		if one+summarized < junk {
			return fmt.Errorf("%d refusals recorded one by one and %d in summaries, of %d", one, summarized, junk)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if one+summarized != junk || one > junk/3 {
		t.Fatalf("%d refusals recorded one by one and %d in summaries; want %d in all, most of them summarized", one, summarized, junk)
	}
	t.Logf("%d refusals recorded one by one, %d in summaries", one, summarized)
	if res, err := f.Run(ctx, "audit", "verify"); err != nil || res.ExitCode != 0 {
		t.Fatalf("audit verify: %v %+v", err, res)
	}
}
