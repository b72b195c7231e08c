package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/faultproxy"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// startPinnedOnNATSCluster is startOnNATSCluster with agent i given only
// server i%3's URL: it connects there first and, when that server dies,
// reconnects to one the cluster told it of. The fleet ends the example
// blue-green rollout on green.
func startPinnedOnNATSCluster(t *testing.T, ctx context.Context, nodes int) (*harness.NATSCluster, *harness.Cluster, *harness.Fleet) {
	t.Helper()
	sy, be := binaries(t)
	hub := startNATSCluster(t, ctx)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{
		Nodes: nodes, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()},
		NodeNATS: func(i int) harness.Bus { return hub.Security.Bus(hub.ClientURLs[i%len(hub.ClientURLs)]) },
	})
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	return hub, c, f
}

// appliedOK is each agent's count of successful applies of web.
func appliedOK(t *testing.T, ctx context.Context, f *harness.Fleet) []float64 {
	t.Helper()
	out := make([]float64, len(f.Nodes))
	for i := range f.Nodes {
		m, err := f.AgentMetrics(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		out[i], _ = harness.MetricValue(m, "switchyard_agent_applies_total", map[string]string{"service": "web", "result": "ok"})
	}
	return out
}

// TestNATSCluster_DesiredBucketLeaderKilledAsAnAbortCommits SIGKILLs the
// NATS server leading the desired-state bucket's stream, with one agent
// connected to it, and at once has an operator abort the rollout: the
// leader's put fails until the stream elects another leader and is
// retried, the agent of the dead server reconnects to another one and
// resyncs, and every node ends on blue having applied the abort's
// document once.
func TestNATSCluster_DesiredBucketLeaderKilledAsAnAbortCommits(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	hub, _, f := startPinnedOnNATSCluster(t, ctx, 3)
	before := appliedOK(t, ctx, f)
	leader := hub.StreamLeader(ctx, "KV_"+bus.DesiredBucket)
	if leader < 0 {
		t.Fatal("no NATS server leads the desired-state bucket")
	}
	if err := hub.Kill(leader); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	res, err := f.Run(ctx, "rollout", "abort", exampleRollout, "--reason", "desired bucket leader lost", "--timeout", "60s")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("abort with nats-%d (the desired bucket's leader) just killed: %v %+v", leader+1, err, res)
	}
	t.Logf("abort answered %s after nats-%d died: %s", time.Since(killed).Round(10*time.Millisecond), leader+1, strings.TrimSpace(res.Stdout))
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the abort: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	t.Logf("every node on blue and reported %s after nats-%d died", time.Since(killed).Round(10*time.Millisecond), leader+1)
	after := appliedOK(t, ctx, f)
	for i := range f.Nodes {
		if after[i]-before[i] != 1 {
			t.Errorf("%s (first on nats-%d) applied %v times since the abort, want once", f.Nodes[i].ID, i%3+1, after[i]-before[i])
		}
	}
}

// TestNATSCluster_IntentAndAuditLeaderKilledWithAnAbortInFlight has one
// NATS server lead both the intent stream and the audit stream and
// SIGKILLs it while an operator's abort is on its way: the abort is
// applied once (one audit record for its id, the fleet back on blue), and
// the audit stream holds the whole chain, without a gap or a record stored
// twice (`audit verify`).
func TestNATSCluster_IntentAndAuditLeaderKilledWithAnAbortInFlight(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	hub, _, f := startPinnedOnNATSCluster(t, ctx, 3)
	leader := hub.StreamLeader(ctx, bus.IntentStream)
	if leader < 0 {
		t.Fatal("no NATS server leads the intent stream")
	}
	if err := hub.MoveStreamLeader(ctx, bus.AuditStream, leader); err != nil {
		t.Fatal(err)
	}
	type result struct {
		res *harness.CLIResult
		err error
	}
	done := make(chan result, 1)
	sent := time.Now()
	go func() {
		res, err := f.Run(ctx, "rollout", "abort", exampleRollout, "--reason", "intent and audit leader lost", "--timeout", "60s", "-o", "json")
		done <- result{res, err}
	}()
	if err := hub.Kill(leader); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.res.ExitCode != 0 {
		t.Fatalf("abort with nats-%d (leading the intent and audit streams) killed as it was sent: %v %+v", leader+1, r.err, r.res)
	}
	var ans struct{ IntentID string }
	if err := json.Unmarshal([]byte(r.res.Stdout), &ans); err != nil || ans.IntentID == "" {
		t.Fatalf("abort -o json: %v\n%s", err, r.res.Stdout)
	}
	t.Logf("abort %s answered %s after it was sent", ans.IntentID, time.Since(sent).Round(10*time.Millisecond))
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the abort: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 500*time.Millisecond, func(ctx context.Context) error {
		res, err := f.Run(ctx, "audit", "log", "-o", "json")
		if err != nil || res.ExitCode != 0 {
			return fmt.Errorf("audit log: %v %+v", err, res)
		}
		intents := 0
		for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
			var e struct {
				Record struct{ Kind, IntentID string }
			}
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				return fmt.Errorf("audit log line %q: %v", line, err)
			}
			if e.Record.Kind == "intent" && e.Record.IntentID == ans.IntentID {
				intents++
			}
		}
		if intents != 1 {
			return fmt.Errorf("%d audit records of intent %s, want 1", intents, ans.IntentID)
		}
		if res, err := f.Run(ctx, "audit", "verify"); err != nil || res.ExitCode != 0 {
			return harness.Permanent(fmt.Errorf("audit verify: %v %+v", err, res))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// connectedServer is the index of the server of hub a process is
// connected to, from the last client URL its log names as the one it is
// on (url=U, or nats=U alone rather than a list).
func connectedServer(t *testing.T, hub *harness.NATSCluster, logPath string) int {
	t.Helper()
	logged, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	server, at := -1, -1
	for i, u := range hub.ClientURLs {
		for _, m := range regexp.MustCompile(`(?:url|nats)=`+regexp.QuoteMeta(u)+`(?:\s|$)`).FindAllIndex(logged, -1) {
			if m[0] > at {
				server, at = i, m[0]
			}
		}
	}
	if server < 0 {
		t.Fatalf("%s names none of %v:\n%s", logPath, hub.ClientURLs, logged)
	}
	return server
}

// TestNATSCluster_MembersSayWhichReplicasAreGone kills one NATS server:
// `coordinator members` names it, for every stream, as a replica that is
// not current, and says which server leads each stream, so that an
// operator sees that one more loss would stop the bus before it happens.
func TestNATSCluster_MembersSayWhichReplicasAreGone(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	sy, _ := binaries(t)
	hub := startNATSCluster(t, ctx)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	members := func(ctx context.Context) (*coordinator.Members, string, error) {
		var lastErr error
		for _, co := range c.Coordinators {
			res, err := harness.RunCLI(ctx, sy, nil, "coordinator", "members", "--http", co.HTTPAddr, "--cluster-ca", c.CA.CAPath())
			if err != nil || res.ExitCode != 0 {
				lastErr = fmt.Errorf("coordinator members: %v %+v", err, res)
				continue
			}
			js, err := harness.RunCLI(ctx, sy, nil, "coordinator", "members", "--http", co.HTTPAddr, "-o", "json", "--cluster-ca", c.CA.CAPath())
			if err != nil || js.ExitCode != 0 {
				lastErr = fmt.Errorf("coordinator members -o json: %v %+v", err, js)
				continue
			}
			var m coordinator.Members
			if err := json.Unmarshal([]byte(js.Stdout), &m); err != nil {
				return nil, "", err
			}
			return &m, res.Stdout, nil
		}
		return nil, "", lastErr
	}
	streams := []string{bus.IntentStream, "KV_" + bus.DesiredBucket, "KV_" + bus.DrillsBucket, bus.AuditStream}
	// Each wait is bounded well below the test's: before members said how
	// the servers hold the streams, neither ever ends.
	pctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := harness.Poll(pctx, 500*time.Millisecond, func(ctx context.Context) error {
		m, _, err := members(ctx)
		if err != nil {
			return err
		}
		for _, s := range streams {
			h, ok := m.Bus[s]
			if !ok || h.Leader == "" || h.Current != 3 || len(h.Behind) != 0 {
				return fmt.Errorf("%s with every NATS server up: %+v, want a leader and 3 current replicas", s, h)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	const dead = 1 // nats-2
	if err := hub.Kill(dead); err != nil {
		t.Fatal(err)
	}
	var text string
	pctx, cancel = context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := harness.Poll(pctx, 500*time.Millisecond, func(ctx context.Context) error {
		m, out, err := members(ctx)
		if err != nil {
			return err
		}
		text = out
		for _, s := range streams {
			h := m.Bus[s]
			if h.Leader == "" || h.Leader == "nats-2" || h.Current != 2 || len(h.Behind) != 1 || h.Behind[0] != "nats-2" {
				return fmt.Errorf("%s with nats-2 dead: %+v, want a leader other than nats-2, 2 current replicas and nats-2 behind", s, h)
			}
		}
		if !strings.Contains(out, "nats-2") || !strings.Contains(out, "degraded") {
			return fmt.Errorf("members does not say that the bus is degraded and nats-2 is gone:\n%s", out)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("members with nats-2 dead:\n%s", text)
}

// TestNATSCluster_ServerThatStopsAnsweringIsLeftByItsClients cuts the
// clients of the NATS server the leading coordinator is connected to off
// from it without closing their connections, as a host that lost power or
// a network cut leaves them (the servers' routes stay up, so the streams
// keep their leaders): nothing answers on those connections. An
// operator's abort still reaches every node, those behind that server
// included, long before the minutes the NATS client's default pings take
// to call a connection stale: every client pings often enough to leave a
// server that stopped answering for another. And the abort is answered
// within 20 s (7.7–10.5 s in five runs alone): the leader leaves the
// silent server 4–6 s after the cut (coordinators ping every 2 s), and,
// back on the bus, creates the intent consumer anew, so an abort its pull
// request on the silent connection took is delivered at once, not after
// the consumer's AckWait (10 s). The CLI itself gives a silent server in
// its --nats list 2 s before it tries the next.
func TestNATSCluster_ServerThatStopsAnsweringIsLeftByItsClients(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	sy, be := binaries(t)
	hub := startNATSClusterWith(t, ctx, harness.NATSClusterOptions{Proxies: true})
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()}})
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	co, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := c.Coordinators[co]
	// The server each process is connected to, from its log.
	cut := connectedServer(t, hub, leader.StderrPath())
	var behind []string
	for _, n := range f.Nodes {
		if connectedServer(t, hub, n.Agent.StderrPath()) == cut {
			behind = append(behind, n.ID)
		}
	}
	hub.ClientProxy(cut).SetMode(faultproxy.Mode{Blackhole: true})
	stopped := time.Now()
	// Well under the NATS client's default of two pings two minutes apart.
	dl, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	res, err := f.Run(dl, "rollout", "abort", exampleRollout, "--reason", "a NATS server stopped answering", "--timeout", "20s")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("abort with nats-%d (the leader %s's, and nodes %v's) silent: %v %+v", cut+1, leader.ID, behind, err, res)
	}
	t.Logf("abort answered %s after nats-%d (the leader %s's, and nodes %v's) went silent: %s",
		time.Since(stopped).Round(10*time.Millisecond), cut+1, leader.ID, behind, strings.TrimSpace(res.Stdout))
	if err := f.WaitAllServing(dl, harness.Blue, samples); err != nil {
		t.Fatalf("with nats-%d (nodes %v's) silent: %v", cut+1, behind, err)
	}
	t.Logf("every node on blue %s after nats-%d went silent", time.Since(stopped).Round(10*time.Millisecond), cut+1)
	// The leader's beacon stopped with its server, so every agent asked its
	// own server whether it still answers: those behind the silent one
	// left it, the others stayed where they were.
	for _, n := range f.Nodes {
		logged, err := os.ReadFile(n.Agent.StderrPath())
		if err != nil {
			t.Fatal(err)
		}
		left := bytes.Contains(logged, []byte(leftSilentServer))
		if was := slices.Contains(behind, n.ID); left != was {
			t.Errorf("%s (behind nats-%d: %v) left its server on a missed beacon: %v", n.ID, cut+1, was, left)
		}
	}
}

// leftSilentServer is what an agent logs when it leaves a NATS server
// that did not answer its ping while no leader's beacon came.
const leftSilentServer = "no leader's beacon, and the NATS server did not answer a ping; leaving it for another"

// TestNATSCluster_AgentLeavesItsSilentServerOnceTheBeaconStops cuts the
// clients of one edge node's NATS server off from it without closing their
// connections. The node stops hearing the leader's beacon (due every 2 s),
// pings its server, gets no answer within 2 s and leaves it for another:
// 4–8 s after the cut, before its connection's own pings (every 5 s, two
// unanswered) would call it stale, 10–15 s after. A rollback decided then
// reaches it.
func TestNATSCluster_AgentLeavesItsSilentServerOnceTheBeaconStops(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	sy, be := binaries(t)
	hub := startNATSClusterWith(t, ctx, harness.NATSClusterOptions{Proxies: true})
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus()})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 1, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()}})
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	node := f.Nodes[0]
	logPath := node.Agent.StderrPath()
	cut := connectedServer(t, hub, logPath)
	hub.ClientProxy(cut).SetMode(faultproxy.Mode{Blackhole: true})
	stopped := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := harness.Poll(wctx, 100*time.Millisecond, func(context.Context) error {
		logged, err := os.ReadFile(logPath)
		if err != nil {
			return err
		}
		if bytes.Contains(logged, []byte("nats: stale connection")) {
			return harness.Permanent(fmt.Errorf("%s's pings called its connection stale before the missed beacon made it leave nats-%d", node.ID, cut+1))
		}
		if !bytes.Contains(logged, []byte(leftSilentServer)) {
			return fmt.Errorf("%s has not left nats-%d", node.ID, cut+1)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s left nats-%d %s after it went silent", node.ID, cut+1, time.Since(stopped).Round(10*time.Millisecond))
	res, err := f.Run(ctx, "rollout", "abort", exampleRollout, "--reason", "the node's NATS server stopped answering", "--timeout", "20s")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("abort with nats-%d silent: %v %+v", cut+1, err, res)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("with nats-%d silent: %v", cut+1, err)
	}
	if now := connectedServer(t, hub, logPath); now == cut {
		t.Errorf("%s is still on nats-%d", node.ID, cut+1)
	}
	t.Logf("%s on blue %s after nats-%d went silent", node.ID, time.Since(stopped).Round(10*time.Millisecond), cut+1)
}
