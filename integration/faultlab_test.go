package integration

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/faultproxy"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The fault lab (the pattern of etcd's robustness tests and Jepsen, on one
// machine): three secured nats-server processes behind fault proxies (every
// client and route port), three coordinators, three agents with HAProxy. A
// seeded schedule injects one fault at a time — SIGKILL and SIGSTOP of
// coordinators (the leader among them), the leader partitioned from its
// peers over Raft (every coordinator's Raft port sits behind a fault proxy
// it advertises) while it keeps running, NATS servers and agents, a NATS
// server partitioned from clients and peers, delayed or dropped client
// links, a whole NATS outage, HAProxy restarts — while a workload applies
// rollouts and aborts some, and runs short HTTP fault drills on a share of
// the nodes. Every operator call (with its answer), every fault and every
// agent apply (from the agents' logs) is recorded; after each round of
// faults the history is checked: every acknowledged intent is there
// exactly once, no agent applied a lower generation or one generation
// twice in a run, every fault was reverted (every drill ended and no agent
// still injects one), and every node converges within a bound to the final
// desired state, serving what status shows.
//
// SWITCHYARD_LAB_SEED reruns a schedule (the seed is printed);
// SWITCHYARD_LAB_DURATION sets how long faults run in all (default 30s, the
// short run of `make test`); SWITCHYARD_LAB_ROUND how long each round of
// faults lasts before the quiet check (default 15s). `make soak` runs it long.

// labConvergeBound is how long, after the last fault is reverted, every
// node may take to serve the final desired state.
const labConvergeBound = 60 * time.Second

type labConfig struct {
	seed            uint64
	duration, round time.Duration
}

func labConfigFromEnv(t *testing.T) labConfig {
	t.Helper()
	c := labConfig{seed: uint64(time.Now().UnixNano()), duration: 30 * time.Second, round: 15 * time.Second}
	if s := os.Getenv("SWITCHYARD_LAB_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("SWITCHYARD_LAB_SEED=%q: %v", s, err)
		}
		c.seed = v
	}
	for env, d := range map[string]*time.Duration{"SWITCHYARD_LAB_DURATION": &c.duration, "SWITCHYARD_LAB_ROUND": &c.round} {
		if s := os.Getenv(env); s != "" {
			v, err := time.ParseDuration(s)
			if err != nil || v <= 0 {
				t.Fatalf("%s=%q: want a positive duration", env, s)
			}
			*d = v
		}
	}
	return c
}

// labOp is one operator call and its answer.
type labOp struct {
	at           time.Duration
	op, rollout  string
	exit         int
	acknowledged bool // the command said the intent was committed
	answer       string
}

// labFault is one injected fault.
type labFault struct {
	at, held     time.Duration
	kind, target string
	revertErr    error
}

type lab struct {
	t   *testing.T
	ctx context.Context
	// rng draws the faults; opsRNG the workload's choices; drillRNG the
	// drills' (each used by one goroutine, all from the seed).
	rng, opsRNG, drillRNG *rand.Rand
	drillSeq              int
	start                 time.Time
	hub                   *harness.NATSCluster
	c                     *harness.Cluster
	f                     *harness.Fleet

	mu        sync.Mutex
	ops       []labOp
	faults    []labFault
	statusErr error // of the last status query
	// drillsInjected counts the drills some target reported injected.
	drillsInjected int
}

// dump logs the history, for a failed round.
func (l *lab) dump() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, op := range l.ops {
		l.t.Logf("op %s: %s %s exit %d acknowledged=%v: %.300s", op.at, op.op, op.rollout, op.exit, op.acknowledged, op.answer)
	}
	for _, f := range l.faults {
		l.t.Logf("fault %s: %s of %s held %s (revert: %v)", f.at, f.kind, f.target, f.held, f.revertErr)
	}
	l.t.Logf("last status query: %v", l.statusErr)
}

func (l *lab) since() time.Duration { return time.Since(l.start).Round(time.Millisecond) }

func TestFaultLab_ShortRun(t *testing.T) {
	// Serial (no t.Parallel): nine processes behind fault proxies, three
	// agents and a workload are CPU-heavy, and convergence is bounded.
	cfg := labConfigFromEnv(t)
	t.Logf("fault lab seed %d (rerun with SWITCHYARD_LAB_SEED=%d), faults for %s in rounds of %s", cfg.seed, cfg.seed, cfg.duration, cfg.round)
	ctx := harnesstest.Context(t, cfg.duration+time.Duration(cfg.duration/cfg.round+1)*4*time.Minute+3*time.Minute)
	sy, be := binaries(t)
	hub, err := harness.StartNATSCluster(ctx, harness.NATSClusterOptions{Binary: natsServerBin.get(t), Dir: harnesstest.Dir(t) + "/nats", Proxies: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := hub.Close(); err != nil {
			t.Logf("stop nats cluster: %v", err)
		}
	})
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: hub.Bus(), RaftProxies: true})
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be, NATS: hub.Bus(), TrustKeys: []string{c.TrustKey()}})
	l := &lab{t: t, ctx: ctx, rng: rand.New(rand.NewPCG(cfg.seed, 1)), opsRNG: rand.New(rand.NewPCG(cfg.seed, 2)), drillRNG: rand.New(rand.NewPCG(cfg.seed, 3)), start: time.Now(), hub: hub, c: c, f: f}

	var convergence []time.Duration
	serving := harness.Blue
	seq := 0
	for round := 1; l.since() < cfg.duration || round == 1; round++ {
		roundCtx, stop := context.WithTimeout(ctx, min(cfg.round, cfg.duration))
		var wg sync.WaitGroup
		wg.Go(func() { l.workload(roundCtx, &seq, &serving) })
		wg.Go(func() { l.drills(roundCtx) })
		l.schedule(roundCtx)
		wg.Wait()
		stop()
		if t.Failed() {
			l.dump()
			break
		}
		quiet := time.Now()
		final, err := l.converge(serving)
		took := time.Since(quiet)
		if err != nil {
			l.dump()
			t.Fatalf("round %d: no convergence within %s after the faults stopped: %v", round, labConvergeBound, err)
		}
		convergence = append(convergence, took)
		serving = final
		t.Logf("fault lab round %d: every node on %s %d ms after the last fault was reverted", round, final, took.Milliseconds())
		l.check()
		if t.Failed() {
			l.dump()
			break
		}
	}
	l.report(convergence)
}

// workload applies rollouts one after another, flipping the service between
// blue and green, and aborts about a third of them; every call is
// recorded. A rollout not finished when the round ends stays for the
// convergence check.
func (l *lab) workload(ctx context.Context, seq *int, serving *string) {
	for ctx.Err() == nil {
		*seq++
		name := fmt.Sprintf("lab-%d", *seq)
		from, to := *serving, harness.Green
		if from == harness.Green {
			to = harness.Blue
		}
		text := blueGreenSpec(name, from, to)
		gated := l.opsRNG.Float64() < 0.5
		if gated {
			text = gatedCanarySpec(name, from, to)
		}
		path := writeSpec(l.t, name, text)
		if !l.call(ctx, "apply", name, "rollout", "apply", "-f", path, "--publish-timeout", "5s") {
			// Not acknowledged: it may still have been committed; wait
			// for whatever holds the service to end before the next.
			if v := l.waitTerminal(ctx, ""); v != nil {
				*serving = servingAfter(v)
			}
			continue
		}
		switch {
		case l.opsRNG.Float64() < 0.35:
			l.call(ctx, "abort", name, "rollout", "abort", name, "--reason", "fault lab", "--publish-timeout", "5s")
		case gated:
			// Approve once the rollout waits at its gate; an approval
			// refused (not at the gate yet, or the bus away) is tried again.
			_ = harness.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) error {
				v := l.find(ctx, name)
				if v == nil || terminal(v.GetRollout().GetPhase()) {
					return nil
				}
				if v.GetRollout().GetStep() != 1 {
					return fmt.Errorf("not at the gate")
				}
				if !l.call(ctx, "approve", name, "rollout", "approve", name, "--publish-timeout", "5s") {
					return fmt.Errorf("approval not acknowledged")
				}
				return nil
			})
		}
		if v := l.waitTerminal(ctx, name); v != nil {
			*serving = servingAfter(v)
		}
	}
}

// gatedCanarySpec moves half of the traffic, waits for an approval, then
// moves the rest.
func gatedCanarySpec(name, from, to string) string {
	return fmt.Sprintf("version: v1\nname: %s\nservice: web\nfrom: %s\nto: %s\nstrategy:\n  canary:\n    steps:\n      - setWeight: 50\n      - pause: {}\n      - setWeight: 100\n", name, from, to)
}

// servingAfter is the backend a finished rollout leaves the service on.
func servingAfter(v *sv1.RolloutView) string {
	r := v.GetRollout()
	if r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
		return r.GetSpec().GetFrom()
	}
	return r.GetSpec().GetTo()
}

func terminal(p sv1.RolloutPhase) bool {
	return p == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED || p == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK
}

// call runs one operator command and records it; true when the command
// acknowledged the intent (it printed that it was committed).
func (l *lab) call(ctx context.Context, op, rollout string, args ...string) bool {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	at := l.since()
	res, err := l.f.Run(cctx, args...)
	rec := labOp{at: at, op: op, rollout: rollout, exit: -1}
	if err != nil {
		rec.answer = err.Error()
	} else {
		rec.exit = res.ExitCode
		rec.answer = strings.TrimSpace(res.Stdout + " " + res.Stderr)
		rec.acknowledged = strings.Contains(res.Stdout, "committed at index")
	}
	l.mu.Lock()
	l.ops = append(l.ops, rec)
	l.mu.Unlock()
	return rec.acknowledged
}

// waitTerminal polls status until rollout name has finished or ctx ends.
// With name "" (after an apply that was not acknowledged, which may have
// committed nothing at all) it waits until status answers with no
// unfinished rollout, and returns the newest one, nil when there is none.
func (l *lab) waitTerminal(ctx context.Context, name string) *sv1.RolloutView {
	var out *sv1.RolloutView
	_ = harness.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) error {
		views, err := l.status(ctx)
		if err != nil {
			return err
		}
		v := newest(views)
		if name != "" {
			v = named(views, name)
		} else if v == nil {
			return nil
		}
		if v == nil || !terminal(v.GetRollout().GetPhase()) {
			return fmt.Errorf("not finished")
		}
		out = v
		return nil
	})
	return out
}

// status is every rollout in status; an error when the query failed
// (never an empty answer standing for a failed one).
func (l *lab) status(ctx context.Context) ([]*sv1.RolloutView, error) {
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ans, err := l.f.Status(sctx, "")
	l.mu.Lock()
	l.statusErr = err
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return ans.GetRollouts(), nil
}

func (l *lab) find(ctx context.Context, name string) *sv1.RolloutView {
	views, _ := l.status(ctx)
	return named(views, name)
}

func named(views []*sv1.RolloutView, name string) *sv1.RolloutView {
	for _, v := range views {
		if v.GetRollout().GetId() == name {
			return v
		}
	}
	return nil
}

// newest is the rollout with the highest generation.
func newest(views []*sv1.RolloutView) *sv1.RolloutView {
	var best *sv1.RolloutView
	for _, v := range views {
		if best == nil || v.GetRollout().GetGeneration() > best.GetRollout().GetGeneration() {
			best = v
		}
	}
	return best
}

// acknowledgedApplies counts the applies some command acknowledged.
func (l *lab) acknowledgedApplies() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, op := range l.ops {
		if op.op == "apply" && op.acknowledged {
			n++
		}
	}
	return n
}

// faultKinds are the faults the schedule draws from.
var faultKinds = []string{
	"kill-coordinator", "kill-coordinator-leader", "freeze-coordinator-leader", "partition-coordinator-leader",
	"kill-nats", "freeze-nats", "partition-nats", "delay-nats-client", "drop-nats-client", "nats-outage",
	"kill-agent", "freeze-agent", "restart-haproxy",
}

// schedule injects one fault at a time, holds it 1–4 s, reverts it, and
// pauses 0.5–2 s, until ctx ends; the last fault is reverted before it
// returns.
func (l *lab) schedule(ctx context.Context) {
	for ctx.Err() == nil {
		kind := faultKinds[l.rng.IntN(len(faultKinds))]
		hold := time.Second + time.Duration(l.rng.Int64N(int64(3*time.Second)))
		gap := 500*time.Millisecond + time.Duration(l.rng.Int64N(int64(1500*time.Millisecond)))
		at := l.since()
		target, revert, err := l.inject(kind)
		if err != nil {
			l.t.Errorf("inject %s: %v", kind, err)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(hold):
		}
		// Reverting must not depend on the round's context.
		rerr := revert()
		l.mu.Lock()
		l.faults = append(l.faults, labFault{at: at, held: l.since() - at, kind: kind, target: target, revertErr: rerr})
		l.mu.Unlock()
		if rerr != nil {
			l.t.Errorf("revert %s of %s: %v", kind, target, rerr)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(gap):
		}
	}
}

// labRevertBound is how long injecting a fault and reverting it may take
// (a restarted process must be ready by then): a revert that hangs fails
// the round with its history instead of stalling the lab.
const labRevertBound = 2 * time.Minute

// inject starts a fault and returns its target and how to revert it.
func (l *lab) inject(kind string) (string, func() error, error) {
	ctx, cancel := context.WithTimeout(l.ctx, labRevertBound)
	target, revert, err := l.injectWith(ctx, kind)
	if err != nil || revert == nil {
		cancel()
		return target, revert, err
	}
	return target, func() error { defer cancel(); return revert() }, nil
}

func (l *lab) injectWith(ctx context.Context, kind string) (string, func() error, error) {
	n := l.rng.IntN(3)
	switch kind {
	case "kill-coordinator", "kill-coordinator-leader", "freeze-coordinator-leader", "partition-coordinator-leader":
		i := n
		if kind != "kill-coordinator" {
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			leader, err := l.c.WaitLeader(lctx)
			cancel()
			if err == nil {
				i = leader
			}
		}
		target := l.c.Coordinators[i].ID
		if kind == "partition-coordinator-leader" {
			// Cut off over Raft only: it keeps running, its bus and its
			// HTTP API, while the others elect a new leader.
			if err := l.c.PartitionRaft(i); err != nil {
				return target, nil, err
			}
			return target, func() error { return l.c.HealRaft(i) }, nil
		}
		if kind == "freeze-coordinator-leader" {
			if err := l.c.Freeze(i); err != nil {
				return target, nil, err
			}
			return target, func() error { return l.c.Thaw(i) }, nil
		}
		if err := l.c.Kill(i); err != nil {
			return target, nil, err
		}
		return target, func() error { return l.c.Start(ctx, i) }, nil
	case "kill-nats":
		if err := l.hub.Kill(n); err != nil {
			return "", nil, err
		}
		return l.hub.Servers[n].Name(), func() error { return l.hub.Start(ctx, n) }, nil
	case "freeze-nats":
		if err := l.hub.Freeze(n); err != nil {
			return "", nil, err
		}
		return l.hub.Servers[n].Name(), func() error { return l.hub.Thaw(n) }, nil
	case "partition-nats":
		l.hub.Partition(n)
		return l.hub.Servers[n].Name(), func() error { l.hub.Heal(n); return nil }, nil
	case "delay-nats-client":
		l.hub.ClientProxy(n).SetMode(faultproxy.Mode{Delay: 200 * time.Millisecond})
		return l.hub.Servers[n].Name(), func() error { l.hub.ClientProxy(n).SetMode(faultproxy.Pass); return nil }, nil
	case "drop-nats-client":
		l.hub.ClientProxy(n).SetMode(faultproxy.Mode{Drop: true})
		return l.hub.Servers[n].Name(), func() error { l.hub.ClientProxy(n).SetMode(faultproxy.Pass); return nil }, nil
	case "nats-outage":
		for i := range l.hub.Servers {
			l.hub.ClientProxy(i).SetMode(faultproxy.Mode{Drop: true})
		}
		return "all", func() error {
			for i := range l.hub.Servers {
				l.hub.ClientProxy(i).SetMode(faultproxy.Pass)
			}
			return nil
		}, nil
	case "kill-agent":
		if err := l.f.KillAgent(n); err != nil {
			return "", nil, err
		}
		return l.f.Nodes[n].ID, func() error { return l.f.StartAgent(ctx, n) }, nil
	case "freeze-agent":
		a := l.f.Nodes[n].Agent
		if err := a.Signal(syscall.SIGSTOP); err != nil {
			return "", nil, err
		}
		return l.f.Nodes[n].ID, func() error { return a.Signal(syscall.SIGCONT) }, nil
	case "restart-haproxy":
		hp := l.f.Nodes[n].HAProxy
		if err := hp.Kill(); err != nil {
			return "", nil, err
		}
		// HAProxy comes back at once from its file (blue weights); the
		// agent must notice and repair it.
		if err := hp.Restart(ctx); err != nil {
			return "", nil, err
		}
		return l.f.Nodes[n].ID, func() error { return nil }, nil
	}
	return "", nil, fmt.Errorf("unknown fault kind %q", kind)
}

// converge waits, within labConvergeBound, until the newest rollout has
// finished, every node serves the backend it leaves the service on, and
// status shows every node converged on it (the proxy observed doing it).
// When no apply has been committed yet (every one of the round was cut
// off by the faults), every node must still serve what it served before.
func (l *lab) converge(serving string) (string, error) {
	ctx, cancel := context.WithTimeout(l.ctx, labConvergeBound)
	defer cancel()
	var final string
	err := harness.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) error {
		views, err := l.status(ctx)
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		v := newest(views)
		if v == nil {
			if n := l.acknowledgedApplies(); n > 0 {
				return fmt.Errorf("no rollout in status although %d applies were acknowledged", n)
			}
			for i := range l.f.Nodes {
				if got := l.f.Sample(ctx, i, samples); got[serving] != samples {
					return fmt.Errorf("no rollout committed, yet %s serves %v instead of %s", l.f.Nodes[i].ID, got, serving)
				}
			}
			final = serving
			return nil
		}
		if r := v.GetRollout(); !terminal(r.GetPhase()) {
			// A gated rollout the workload left at its gate: the
			// operator approves it.
			if r.GetSpec().GetStrategy().GetCanary() != nil && r.GetStep() == 1 {
				l.call(ctx, "approve", r.GetId(), "rollout", "approve", r.GetId(), "--publish-timeout", "5s")
			}
			return fmt.Errorf("%s in phase %s at step %d", r.GetId(), r.GetPhase(), r.GetStep()+1)
		}
		if err := l.f.Converged(v.GetRollout().GetPhase())(v); err != nil {
			return err
		}
		final = servingAfter(v)
		for i := range l.f.Nodes {
			got := l.f.Sample(ctx, i, samples)
			if got[final] != samples {
				return fmt.Errorf("%s serves %v; status shows %s", l.f.Nodes[i].ID, got, final)
			}
		}
		return nil
	})
	return final, err
}

var appliedLine = regexp.MustCompile(`msg="desired state applied".* generation=(\d+)`)

// check verifies the history so far.
func (l *lab) check() {
	t := l.t
	ctx := l.ctx
	l.mu.Lock()
	ops := slices.Clone(l.ops)
	faults := slices.Clone(l.faults)
	l.mu.Unlock()

	// Every fault reverted: every process runs, every proxy passes.
	for _, fl := range faults {
		if fl.revertErr != nil {
			t.Errorf("fault %s of %s at %s not reverted: %v", fl.kind, fl.target, fl.at, fl.revertErr)
		}
	}
	for _, p := range append(append(l.hub.Servers, l.c.Processes()...), l.f.Processes()...) {
		if !p.Running() {
			t.Errorf("%s is not running after the faults were reverted", p.Name())
		}
	}
	for _, px := range append(l.hub.Proxies(), l.c.RaftProxies()...) {
		if px.Faulty() {
			t.Errorf("proxy to %s left faulty (mode %+v, or one of a source)", px.Target(), px.Mode())
		}
	}
	l.checkDrills()

	// No acknowledged intent lost or applied twice.
	views, err := l.status(ctx)
	if err != nil {
		t.Errorf("status query after the round: %v", err)
		return
	}
	byName := map[string][]*sv1.RolloutView{}
	for _, v := range views {
		byName[v.GetRollout().GetId()] = append(byName[v.GetRollout().GetId()], v)
	}
	if len(views) == 0 && l.acknowledgedApplies() > 0 {
		t.Errorf("status answered no rollouts after the round, though applies were acknowledged")
	}
	for _, op := range ops {
		if !op.acknowledged || op.op == "drill" {
			continue // drills: checkDrills
		}
		got := byName[op.rollout]
		switch {
		case len(got) == 0:
			t.Errorf("%s %s acknowledged at %s (%q) but the rollout is not in status", op.op, op.rollout, op.at, op.answer)
		case len(got) > 1:
			t.Errorf("%s %s: %d rollouts of that name in status", op.op, op.rollout, len(got))
		case op.op == "abort" && got[0].GetRollout().GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
			t.Errorf("abort of %s acknowledged at %s (%q) but it ended %s", op.rollout, op.at, op.answer, got[0].GetRollout().GetPhase())
		case op.op == "approve" && got[0].GetRollout().GetStep() < 2 && !terminal(got[0].GetRollout().GetPhase()):
			t.Errorf("approval of %s acknowledged at %s (%q) but it still waits at step %d", op.rollout, op.at, op.answer, got[0].GetRollout().GetStep()+1)
		}
	}
	gens := map[uint64]string{}
	for _, v := range views {
		g := v.GetRollout().GetGeneration()
		if other, ok := gens[g]; ok {
			t.Errorf("rollouts %s and %s share generation %d", other, v.GetRollout().GetId(), g)
		}
		gens[g] = v.GetRollout().GetId()
	}

	// No agent applied a lower generation, or one generation twice in a
	// run (a restart may apply what it held again).
	applies := 0
	for _, n := range l.f.Nodes {
		file, err := os.Open(n.Agent.StderrPath())
		if err != nil {
			t.Error(err)
			continue
		}
		var last uint64
		seenInRun := map[uint64]bool{}
		sc := bufio.NewScanner(file)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "--- harness:") {
				seenInRun = map[uint64]bool{}
				continue
			}
			m := appliedLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			g, _ := strconv.ParseUint(m[1], 10, 64)
			if g < last {
				t.Errorf("%s applied generation %d after %d: %s", n.ID, g, last, line)
			}
			if seenInRun[g] {
				t.Errorf("%s applied generation %d twice in one run: %s", n.ID, g, line)
			}
			seenInRun[g] = true
			last = max(last, g)
			applies++
		}
		file.Close()
	}
	if applies == 0 && len(views) > 0 {
		t.Errorf("no agent log shows an apply: the history of applies is empty")
	}
	t.Logf("history checked: %d operator calls, %d faults, %d rollouts in status, %d agent applies", len(ops), len(faults), len(views), applies)
}

func (l *lab) report(convergence []time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kinds := map[string]int{}
	for _, f := range l.faults {
		kinds[f.kind]++
	}
	acked, ackedDrills, calls := 0, 0, map[string]int{}
	for _, op := range l.ops {
		calls[op.op]++
		if op.acknowledged {
			acked++
			if op.op == "drill" {
				ackedDrills++
			}
		}
	}
	slices.Sort(convergence)
	pct := func(p float64) time.Duration {
		if len(convergence) == 0 {
			return 0
		}
		return convergence[min(len(convergence)-1, int(p*float64(len(convergence))))]
	}
	if ackedDrills > 0 && l.drillsInjected == 0 && !l.t.Failed() {
		l.t.Errorf("%d drills acknowledged, none injected on any target: the drills tested nothing", ackedDrills)
	}
	l.t.Logf("fault lab: %d faults %v; %d drills injected; operator calls %v, %d acknowledged; convergence after faults stop over %d rounds: p50 %d ms, p99 %d ms, max %d ms",
		len(l.faults), kinds, l.drillsInjected, calls, acked, len(convergence), pct(0.5).Milliseconds(), pct(0.99).Milliseconds(), pct(1).Milliseconds())
}
