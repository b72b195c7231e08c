package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// canarySpec pauses 3 s twice on the way to 100%, so a test has time to
// kill the leader in the middle of it.
const canarySpec = `version: v1
name: web-canary-1
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {duration: 3s}
      - setWeight: 50
      - pause: {duration: 3s}
      - setWeight: 100
`

// controlPlane is NATS in the test process, three coordinator processes and
// a fleet of two edge nodes (agent, HAProxy, blue and green) on that bus,
// with a recorder of every generation on the bus.
type controlPlane struct {
	switchyard string
	nc         *nats.Conn
	cluster    *harness.Cluster
	fleet      *harness.Fleet
	gens       *generations
}

func startControlPlane(t *testing.T, ctx context.Context) *controlPlane {
	t.Helper()
	sy, be := binaries(t)
	url := harnesstest.StartNATS(t)
	nc := connectNATS(t, url)
	gens := recordGenerations(t, nc, "web")
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be, NATS: url, TrustKeys: []string{c.TrustKey()}})
	return &controlPlane{switchyard: sy, nc: nc, cluster: c, fleet: f, gens: gens}
}

// TestCluster_LeaderKilledMidRolloutCarriesOn kills the leader with SIGKILL
// while a canary rollout waits in a timed pause and while intents are being
// sent. Another coordinator takes over, the rollout completes, no agent ever
// applies an older generation, and every intent has exactly one effect.
func TestCluster_LeaderKilledMidRolloutCarriesOn(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 6*time.Minute)
	cp := startControlPlane(t, ctx)
	c, f, nc := cp.cluster, cp.fleet, cp.nc

	// A second rollout, on a service no node runs (so it waits forever),
	// to pause and resume during the failover.
	if res, _, err := sendUntilAnswered(ctx, nc, applyBlueGreen("it-pr-apply", "pr-1", "pr"), 10*time.Second); err != nil || !res.GetAccepted() {
		t.Fatalf("apply pr-1: %v %v", res, err)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Apply(ctx, writeSpec(t, "canary", canarySpec)); err != nil {
		t.Fatal(err)
	}
	// In the first pause: both agents applied the 20% generation (the
	// leader moved on only once they had).
	before := waitStep(t, ctx, c, leader, "web-canary-1", 1)

	// The burst: intents with known ids, sent around the kill, each resent
	// with the same id until some coordinator answers.
	type sent struct {
		in       *sv1.Intent
		res      *sv1.IntentResult
		attempts int
		took     time.Duration
		err      error
	}
	var (
		mu    sync.Mutex
		burst []*sent
		wg    sync.WaitGroup
	)
	send := func(in *sv1.Intent) *sent {
		s := &sent{in: in}
		start := time.Now()
		s.res, s.attempts, s.err = sendUntilAnswered(ctx, nc, in, 5*time.Second)
		s.took = time.Since(start)
		mu.Lock()
		burst = append(burst, s)
		mu.Unlock()
		return s
	}
	// The applies go out one every 25 ms, the kill lands after about half
	// of them: some are committed by the old leader, some may be in its
	// hands when it dies, the rest wait for the new one.
	const applies, pairs, spacing = 12, 4, 25 * time.Millisecond
	burstStart := time.Now()
	for k := range applies {
		wg.Go(func() {
			time.Sleep(time.Until(burstStart.Add(time.Duration(k) * spacing)))
			send(applyBlueGreen(fmt.Sprintf("it-burst-%d", k), fmt.Sprintf("burst-%d", k), fmt.Sprintf("burst-%d", k)))
		})
	}
	wg.Go(func() {
		// Pause and resume alternate, so each waits for the answer to the
		// one before, and they go out no faster than the applies.
		for k := range pairs {
			for j, verb := range []string{"pause", "resume"} {
				time.Sleep(time.Until(burstStart.Add(time.Duration(2*k+j) * 2 * spacing)))
				if s := send(controlIntent(fmt.Sprintf("it-pr-%s-%d", verb, k), verb, "pr-1")); s.err != nil {
					return
				}
			}
		}
	})
	time.Sleep(time.Until(burstStart.Add(applies / 2 * spacing)))
	killedAt := time.Now()
	if err := c.Kill(leader); err != nil {
		t.Fatal(err)
	}
	next, err := c.WaitLeader(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	if next == leader {
		t.Fatalf("%s still leads after it was killed", c.Coordinators[leader].ID)
	}
	t.Logf("%s killed; %s leads %v later", c.Coordinators[leader].ID, c.Coordinators[next].ID, time.Since(killedAt).Round(time.Millisecond))

	done, err := f.WaitRollout(ctx, "web-canary-1", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatalf("rollout did not complete after the failover: %v", err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatalf("after completion: %v", err)
	}
	if done.GetRollout().GetGeneration() <= before.GetGeneration() {
		t.Errorf("completed at generation %d, not above %d of the first pause", done.GetRollout().GetGeneration(), before.GetGeneration())
	}
	wg.Wait()

	// Exactly one effect per intent id.
	byID := map[string]*sent{}
	for _, s := range burst {
		t.Logf("intent %s: %d send(s), answered in %v: accepted=%v duplicate=%v index=%d %s",
			s.in.GetId(), s.attempts, s.took.Round(time.Millisecond), s.res.GetAccepted(), s.res.GetDuplicate(), s.res.GetIndex(), s.res.GetError())
		if s.err != nil {
			t.Errorf("intent %s: %v", s.in.GetId(), s.err)
			continue
		}
		if !s.res.GetAccepted() {
			t.Errorf("intent %s refused: %s %s", s.in.GetId(), s.res.GetCode(), s.res.GetError())
		}
		byID[s.in.GetId()] = s
	}
	if len(byID) != applies+2*pairs {
		t.Fatalf("%d intents answered, want %d", len(byID), applies+2*pairs)
	}
	ans, err := f.Status(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	rollouts := map[string]*sv1.Rollout{}
	for _, v := range ans.GetRollouts() {
		rollouts[v.GetRollout().GetId()] = v.GetRollout()
	}
	for k := range applies {
		id, name := fmt.Sprintf("it-burst-%d", k), fmt.Sprintf("burst-%d", k)
		r := rollouts[name]
		started := history(r, "started")
		if r == nil || len(started) != 1 || started[0].GetIndex() != byID[id].res.GetIndex() {
			t.Errorf("rollout %s: history %v; want one start at the intent's index %d", name, r.GetHistory(), byID[id].res.GetIndex())
		}
	}
	pr := rollouts["pr-1"]
	for _, verb := range []string{"pause", "resume"} {
		want := map[uint64]bool{}
		for k := range pairs {
			want[byID[fmt.Sprintf("it-pr-%s-%d", verb, k)].res.GetIndex()] = true
		}
		got := history(pr, verb+"d")
		if len(got) != pairs {
			t.Errorf("pr-1 has %d %sd entries, want %d: %v", len(got), verb, pairs, pr.GetHistory())
		}
		for _, e := range got {
			if !want[e.GetIndex()] {
				t.Errorf("pr-1 %sd at index %d, which no %s intent was answered with (%v)", verb, e.GetIndex(), verb, want)
			}
		}
	}
	if pr.GetPaused() {
		t.Errorf("pr-1 is left paused; the last resume was lost")
	}

	// Sending any of them again changes nothing and says so.
	for id, s := range byID {
		again, _, err := sendUntilAnswered(ctx, nc, s.in, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if !again.GetDuplicate() || again.GetIndex() != s.res.GetIndex() || again.GetAccepted() != s.res.GetAccepted() {
			t.Errorf("resent %s answered %v; want duplicate of index %d", id, again, s.res.GetIndex())
		}
		rec, err := queryIntent(ctx, nc, id)
		if err != nil || rec.GetIndex() != s.res.GetIndex() {
			t.Errorf("intent query for %s: %v %v; want index %d", id, rec, err, s.res.GetIndex())
		}
	}

	// The killed coordinator comes back from its data directory and
	// catches up; every replica then holds the same rollouts.
	if err := c.Start(ctx, leader); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}
	assertReplicasAgree(t, ctx, c, "web-canary-1", "pr-1", "burst-0")

	seen := cp.gens.check(t, nodeIDs(f))
	for node, d := range seen {
		t.Logf("%s applied generations %v", node, d)
		if d[len(d)-1] != done.GetRollout().GetGeneration() {
			t.Errorf("%s ended at generation %d, want %d", node, d[len(d)-1], done.GetRollout().GetGeneration())
		}
	}
	logStaleRejections(t, ctx, f)
}

// assertReplicasAgree reads each rollout from every coordinator's own
// replica and fails if any two differ.
func assertReplicasAgree(t *testing.T, ctx context.Context, c *harness.Cluster, names ...string) {
	t.Helper()
	// A replica's applied index (Raft's) counts entries handed to its state
	// machine, which may still be applying them: the replicas are given a
	// while to agree, and a real divergence stays.
	deadline := time.Now().Add(15 * time.Second)
	for {
		var differ []string
		for _, name := range names {
			var first *sv1.Rollout
			for i, co := range c.Coordinators {
				ans, err := c.Rollouts(ctx, i, name)
				if err != nil {
					differ = append(differ, fmt.Sprintf("%s: %v", co.ID, err))
					continue
				}
				r := ans.GetRollouts()[0].GetRollout()
				if first == nil {
					first = r
				} else if !proto.Equal(first, r) {
					differ = append(differ, fmt.Sprintf("replicas differ on %s: %s has\n%v\nc1 has\n%v", name, co.ID, r, first))
				}
			}
		}
		if len(differ) == 0 {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			for _, d := range differ {
				t.Error(d)
			}
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logStaleRejections logs how many stale documents each agent refused: not
// a failure (the bucket refuses stale writes before any agent sees them),
// but worth seeing when a fencing test fails.
func logStaleRejections(t *testing.T, ctx context.Context, f *harness.Fleet) {
	t.Helper()
	for i, n := range f.Nodes {
		text, err := f.AgentMetrics(ctx, i)
		if err != nil {
			t.Errorf("%s metrics: %v", n.ID, err)
			continue
		}
		v, _ := harness.MetricValue(text, "switchyard_agent_documents_rejected_total", map[string]string{"reason": "stale"})
		t.Logf("%s rejected %v stale documents", n.ID, v)
	}
}

// TestCluster_FrozenLeaderCannotPublishOlderGenerations freezes the leader
// with SIGSTOP, for ten times the election timeout, at the start of a timed
// pause. The new leader ends the pause and moves the fleet on; when the old
// leader is thawed its own (stale) state says the pause is over too, and it
// must neither commit nor publish anything from it: it steps down, and no
// agent ever applies an older generation.
func TestCluster_FrozenLeaderCannotPublishOlderGenerations(t *testing.T) {
	// Serial (no t.Parallel): the new leader must move the fleet on within
	// the 6 s freeze, which a test running beside it can stretch. The 3 s
	// pause is the window in which the test must see the leader at step 1
	// (1.5 s was missed once in CI, on a loaded machine) and then freeze
	// it; the freeze covers an election and the rest of the pause.
	ctx := harnesstest.Context(t, 5*time.Minute)
	cp := startControlPlane(t, ctx)
	c, f, nc := cp.cluster, cp.fleet, cp.nc

	const spec = `version: v1
name: web-frozen-1
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {duration: 3s}
      - setWeight: 60
      - pause: {}
      - setWeight: 100
`
	const freeze = 6 * time.Second
	old, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	oldID := c.Coordinators[old].ID
	if _, err := f.Apply(ctx, writeSpec(t, "frozen", spec)); err != nil {
		t.Fatal(err)
	}
	// Straight from the leader's replica, to freeze it as early in the
	// pause as possible.
	waitStep(t, ctx, c, old, "web-frozen-1", 1)
	frozenAt := time.Now()
	if err := c.Freeze(old); err != nil {
		t.Fatal(err)
	}
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			_ = c.Thaw(old)
		}
	})
	gen1, _ := cp.gens.lastPublished("web")
	next, err := c.WaitLeader(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	if next == old {
		t.Fatalf("frozen %s still named leader", oldID)
	}
	t.Logf("%s frozen; %s leads %v later", oldID, c.Coordinators[next].ID, time.Since(frozenAt).Round(time.Millisecond))
	// Progress under the new leader: it ends the pause and moves to 60%
	// with a new generation, which both agents apply. Queries would reach
	// the frozen coordinator too, so this watches the bus instead.
	var gen2 uint64
	harnesstest.Eventually(t, ctx, "a new generation applied by every agent", func(context.Context) error {
		g, _ := cp.gens.lastPublished("web")
		if g <= gen1 {
			return fmt.Errorf("bucket still at generation %d", g)
		}
		for _, n := range f.Nodes {
			if a := cp.gens.appliedBy(n.ID); a != g {
				return fmt.Errorf("%s at generation %d, want %d", n.ID, a, g)
			}
		}
		gen2 = g
		return nil
	})
	if elapsed := time.Since(frozenAt); elapsed > freeze {
		t.Fatalf("progress took %v, longer than the freeze of %v; the test proves nothing", elapsed, freeze)
	}
	time.Sleep(time.Until(frozenAt.Add(freeze))) // the freeze itself is the fault under test
	if err := c.Thaw(old); err != nil {
		t.Fatal(err)
	}
	thawed = true
	thawedAt := time.Now()

	harnesstest.Eventually(t, ctx, oldID+" to step down", func(ctx context.Context) error {
		m, err := c.Members(ctx, old)
		if err != nil {
			return err
		}
		if m.State == "Leader" || m.Leader != c.Coordinators[next].ID {
			return fmt.Errorf("%s is %s and follows %q, want a follower of %s", oldID, m.State, m.Leader, c.Coordinators[next].ID)
		}
		return nil
	})
	t.Logf("%s stepped down %v after it was thawed", oldID, time.Since(thawedAt).Round(time.Millisecond))
	// What an operator would run: the CLI, asking the old leader itself.
	res, err := harness.RunCLI(ctx, cp.switchyard, nil, "coordinator", "members", "--http", c.Coordinators[old].HTTPAddr, "-o", "json", "--cluster-ca", c.CA.CAPath())
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("coordinator members: %v %+v", err, res)
	}
	var m coordinator.Members
	if err := json.Unmarshal([]byte(res.Stdout), &m); err != nil {
		t.Fatalf("members -o json: %v\n%s", err, res.Stdout)
	}
	for _, mem := range m.Members {
		if mem.Leader != (mem.ID == c.Coordinators[next].ID) {
			t.Errorf("members from %s: %+v; want %s as the only leader", oldID, m.Members, c.Coordinators[next].ID)
		}
	}
	if text, err := c.Metrics(ctx, old); err != nil {
		t.Error(err)
	} else if v, _ := harness.MetricValue(text, "switchyard_coordinator_is_leader", nil); v != 0 {
		t.Errorf("%s reports is_leader %v after stepping down", oldID, v)
	}

	// The rollout carries on to the end under the new leader; the old one
	// catches up as a follower.
	if _, err := f.WaitRollout(ctx, "web-frozen-1", atStep(f, 3)); err != nil {
		t.Fatal(err)
	}
	if res, _, err := sendUntilAnswered(ctx, nc, controlIntent("it-approve", "approve", "web-frozen-1"), 5*time.Second); err != nil || !res.GetAccepted() {
		t.Fatalf("approve: %v %v", res, err)
	}
	done, err := f.WaitRollout(ctx, "web-frozen-1", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}
	assertReplicasAgree(t, ctx, c, "web-frozen-1")
	// The pause was ended by the new leader, after the freeze, once.
	ended := history(done.GetRollout(), "paused 3s")
	if len(ended) != 1 || !ended[0].GetAt().AsTime().After(frozenAt) {
		t.Errorf("pause ended by %v; want one entry after the freeze at %v", ended, frozenAt)
	}
	seen := cp.gens.check(t, nodeIDs(f))
	for node, d := range seen {
		t.Logf("%s applied generations %v", node, d)
		if !containsAll(d, gen1, gen2, done.GetRollout().GetGeneration()) {
			t.Errorf("%s went through %v; want %d, %d and %d among them", node, d, gen1, gen2, done.GetRollout().GetGeneration())
		}
	}
	logStaleRejections(t, ctx, f)
}

func containsAll(seq []uint64, want ...uint64) bool {
	have := map[uint64]bool{}
	for _, v := range seq {
		have[v] = true
	}
	for _, w := range want {
		if !have[w] {
			return false
		}
	}
	return true
}

// TestCluster_RestartAllKeepsStateAndCarriesOn stops all three coordinators
// with SIGTERM and starts them again from their data directories: completed
// rollouts read the same on every replica, a rollout waiting for approval
// waits where it was and continues when approved, and an intent sent while
// no coordinator ran is applied once they are back.
func TestCluster_RestartAllKeepsStateAndCarriesOn(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	cp := startControlPlane(t, ctx)
	c, f, nc := cp.cluster, cp.fleet, cp.nc

	const first = `version: v1
name: web-green-1
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 50
      - setWeight: 100
`
	const second = `version: v1
name: web-blue-2
service: web
from: green
to: blue
strategy:
  canary:
    steps:
      - setWeight: 30
      - pause: {}
      - setWeight: 100
`
	if _, err := f.Apply(ctx, writeSpec(t, "first", first)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-green-1", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Apply(ctx, writeSpec(t, "second", second)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-blue-2", atStep(f, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}
	before := map[string]*sv1.Rollout{}
	for _, name := range []string{"web-green-1", "web-blue-2"} {
		ans, err := c.Rollouts(ctx, 0, name)
		if err != nil {
			t.Fatal(err)
		}
		before[name] = ans.GetRollouts()[0].GetRollout()
	}
	genBefore, _ := cp.gens.lastPublished("web")

	if err := c.StopAll(); err != nil {
		t.Fatalf("stopping every coordinator: %v", err)
	}
	// With no coordinator running, an intent is stored on the stream and
	// waits for the next leader.
	downCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err := sendIntent(downCtx, nc, bus.IntentKindRollout, applyBlueGreen("it-while-down", "down-1", "down"))
	cancel()
	if err == nil {
		t.Fatal("an intent was answered while every coordinator was stopped")
	}
	t.Logf("intent while every coordinator is down: %v", err)

	if err := c.StartAll(ctx); err != nil {
		t.Fatalf("starting the coordinators again: %v", err)
	}
	for i, co := range c.Coordinators {
		for name, want := range before {
			harnesstest.Eventually(t, ctx, co.ID+" to hold "+name+" as before", func(ctx context.Context) error {
				ans, err := c.Rollouts(ctx, i, name)
				if err != nil {
					return err
				}
				if got := ans.GetRollouts()[0].GetRollout(); !proto.Equal(got, want) {
					return fmt.Errorf("%s after restart:\n%v\nbefore:\n%v", name, got, want)
				}
				return nil
			})
		}
	}
	harnesstest.Eventually(t, ctx, "the intent sent while down to be applied", func(ctx context.Context) error {
		res, err := queryIntent(ctx, nc, "it-while-down")
		if err != nil {
			return err
		}
		if !res.GetAccepted() || res.GetDuplicate() {
			return fmt.Errorf("it-while-down: %v", res)
		}
		return nil
	})
	if g, _ := cp.gens.lastPublished("web"); g != genBefore {
		t.Errorf("restart changed web's generation in the bucket from %d to %d", genBefore, g)
	}
	// Still waiting at the gate: no step was taken on its own. (For 2 s
	// after its start the leader first says it is still hearing from the
	// fleet.)
	if _, err := f.WaitRollout(ctx, "web-blue-2", func(v *sv1.RolloutView) error {
		if err := atStep(f, 1)(v); err != nil {
			return err
		}
		if !strings.Contains(v.GetWaiting(), "approval") {
			return fmt.Errorf("web-blue-2 waits for %q after the restart, want approval", v.GetWaiting())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if res, err := f.Run(ctx, "rollout", "approve", "web-blue-2"); err != nil || res.ExitCode != 0 {
		t.Fatalf("approve: %v %+v", err, res)
	}
	done, err := f.WaitRollout(ctx, "web-blue-2", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatalf("rollout did not continue after approval: %v", err)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatal(err)
	}
	if done.GetRollout().GetGeneration() <= genBefore {
		t.Errorf("completed at generation %d, not above %d", done.GetRollout().GetGeneration(), genBefore)
	}
	seen := cp.gens.check(t, nodeIDs(f))
	for node, d := range seen {
		t.Logf("%s applied generations %v", node, d)
	}
}

// heldCanarySpec moves half the traffic, then waits for an approval.
const heldCanarySpec = `version: v1
name: web-held
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 50
      - pause: {}
`

// TestCluster_AbortWithoutAQuorumSaysSoAndLandsOnceItIsBack is an operator
// aborting while two of three coordinators are down. The command used to
// end with "intent stored, but no coordinator answered in time" and nothing
// on why; it now says that no coordinator leads, which one said so, and
// what becomes of the intent. When the coordinators come back the abort is
// applied once and every node goes back to blue.
func TestCluster_AbortWithoutAQuorumSaysSoAndLandsOnceItIsBack(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 2*time.Minute)
	cp := startControlPlane(t, ctx)
	c, f := cp.cluster, cp.fleet
	if _, err := f.Apply(ctx, writeSpec(t, "held", heldCanarySpec)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-held", atStep(f, 1)); err != nil {
		t.Fatal(err)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	down := []int{leader, (leader + 1) % len(c.Coordinators)}
	for _, i := range down {
		if err := c.Kill(i); err != nil {
			t.Fatal(err)
		}
	}
	res, err := f.Run(ctx, "rollout", "abort", "web-held", "--reason", "no quorum", "--timeout", "5s")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"intent stored, but no coordinator answered in time", "knows no leader", "nothing changes on the fleet", "the next leader applies it"} {
		if res.ExitCode != 1 || !strings.Contains(res.Stderr, want) {
			t.Fatalf("abort without a quorum: exit %d\nstdout: %s\nstderr: %s\nwant exit 1 and %q", res.ExitCode, res.Stdout, res.Stderr, want)
		}
	}
	for _, i := range down {
		if err := c.Start(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the coordinators came back: %v", err)
	}
	v, err := f.WaitRollout(ctx, "web-held", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatal(err)
	}
	if got := history(v.GetRollout(), "rolling back"); len(got) != 1 || !strings.Contains(got[0].GetMessage(), "no quorum") {
		t.Fatalf("rolling back %d times (%v), want once, for the abort", len(got), got)
	}
	// The operator, unsure, aborts again: the rollout is back already,
	// which is what the abort asks for, not a failure to page on.
	again, err := f.Run(ctx, "rollout", "abort", "web-held", "--reason", "again")
	if err != nil {
		t.Fatal(err)
	}
	if again.ExitCode != 0 || !strings.Contains(again.Stdout, "already rolling back or rolled back; nothing more to do") {
		t.Fatalf("abort again: exit %d\nstdout: %s\nstderr: %s", again.ExitCode, again.Stdout, again.Stderr)
	}
}
