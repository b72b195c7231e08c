package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The fleet-scale benchmark with agents as real processes: a coordinator
// cluster and N `switchyard agent` processes, each with its own NATS
// identity on the secured bus and its own HAProxy, measured from the
// leader's decision stamp to the agents' own applied stamps, beside raw
// NATS fan-out to N connections and to N separate processes, and the
// in-process benchmark at the same N, in one run; and what each process
// costs in memory and CPU, read from /proc.

// rawsubBin is the raw fan-out comparator process.
var rawsubBin = &builtBinary{pkg: "./integration/rawsub", name: "rawsub"}

// procRun says what runProcessFleet builds and measures.
type procRun struct {
	agents       int
	coordinators int
	// rounds of (apply a blue-green rollout, abort it): two decisions each.
	rounds int
	// idle is how long the idle CPU of every process is measured.
	idle time.Duration
	// raw adds the raw NATS fan-out comparators.
	raw bool
	// timeout bounds the whole run.
	timeout time.Duration
	// nice is added to the niceness of the agents and their HAProxy.
	nice int
	// check, when set, is called after every decision has been applied by
	// every agent (decision 0 is the first apply, 1 its abort, …).
	check func(decision int, fleet *harness.ProcessFleet)
}

// procUse is what one process used over a window: CPU per second of wall
// time and memory at the window's end.
type procUse struct {
	cpu      time.Duration
	rss, pss int64
}

// procFigures are the measurements of one runProcessFleet.
type procFigures struct {
	agents, nice int
	// applied is decision → the agent's own applied stamp, per agent and
	// decision; allApplied the slowest agent of each decision.
	applied, allApplied []time.Duration
	// seen is decision → the agent's status received on the bus (where
	// the coordinators learn of it), per agent; allSeen per decision.
	seen, allSeen []time.Duration
	// deliver (decision → the agent's delivered stamp), verify (→ its
	// verified stamp) and apply (→ its applied stamp) split applied, per
	// agent and decision, where the agent stamped them.
	deliver, verify, apply []time.Duration
	// generations are the decisions' generations.
	generations []uint64
	// applies[i][node] is how many distinct applies node's status reports
	// show for generations[i].
	applies []map[string]int
	// rawConn* are one core publish to one subscription on each of
	// `agents` connections of this process; rawProc* to `agents` rawsub
	// processes. Per subscriber, and the slowest of each message.
	rawConn, rawConnAll, rawProc, rawProcAll []time.Duration
	// Process costs, idle and over the decisions (burst).
	agentIdle, agentBurst     []procUse
	haproxyIdle, haproxyBurst []procUse
	coordIdle, coordBurst     []procUse
	selfIdle, selfBurst       procUse
	burstWall                 time.Duration
}

// runProcessFleet starts the bus, the coordinators and the fleet, measures,
// and stops everything (also when it fails: every process is stopped by
// the cleanups of tb, and killed by the kernel if this process dies).
func runProcessFleet(tb testing.TB, o procRun) *procFigures {
	ctx := harnesstest.Context(tb, o.timeout)
	began := time.Now()
	var phases []string
	phase := func(what string) {
		phases = append(phases, fmt.Sprintf("%s %.1f s", what, time.Since(began).Seconds()))
		began = time.Now()
	}
	defer func() { tb.Log(strings.Join(phases, "; ") + "; load average at the end " + loadAverage()) }()
	sy, backend := binaries(tb)
	phase("binaries built")
	nb := harnesstest.StartNATS(tb)
	c := harnesstest.StartCluster(tb, ctx, harness.ClusterOptions{Size: o.coordinators, Switchyard: sy, NATS: nb, Log: io.Discard})
	phase(fmt.Sprintf("NATS and %d coordinators started", o.coordinators))
	// Telemetry, heartbeat and proxy read-backs every 5 s, resync every
	// minute: the settings of the in-process benchmark, so the two differ
	// in the processes only.
	fleet := harnesstest.StartProcessFleet(tb, ctx, harness.ProcessFleetOptions{
		Nodes: o.agents, Switchyard: sy, Backend: backend, NATS: nb,
		TrustKeys: []string{c.TrustKey()},
		Heartbeat: 5 * time.Second, Resync: time.Minute, TelemetryInterval: 5 * time.Second,
		ObserveInterval: 5 * time.Second,
		Nice:            o.nice,
	})
	phase(fmt.Sprintf("%d agent processes and their HAProxy started", o.agents))
	nodes := fleet.NodeIDs()
	nc := connectNATS(tb, nb)
	fig := &procFigures{agents: o.agents, nice: o.nice}

	// Every agent known to the coordinators before the first decision.
	err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		var ans sv1.FleetAnswer
		if err := bus.Query(ctx, nc, bus.QueryFleet, &sv1.FleetQuery{Service: "web"}, &ans); err != nil {
			return err
		}
		if len(ans.GetNodes()) != o.agents {
			return fmt.Errorf("the coordinators know %d of %d nodes", len(ans.GetNodes()), o.agents)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	phase("every agent known to the coordinators")

	agentPids, haproxyPids := fleet.AgentPids(), fleet.HAProxyPids()
	var coordPids []int
	for _, co := range c.Coordinators {
		coordPids = append(coordPids, co.Pid())
	}
	self := []int{os.Getpid()}
	sample := func() [4][]harness.ProcSample {
		var out [4][]harness.ProcSample
		for i, pids := range [][]int{agentPids, haproxyPids, coordPids, self} {
			s, err := harness.ReadProcs(pids)
			if err != nil {
				tb.Fatalf("read /proc: %v", err)
			}
			out[i] = s
		}
		return out
	}
	uses := func(before, after []harness.ProcSample) []procUse {
		out := make([]procUse, len(after))
		for i := range after {
			out[i] = procUse{cpu: harness.CPUShare(before[i], after[i]), rss: after[i].RSS, pss: after[i].PSS}
		}
		return out
	}

	// Idle: heartbeats, telemetry, the proxies read back, nothing decided.
	idle0 := sample()
	select {
	case <-ctx.Done():
		tb.Fatal("no time left for the idle window")
	case <-time.After(o.idle):
	}
	idle1 := sample()
	fig.agentIdle, fig.haproxyIdle = uses(idle0[0], idle1[0]), uses(idle0[1], idle1[1])
	fig.coordIdle, fig.selfIdle = uses(idle0[2], idle1[2]), uses(idle0[3], idle1[3])[0]

	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	kv, err := bus.DesiredBucketHandle(ctx, js)
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := bus.LoadPublicKey(c.TrustKey())
	if err != nil {
		tb.Fatal(err)
	}
	trust, err := bus.NewKeyring(pub)
	if err != nil {
		tb.Fatal(err)
	}
	decide := func(in *sv1.Intent) {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		res, err := sendIntent(rctx, nc, bus.IntentKindRollout, in)
		if err != nil || !res.GetAccepted() {
			tb.Fatalf("intent %s: %v %v", in.GetId(), res, err)
		}
		// The decision's time is the leader's stamp on the committed
		// entry, carried in the desired state it produced.
		var ds *sv1.DesiredState
		err = harness.Poll(rctx, time.Millisecond, func(ctx context.Context) error {
			entry, err := kv.Get(ctx, "web")
			if err != nil {
				return err
			}
			d, _, err := trust.OpenDesired(entry.Value(), "web", time.Now())
			if err != nil {
				return harness.Permanent(err)
			}
			if d.GetGeneration() < res.GetIndex() {
				return fmt.Errorf("bucket holds generation %d, decision is %d", d.GetGeneration(), res.GetIndex())
			}
			ds = d
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		gen, decided := ds.GetGeneration(), ds.GetIssuedAt().AsTime()
		var got []harness.Applied
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
		defer wcancel()
		err = harness.Poll(wctx, 5*time.Millisecond, func(context.Context) error {
			var missing []string
			got, missing = fleet.Applied.Generation(nodes, gen)
			if len(missing) > 0 {
				return fmt.Errorf("%d of %d agents have not reported generation %d (first: %s)", len(missing), len(nodes), gen, missing[0])
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		var lastApplied, lastSeen time.Duration
		for _, a := range got {
			d, s := max(a.AppliedAt.Sub(decided), 0), max(a.ReceivedAt.Sub(decided), 0)
			fig.applied, fig.seen = append(fig.applied, d), append(fig.seen, s)
			if !a.DeliveredAt.IsZero() && !a.VerifiedAt.IsZero() {
				fig.deliver = append(fig.deliver, max(a.DeliveredAt.Sub(decided), 0))
				fig.verify = append(fig.verify, max(a.VerifiedAt.Sub(a.DeliveredAt), 0))
				fig.apply = append(fig.apply, max(a.AppliedAt.Sub(a.VerifiedAt), 0))
			}
			lastApplied, lastSeen = max(lastApplied, d), max(lastSeen, s)
		}
		fig.allApplied, fig.allSeen = append(fig.allApplied, lastApplied), append(fig.allSeen, lastSeen)
		fig.generations = append(fig.generations, gen)
		if o.check != nil {
			o.check(len(fig.generations)-1, fleet)
		}
	}
	waitPhase := func(name string, phase sv1.RolloutPhase) {
		err := harness.Poll(ctx, 50*time.Millisecond, func(ctx context.Context) error {
			var ans sv1.RolloutsAnswer
			if err := bus.Query(ctx, nc, bus.QueryRollouts, &sv1.RolloutsQuery{Rollout: name, Summary: true}, &ans); err != nil {
				return err
			}
			if got := ans.GetRollouts()[0].GetRollout().GetPhase(); got != phase {
				return fmt.Errorf("rollout %s in %v, want %v", name, got, phase)
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
	burst0 := sample()
	for i := range o.rounds {
		name := fmt.Sprintf("web-%d", i)
		decide(&sv1.Intent{Id: name + "-apply", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
			Name: name, Service: "web", From: harness.Blue, To: harness.Green,
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
		}}}})
		decide(&sv1.Intent{Id: name + "-abort", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: name}}})
		waitPhase(name, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)
	}
	burst1 := sample()
	phase(fmt.Sprintf("idle window and %d decisions", 2*o.rounds))
	fig.burstWall = burst1[3][0].At.Sub(burst0[3][0].At)
	fig.agentBurst, fig.haproxyBurst = uses(burst0[0], burst1[0]), uses(burst0[1], burst1[1])
	fig.coordBurst, fig.selfBurst = uses(burst0[2], burst1[2]), uses(burst0[3], burst1[3])[0]
	for _, gen := range fig.generations {
		m := map[string]int{}
		for _, n := range nodes {
			m[n] = fleet.Applied.Applies(n, gen)
		}
		fig.applies = append(fig.applies, m)
	}
	if !o.raw {
		return fig
	}

	// Raw fan-out to one subscription on each of `agents` connections of
	// this process, with the agents still running (as the in-process
	// benchmark measures it).
	fig.rawConn, fig.rawConnAll = rawFanoutConns(tb, ctx, nb, o.agents, 2*o.rounds)
	// Raw fan-out to `agents` separate processes, with the agents and
	// their proxies stopped to make room for them.
	if err := fleet.Close(); err != nil {
		tb.Errorf("process fleet shutdown was not clean: %v", err)
	}
	fig.rawProc, fig.rawProcAll = rawFanoutProcesses(tb, ctx, nb, o.agents, 2*o.rounds)
	phase("raw fan-out to connections and to processes")
	return fig
}

// rawFanoutConns publishes msgs messages, one at a time, to a subject with
// one subscriber on each of n connections of this process.
func rawFanoutConns(tb testing.TB, ctx context.Context, nb harness.Bus, n, msgs int) (each, all []time.Duration) {
	dial := func() *nats.Conn {
		c, err := nb.Connect(bus.RoleCoordinator, "bench-fanout", nats.Timeout(time.Minute))
		if err != nil {
			tb.Fatal(err)
		}
		return c
	}
	pub := dial()
	defer pub.Close()
	each, all, _ = rawFanout(tb, ctx, dial, pub, n, 1, msgs, processCPU)
	return each, all
}

// rawFanoutProcesses starts n rawsub processes, publishes msgs messages to
// them one at a time, reads their receive stamps from their output and
// stops them.
func rawFanoutProcesses(tb testing.TB, ctx context.Context, nb harness.Bus, n, msgs int) (each, all []time.Duration) {
	bin := rawsubBin.get(tb)
	sec, err := nb.Security(bus.RoleCoordinator, "bench-rawsub")
	if err != nil {
		tb.Fatal(err)
	}
	subject := bus.QuerySubject("bench-fanout-processes")
	dir := tb.TempDir()
	subs := make([]*harness.Process, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, 16)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			p, err := harness.StartProcess(harness.ProcessSpec{
				Name: fmt.Sprintf("rawsub-%05d", i+1), Path: bin, LogDir: dir,
				Args: []string{"--nats", nb.URL, "--nats-creds", sec.Creds, "--nats-ca", sec.CA, "--subject", subject, "--name", fmt.Sprintf("rawsub-%05d", i+1)},
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			subs[i] = p
		})
	}
	wg.Wait()
	tb.Cleanup(func() {
		for _, p := range subs {
			if p != nil {
				if err := p.Stop(); err != nil {
					tb.Errorf("rawsub: %v", err)
				}
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		tb.Fatal(err)
	}
	for _, p := range subs {
		if _, err := p.WaitForStdoutLine(ctx, "ready"); err != nil {
			tb.Fatal(err)
		}
	}
	pub, err := nb.Connect(bus.RoleCoordinator, "bench-fanout")
	if err != nil {
		tb.Fatal(err)
	}
	defer pub.Close()
	for seq := uint64(1); seq <= uint64(msgs); seq++ {
		var msg [16]byte
		binary.BigEndian.PutUint64(msg[:], seq)
		binary.BigEndian.PutUint64(msg[8:], uint64(time.Now().UnixNano()))
		if err := pub.Publish(subject, msg[:]); err != nil {
			tb.Fatal(err)
		}
		var ds []time.Duration
		err := harness.Poll(ctx, 5*time.Millisecond, func(context.Context) error {
			ds = ds[:0]
			for _, p := range subs {
				d, ok, err := rawsubDelay(p.StdoutPath(), seq)
				if err != nil {
					return harness.Permanent(err)
				}
				if !ok {
					if !p.Running() {
						return harness.Permanent(fmt.Errorf("%s exited\n%s", p.Name(), p.Tail(10)))
					}
					return fmt.Errorf("%s has not received message %d", p.Name(), seq)
				}
				ds = append(ds, d)
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
		each = append(each, ds...)
		all = append(all, slices.Max(ds))
	}
	return each, all
}

// rawsubDelay finds message seq in a rawsub's output and returns its
// receive stamp minus its send stamp.
func rawsubDelay(path string, seq uint64) (time.Duration, bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false, err
	}
	want := strconv.FormatUint(seq, 10) + " "
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, want) {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return 0, false, fmt.Errorf("%s: line %q: want seq sent received", filepath.Base(path), line)
		}
		sent, err1 := strconv.ParseInt(f[1], 10, 64)
		received, err2 := strconv.ParseInt(f[2], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return 0, false, fmt.Errorf("%s: line %q: %w", filepath.Base(path), line, err)
		}
		return max(time.Duration(received-sent), 0), true, nil
	}
	return 0, false, nil
}

// procAgentsEnv names the environment variable with the agent counts of
// BenchmarkScale_ProcessAgents, comma-separated ("100" when unset, as
// make bench runs it; make bench-procs runs 100 and 500, which on 2 cores
// take about two minutes and 4 GiB).
const procAgentsEnv = "SWITCHYARD_PROCESS_AGENTS"

// procNiceEnv names the environment variable with the niceness the
// benchmark's agents and HAProxy run at above the bus and the coordinators
// (10 when unset). In production each node is a host of its own and takes
// no CPU from them; on one machine, hundreds of nodes at the same priority
// starve the NATS server (handshakes and JetStream reads time out). 0 puts
// everything on an equal footing, as the in-process benchmark does.
const procNiceEnv = "SWITCHYARD_PROCESS_NICE"

func procNice(b *testing.B) int {
	spec := os.Getenv(procNiceEnv)
	if spec == "" {
		return 10
	}
	n, err := strconv.Atoi(spec)
	if err != nil || n < 0 || n > 19 {
		b.Fatalf("%s=%q: want a niceness 0..19", procNiceEnv, spec)
	}
	return n
}

func procAgentCounts(b *testing.B) []int {
	spec := os.Getenv(procAgentsEnv)
	if spec == "" {
		return []int{100}
	}
	var out []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("%s=%q: %q is not a positive agent count", procAgentsEnv, spec, f)
		}
		out = append(out, n)
	}
	return out
}

// BenchmarkScale_ProcessAgents runs, for each agent count, the in-process
// benchmark (one connection and identity per agent on the secured bus, the
// recording driver) and then the same fleet as real processes: 3
// coordinators, every agent its own process with its own HAProxy, the
// nodes SWITCHYARD_PROCESS_NICE steps nicer than the bus and the
// coordinators. Both
// measure decision → every agent applied over 10 decisions (5 blue-green
// switches, 5 aborts) beside raw NATS fan-out in the same run; the process
// run adds the per-process costs from /proc, logged as a table.
func BenchmarkScale_ProcessAgents(b *testing.B) {
	nice := procNice(b)
	for _, n := range procAgentCounts(b) {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			b.Run("in-process", func(b *testing.B) {
				for range b.N {
					benchFleet(b, benchRun(n, 1, securedBus, ownKeyring)).report(b)
				}
			})
			b.Run("processes", func(b *testing.B) {
				for range b.N {
					fig := runProcessFleet(b, procRun{agents: n, coordinators: 3, rounds: 5, idle: 10 * time.Second, raw: true,
						nice: nice, timeout: 10*time.Minute + time.Duration(n)*time.Second})
					fig.report(b)
				}
			})
		})
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func mib(v int64) float64 { return float64(v) / (1 << 20) }

// report turns the figures into benchmark metrics and logs the table of
// process costs.
func (f *procFigures) report(b *testing.B) {
	metric := func(ds []time.Duration, prefix string) (p50, p99 time.Duration) {
		p50, p99 = quantile(ds, 0.5), quantile(ds, 0.99)
		b.ReportMetric(ms(p50), prefix+"_p50_ms")
		b.ReportMetric(ms(p99), prefix+"_p99_ms")
		return p50, p99
	}
	metric(f.applied, "agent_apply")
	a50, a99 := metric(f.allApplied, "all_applied")
	metric(f.allSeen, "all_status_seen")
	d50, d99 := metric(f.deliver, "stage_deliver")
	v50, v99 := metric(f.verify, "stage_verify")
	p50, p99 := metric(f.apply, "stage_apply")
	metric(f.rawConn, "nats_conns_fanout")
	c50, c99 := metric(f.rawConnAll, "nats_conns_all")
	metric(f.rawProc, "nats_procs_fanout")
	r50, r99 := metric(f.rawProcAll, "nats_procs_all")
	agentRSS := median(f.agentBurst, func(u procUse) float64 { return mib(u.rss) })
	b.ReportMetric(agentRSS, "agent_rss_MiB")
	b.ReportMetric(median(f.agentIdle, func(u procUse) float64 { return ms(u.cpu) }), "agent_idle_cpu_ms/s")

	var t strings.Builder
	fmt.Fprintf(&t, "%d agent processes (niceness +%d), 3 coordinators; decision → all applied p50/p99 %.1f/%.1f ms; raw NATS all delivered to %d connections %.2f/%.2f ms, to %d processes %.2f/%.2f ms\n",
		f.agents, f.nice, ms(a50), ms(a99), f.agents, ms(c50), ms(c99), f.agents, ms(r50), ms(r99))
	fmt.Fprintf(&t, "stages p50/p99 ms: decision → delivered to the agent %.1f/%.1f, signature checked %.1f/%.1f, applied to HAProxy %.1f/%.1f\n",
		ms(d50), ms(d99), ms(v50), ms(v99), ms(p50), ms(p99))
	fmt.Fprintf(&t, "| process (median / max; decisions window %.1f s) | n | CPU idle ms/s | CPU decisions ms/s | RSS MiB | PSS MiB |\n|---|---|---|---|---|---|\n", f.burstWall.Seconds())
	row := func(name string, idle, burst []procUse) {
		cpuI := func(u procUse) float64 { return ms(u.cpu) }
		rss := func(u procUse) float64 { return mib(u.rss) }
		pss := func(u procUse) float64 { return mib(u.pss) }
		fmt.Fprintf(&t, "| %s | %d | %.2f / %.2f | %.2f / %.2f | %.1f / %.1f | %.1f / %.1f |\n", name, len(burst),
			median(idle, cpuI), maxOf(idle, cpuI), median(burst, cpuI), maxOf(burst, cpuI),
			median(burst, rss), maxOf(burst, rss), median(burst, pss), maxOf(burst, pss))
	}
	row("agent", f.agentIdle, f.agentBurst)
	row("haproxy", f.haproxyIdle, f.haproxyBurst)
	row("coordinator", f.coordIdle, f.coordBurst)
	row("bench (NATS server + driver)", []procUse{f.selfIdle}, []procUse{f.selfBurst})
	total := func(us []procUse) (cpu time.Duration, pss int64) {
		for _, u := range us {
			cpu += u.cpu
			pss += u.pss
		}
		return cpu, pss
	}
	ai, _ := total(f.agentIdle)
	ab, ap := total(f.agentBurst)
	fmt.Fprintf(&t, "all agents together: CPU idle %.2f cores, decisions %.2f cores; PSS %.0f MiB\n", ai.Seconds(), ab.Seconds(), mib(ap))
	b.Log(strings.TrimSpace(t.String()))
}

func median(us []procUse, v func(procUse) float64) float64 {
	if len(us) == 0 {
		return 0
	}
	vs := make([]float64, len(us))
	for i, u := range us {
		vs[i] = v(u)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}

func maxOf(us []procUse, v func(procUse) float64) float64 {
	m := 0.0
	for _, u := range us {
		m = max(m, v(u))
	}
	return m
}

// quantile is the q-quantile of ds (nearest rank), 0 for none.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// TestScale_ProcessAgentsApplyEveryGenerationOnce is the short version of
// BenchmarkScale_ProcessAgents: eight agent processes (one start round of
// the fleet's workers) with their HAProxy
// follow a blue-green switch and its abort; every agent applies each
// generation exactly once, every HAProxy serves what was decided, and /proc
// gave every process's memory and CPU.
func TestScale_ProcessAgentsApplyEveryGenerationOnce(t *testing.T) {
	const agents = 8
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	fig := runProcessFleet(t, procRun{agents: agents, coordinators: 1, rounds: 1, idle: time.Second, timeout: 3 * time.Minute,
		check: func(decision int, fleet *harness.ProcessFleet) {
			want := []string{harness.Green, harness.Blue}[decision]
			for _, n := range fleet.Nodes {
				resp, err := client.Get("http://" + n.HAProxy.FrontendAddr() + "/")
				if err != nil {
					t.Fatalf("%s: %v", n.ID, err)
				}
				resp.Body.Close()
				if got := resp.Header.Get("X-Backend"); resp.StatusCode != http.StatusOK || got != want {
					t.Errorf("after decision %d, %s's HAProxy answered %s from %q, want 200 from %s", decision, n.ID, resp.Status, got, want)
				}
			}
		}})
	if len(fig.generations) != 2 || fig.generations[0] >= fig.generations[1] {
		t.Errorf("decisions produced generations %v, want two, rising", fig.generations)
	}
	if len(fig.applied) != agents*len(fig.generations) || len(fig.allApplied) != len(fig.generations) {
		t.Errorf("%d applied stamps and %d fleet-wide figures for %d agents and %d decisions", len(fig.applied), len(fig.allApplied), agents, len(fig.generations))
	}
	// Every status of an apply carries the agent's stage stamps.
	if len(fig.deliver) != len(fig.applied) || len(fig.verify) != len(fig.applied) || len(fig.apply) != len(fig.applied) {
		t.Errorf("stage stamps: %d delivered, %d verified, %d applied of %d applies", len(fig.deliver), len(fig.verify), len(fig.apply), len(fig.applied))
	}
	for i, gen := range fig.generations {
		for node, n := range fig.applies[i] {
			if n != 1 {
				t.Errorf("%s applied generation %d %d times, want once", node, gen, n)
			}
		}
		if len(fig.applies[i]) != agents {
			t.Errorf("generation %d: applies of %d nodes counted, want %d", gen, len(fig.applies[i]), agents)
		}
	}
	for kind, us := range map[string][]procUse{"agent": fig.agentBurst, "haproxy": fig.haproxyBurst, "coordinator": fig.coordBurst} {
		for i, u := range us {
			if u.rss <= 0 || u.pss <= 0 || u.pss > u.rss {
				t.Errorf("%s %d: RSS %d, PSS %d bytes; want both read, PSS ≤ RSS", kind, i, u.rss, u.pss)
			}
		}
	}
	if len(fig.agentBurst) != agents || len(fig.haproxyBurst) != agents {
		t.Errorf("/proc read for %d agents and %d HAProxies, want %d each", len(fig.agentBurst), len(fig.haproxyBurst), agents)
	}
	var agentCPU time.Duration
	for _, u := range fig.agentBurst {
		agentCPU += u.cpu
	}
	if agentCPU <= 0 {
		t.Errorf("the agents used no CPU while applying two decisions, by /proc; the CPU reading is broken")
	}
}

// loadAverage is the machine's 1/5/15-minute load average, for the record:
// every figure of this benchmark shares the machine with whatever else runs.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
