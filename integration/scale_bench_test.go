package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/agent"
	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/harness"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The fleet-scale benchmark: a decision committed by the leader, to every
// in-process agent having applied it through its (recording) driver, beside
// the raw NATS fan-out of one message to the same number of subscribers on
// the same number of connections, measured in the same run.

// recorder is a driver that remembers when each weight change arrived.
type recorder struct {
	mu      sync.Mutex
	weights map[string]uint32
	applied chan time.Time
}

var _ driver.Driver = (*recorder)(nil)

func (r *recorder) Apply(_ context.Context, w map[string]uint32) error {
	r.mu.Lock()
	maps.Copy(r.weights, w)
	r.mu.Unlock()
	select {
	case r.applied <- time.Now():
	default:
	}
	return nil
}

func (r *recorder) Weights(context.Context) (map[string]uint32, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.weights), nil
}

func (r *recorder) Close() error { return nil }

// memStore keeps an agent's applied state in memory, encoded as the
// agent's bbolt store keeps it (the generated encoder, without the disk).
type memStore struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memStore) Load(svc string) (*sv1.AppliedState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.m[svc]
	if !ok {
		return nil, nil
	}
	st := &sv1.AppliedState{}
	return st, proto.Unmarshal(b, st)
}

func (s *memStore) Save(st *sv1.AppliedState) error {
	b, err := st.MarshalVT()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[st.GetService()] = b
	return nil
}

func (s *memStore) Close() error { return nil }

func quantiles(ds []time.Duration) (p50, p99, worst time.Duration) {
	slices.Sort(ds)
	at := func(q float64) time.Duration { return ds[min(len(ds)-1, int(q*float64(len(ds))))] }
	return at(0.5), at(0.99), ds[len(ds)-1]
}

// busSecurity is how the benchmark's NATS server runs.
type busSecurity int

const (
	plainBus   busSecurity = iota
	tlsBus                 // TLS, no authorization
	securedBus             // TLS and operator mode, an identity per connection
)

// keyringUse says whether the in-process agents verify each document
// themselves, as separate nodes would, or share one keyring that verifies
// it once for all of them.
type keyringUse int

const (
	ownKeyring keyringUse = iota
	sharedKeyring
)

// scaleStatusWindow is the status window of the benchmark's agents: the
// one docs/agent.md suggests for fleets of thousands of nodes (agents run
// without one by default).
const scaleStatusWindow = 200 * time.Millisecond

// idleSettle and idleWindow: the idle fleet is measured over one heartbeat
// of its agents (5 s), after one heartbeat of settling.
const (
	idleSettle = 5 * time.Second
	idleWindow = 5 * time.Second
)

// fleetRun is one run of the fleet-scale benchmark: agents in-process
// agents, perConn to a connection (on a secured bus perConn must be 1: an
// agent's creds allow its own subjects only), rollouts blue-green switches
// each followed by its abort, the idle fleet measured over window after
// settle, the whole bounded by timeout.
type fleetRun struct {
	agents, perConn int
	bus             busSecurity
	keys            keyringUse
	// natsProcess runs the NATS server as a nats-server process of its own
	// (one server, TLS and operator JWT, so bus must be securedBus) instead
	// of in this process: 10,000 agents with a connection each need 10,000
	// files here and 10,000 in the server, more than one process may open
	// on this machine (20,000). The server's CPU is counted with this
	// process's in every CPU figure.
	natsProcess    bool
	rollouts       int
	settle, window time.Duration
	timeout        time.Duration
}

// benchRun is the run of make bench: five switches and five aborts, the
// idle fleet over one heartbeat after one heartbeat of settling.
func benchRun(n, perConn int, mode busSecurity, keys keyringUse) fleetRun {
	return fleetRun{agents: n, perConn: perConn, bus: mode, keys: keys, rollouts: 5,
		settle: idleSettle, window: idleWindow, timeout: 10 * time.Minute}
}

// figures are what a run measured, by benchmark metric name (the unit is
// in the name).
type figures map[string]float64

// require fails tb for every figure of names that is missing, negative or
// not a number.
func (f figures) require(tb testing.TB, names ...string) {
	tb.Helper()
	for _, k := range names {
		if v, ok := f[k]; !ok || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			tb.Errorf("figure %s: %v (reported: %v)", k, v, ok)
		}
	}
}

func (f figures) report(b *testing.B) {
	for _, k := range slices.Sorted(maps.Keys(f)) {
		b.ReportMetric(f[k], k)
	}
}

// benchFleet runs the fleet and returns what it measured.
func benchFleet(b testing.TB, run fleetRun) figures {
	n, perConn, mode, keys := run.agents, run.perConn, run.bus, run.keys
	fig := figures{}
	ctx, cancel := context.WithTimeout(context.Background(), run.timeout)
	defer cancel()
	if mode == securedBus && perConn != 1 {
		b.Fatal("a secured bus needs one connection per agent")
	}
	var nb harness.Bus
	// cpuNow is the CPU used so far by this process and, when it runs
	// apart, the NATS server.
	cpuNow := processCPU
	if run.natsProcess {
		if mode != securedBus {
			b.Fatal("a NATS server process runs secured: TLS and operator JWT")
		}
		nc, err := harness.StartNATSCluster(ctx, harness.NATSClusterOptions{Binary: natsServerBin.get(b), Dir: b.TempDir(), Servers: 1})
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		nb = nc.Bus()
		pid := nc.Servers[0].Pid()
		cpuNow = func() time.Duration {
			server, err := harness.ProcCPU(pid)
			if err != nil {
				b.Fatalf("NATS server CPU: %v", err)
			}
			return processCPU() + server
		}
	} else {
		opts := bus.EmbeddedOptions{StoreDir: b.TempDir()}
		var sb *harness.SecuredBus
		if mode != plainBus {
			var err error
			if sb, err = harness.NewSecuredBus(b.TempDir()); err != nil {
				b.Fatal(err)
			}
			opts = sb.EmbeddedOptions(opts.StoreDir)
			if mode == tlsBus {
				opts.AuthConfig = ""
			}
		}
		ns, err := bus.RunEmbedded(opts)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
		nb = harness.Bus{URL: ns.ClientURL()}
		if sb != nil {
			nb = sb.Bus(nb.URL)
		}
		if mode == tlsBus {
			nb.AuthDir = ""
		}
	}
	url := nb.URL
	security := func(role bus.Role, name string) bus.Security {
		sec, err := nb.Security(role, name)
		if err != nil {
			b.Fatal(err)
		}
		return sec
	}
	dial := func(role bus.Role, name string) *nats.Conn {
		c, err := nb.Connect(role, name, nats.Timeout(30*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))

	// Every document is signed by the coordinator and verified by every
	// agent, as in production.
	_, signingKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	trust, err := bus.NewKeyring(signingKey.Public().(ed25519.PublicKey))
	if err != nil {
		b.Fatal(err)
	}
	agentTrust, err := bus.NewKeyring(signingKey.Public().(ed25519.PublicKey))
	if err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	srv, err := coordinator.New(coordinator.Config{NodeID: "c1", DataDir: b.TempDir(), RaftAddr: "127.0.0.1:0",
		NATSURL: url, NATS: security(bus.RoleCoordinator, "c1"),
		BootstrapExpect: 1, Logger: quiet, Registerer: reg, Gatherer: reg, StaleAfter: time.Minute,
		Signing: coordinator.Signing{Key: signingKey}})
	if err != nil {
		b.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	cdone := make(chan struct{})
	go func() { defer close(cdone); _ = srv.Run(cctx) }()
	defer func() { ccancel(); <-cdone }()

	// Agents share connections as the raw fan-out below shares its
	// subscribers: with perConn 10, 10,000 agents on 1,000 connections.
	var conns []*nats.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	recs := make([]*recorder, n)
	actx, acancel := context.WithCancel(ctx)
	var awg sync.WaitGroup
	defer func() { acancel(); awg.Wait() }()
	// Agents start a few at a time: each waits for its connection (a TLS
	// handshake and, on a secured bus, its identity checked) and its first
	// read of the documents. One after another, a run of 1,000 agents on
	// connections of their own took two and a half minutes; 32 at a time,
	// about 30 seconds in all. The fleet's start is not measured.
	const startingAtOnce = 32
	var starting []<-chan struct{}
	ready := func(ch <-chan struct{}) {
		select {
		case <-ch:
		case <-ctx.Done():
			b.Fatal("agent not ready")
		}
	}
	for i := range n {
		rec := &recorder{weights: map[string]uint32{"blue": 100, "green": 0}, applied: make(chan time.Time, 4)}
		recs[i] = rec
		node := fmt.Sprintf("edge-%05d", i)
		var shared *nats.Conn
		if perConn > 1 {
			if i%perConn == 0 {
				conns = append(conns, dial(bus.RoleCoordinator, "agents"))
			}
			shared = conns[len(conns)-1]
		}
		// Telemetry and proxy read-backs every 5 s: the coordinator, the
		// NATS server and every agent share this machine's cores, and
		// 10,000 reports (or 40,000 read-backs at the default 250 ms) a
		// second would measure the machine, not the fan-out.
		cfg := &agent.Config{
			Node: node, NATS: url, StateDir: b.TempDir(), Heartbeat: 5 * time.Second, Resync: time.Minute,
			// The window a fleet of thousands sets (docs/agent.md).
			StatusWindow:      scaleStatusWindow,
			TelemetryInterval: 5 * time.Second, ObserveInterval: 5 * time.Second,
			Trust: agent.TrustConfig{Keys: []string{bus.FormatPublicKey(signingKey.Public().(ed25519.PublicKey))}},
			Services: map[string]agent.ServiceConfig{"web": {Proxy: &haproxy.Section{Socket: "/unused", Backend: "web",
				Servers: map[string]string{"blue": "blue", "green": "green"}}}},
		}
		if shared == nil {
			cfg.NATSClient = security(bus.RoleAgent, node)
		}
		opts := agent.Options{Logger: quiet, StateStore: &memStore{m: map[string][]byte{}}, Conn: shared,
			DriverFactory: func(string, agent.ServiceConfig) (driver.Driver, error) { return rec, nil }}
		if keys == sharedKeyring {
			opts.Keyring = agentTrust
		}
		a, err := agent.New(cfg, opts)
		if err != nil {
			b.Fatal(err)
		}
		awg.Add(1)
		go func() { defer awg.Done(); _ = a.Run(actx) }()
		if starting = append(starting, a.Ready()); len(starting) == startingAtOnce {
			ready(starting[0])
			starting = starting[1:]
		}
	}
	for _, ch := range starting {
		ready(ch)
	}
	nc := dial(bus.RoleCoordinator, "bench")
	defer nc.Close()
	// Every agent heard of by the coordinator before the first decision.
	for {
		var fleet sv1.FleetAnswer
		if err := bus.Query(ctx, nc, bus.QueryFleet, &sv1.FleetQuery{Service: "web"}, &fleet); err == nil && len(fleet.GetNodes()) == n {
			break
		}
		select {
		case <-ctx.Done():
			b.Fatal("agents not seen by the coordinator")
		case <-time.After(100 * time.Millisecond):
		}
	}

	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	kv, err := bus.EnsureDesiredBucket(ctx, js, 1)
	if err != nil {
		b.Fatal(err)
	}
	// The agents' stage stamps come in their statuses; the benchmark hears
	// them as a coordinator does, on a connection of its own.
	sc := dial(bus.RoleCoordinator, "bench-stages")
	defer sc.Close()
	timings := newStageTimings()
	if _, err := sc.Subscribe(bus.StatusAll(), timings.onStatus); err != nil {
		b.Fatal(err)
	}
	if err := sc.Flush(); err != nil {
		b.Fatal(err)
	}
	stages := map[string][]time.Duration{}
	// The fleet's idle cost (heartbeats, telemetry, read-backs), to tell it
	// from a decision's: over one heartbeat, once the start-up's first
	// statuses and reports have passed (a heartbeat after the last agent
	// was heard of), and profiled apart from the decisions.
	profileName := strings.NewReplacer("/", "_", "=", "-").Replace(b.Name())
	time.Sleep(run.settle)
	stopIdleProfile := startProfile(b, profileName+"_idle")
	idle0, idleStart := cpuNow(), time.Now()
	time.Sleep(run.window)
	idleCPU := float64((cpuNow() - idle0).Nanoseconds()) / time.Since(idleStart).Seconds()
	stopIdleProfile()
	stopProfile := startProfile(b, profileName)
	defer stopProfile()
	var all, toAll []time.Duration
	// CPU of the whole process per decision: to every agent applied, and to
	// every agent's status heard (less the benchmark's decoding of them).
	var cpuApplied, cpuReported time.Duration
	var allocApplied, gcDuring uint64
	decide := func(in *sv1.Intent) {
		for _, r := range recs {
			for len(r.applied) > 0 {
				<-r.applied
			}
		}
		cpu0, alloc0, gc0 := cpuNow(), heapAllocated(), gcCycles()
		timings.mu.Lock()
		decode0 := timings.decodeCPU
		timings.mu.Unlock()
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		res, err := sendIntent(rctx, nc, bus.IntentKindRollout, in)
		rcancel()
		if err != nil || !res.GetAccepted() {
			b.Fatalf("intent %s: %v %v", in.GetId(), res, err)
		}
		// The decision's time is the leader's stamp on the committed entry,
		// carried in the desired state it produced (same process clock).
		// The publisher writes right after the commit; poll until it has.
		ds := &sv1.DesiredState{}
		for ds.GetGeneration() < res.GetIndex() {
			entry, err := kv.Get(ctx, "web")
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				b.Fatal(err)
			}
			if ds, _, err = trust.OpenDesired(entry.Value(), "web", time.Now()); err != nil {
				b.Fatal(err)
			}
			if ds.GetGeneration() < res.GetIndex() {
				time.Sleep(time.Millisecond)
			}
		}
		decided := ds.GetIssuedAt().AsTime()
		var last time.Duration
		for _, r := range recs {
			select {
			case at := <-r.applied:
				d := max(at.Sub(decided), 0)
				all = append(all, d)
				last = max(last, d)
			case <-ctx.Done():
				b.Fatal("an agent never applied the decision")
			}
		}
		toAll = append(toAll, last)
		cpuApplied += cpuNow() - cpu0
		allocApplied += heapAllocated() - alloc0
		gcs := gcCycles() - gc0
		gcDuring += gcs
		// What every driver holds now is what the decision says: the
		// switch puts every node on green, the abort back on blue.
		green := in.GetApplyRollout() != nil
		for i, r := range recs {
			r.mu.Lock()
			w := maps.Clone(r.weights)
			r.mu.Unlock()
			if (green && (w["green"] != 100 || w["blue"] != 0)) || (!green && (w["blue"] != 100 || w["green"] != 0)) {
				b.Fatalf("%s: edge-%05d's proxy holds %v", in.GetId(), i, w)
			}
		}
		// The agents may have the document before the put's
		// acknowledgement reaches the coordinator.
		pub, ok := srv.DecisionTiming("web")
		for !ok || pub.Fence.Generation < ds.GetGeneration() {
			select {
			case <-ctx.Done():
				b.Fatalf("the coordinator timed no write of generation %d (%+v)", ds.GetGeneration(), pub)
			case <-time.After(time.Millisecond):
			}
			pub, ok = srv.DecisionTiming("web")
		}
		// Each decision's own figures: a p99 over ten decisions is their
		// slowest, and this says whether it was one of them or all,
		// whether a collection of the heap every agent here shares (a
		// real node collects its own) ran meanwhile, and which stage
		// took the time. One line each: a benchmark's output keeps ten.
		b.Logf("%s: generation %d on all %d agents %v after the decision; GC cycles meanwhile: %d; slowest of each stage, ms: %s",
			in.GetId(), ds.GetGeneration(), n, last.Round(time.Millisecond), gcs, timings.collect(ctx, b, pub, n, stages))
		timings.mu.Lock()
		cpuReported += cpuNow() - cpu0 - (timings.decodeCPU - decode0)
		timings.mu.Unlock()
	}
	waitPhase := func(name string, phase sv1.RolloutPhase) {
		for {
			var ans sv1.RolloutsAnswer
			if err := bus.Query(ctx, nc, bus.QueryRollouts, &sv1.RolloutsQuery{Rollout: name, Summary: true}, &ans); err == nil && ans.GetRollouts()[0].GetRollout().GetPhase() == phase {
				return
			}
			select {
			case <-ctx.Done():
				b.Fatalf("rollout %s never reached %v", name, phase)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	for i := range run.rollouts {
		name := fmt.Sprintf("web-%d", i)
		decide(&sv1.Intent{Id: name + "-apply", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
			Name: name, Service: "web", From: "blue", To: "green",
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
		}}}})
		decide(&sv1.Intent{Id: name + "-abort", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: name}}})
		waitPhase(name, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)
	}
	stopProfile()
	p50, p99, _ := quantiles(all)
	a50, a99, _ := quantiles(toAll)
	stageFigures(fig, stages)
	fig["agent_apply_p50_ms"] = ms(p50)
	fig["agent_apply_p99_ms"] = ms(p99)
	fig["all_applied_p50_ms"] = ms(a50)
	fig["all_applied_p99_ms"] = ms(a99)
	perAgent := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 / float64(n*len(toAll)) }
	fig["cpu_to_applied_us/agent"] = perAgent(cpuApplied)
	fig["cpu_to_reported_us/agent"] = perAgent(cpuReported)
	fig["cpu_idle_us/agent/s"] = idleCPU / 1000 / float64(n)
	fig["alloc_to_applied_KB/agent"] = float64(allocApplied) / 1024 / float64(n*len(toAll))
	fig["gc_cycles_in_decisions"] = float64(gcDuring)

	// Raw fan-out: one publish to n core subscribers, perConn to a
	// connection of the coordinator role, on the same server, on a subject
	// that role may use both ways. With the NATS server apart, every agent
	// holds a connection here and the subscribers would need as many
	// again, more than this process may open: the fleet stops first, and
	// the raw fan-out runs without the idle fleet's load beside it (the
	// decisions had it).
	if run.natsProcess {
		acancel()
		awg.Wait()
	}
	raw, rawAll, rawCPU := rawFanout(b, ctx, func() *nats.Conn { return dial(bus.RoleCoordinator, "bench") }, nc, n, perConn, run.rollouts*2, cpuNow)
	r50, r99, _ := quantiles(raw)
	fig["nats_cpu_us/agent"] = perAgent(rawCPU)
	ra50, ra99, _ := quantiles(rawAll)
	fig["nats_fanout_p50_ms"] = ms(r50)
	fig["nats_fanout_p99_ms"] = ms(r99)
	fig["nats_all_p50_ms"] = ms(ra50)
	fig["nats_all_p99_ms"] = ms(ra99)
	return fig
}

// gcCycles is how many garbage collections this process has completed.
func gcCycles() uint64 {
	sample := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// BenchmarkScale_DecisionToApplied runs each fleet twice: every agent
// verifying each document itself (keyring=own: n signature checks on this
// host's cores, where a real fleet does one per node on its own), and the
// agents sharing one keyring that verifies a document once for all
// (keyring=shared: what is left is the path's own cost).
func BenchmarkScale_DecisionToApplied(b *testing.B) {
	for _, n := range []int{100, 1000, 10000} {
		for _, keys := range []struct {
			name string
			use  keyringUse
		}{{"own", ownKeyring}, {"shared", sharedKeyring}} {
			b.Run(fmt.Sprintf("agents=%d/keyring=%s", n, keys.name), func(b *testing.B) {
				for range b.N {
					benchFleet(b, benchRun(n, 10, plainBus, keys.use)).report(b)
				}
			})
		}
	}
}

// BenchmarkScale_DecisionToAppliedSecured compares, in one run, 1,000
// agents on a plain bus with the same on a secured one: ten agents to a
// connection (the shape of BenchmarkScale_DecisionToApplied) with TLS alone,
// since no identity may speak for ten nodes, and one connection per agent
// with TLS and an agent identity each, as on a real fleet.
func BenchmarkScale_DecisionToAppliedSecured(b *testing.B) {
	for _, v := range []struct {
		name    string
		perConn int
		bus     busSecurity
	}{
		{"conns=shared/bus=plain", 10, plainBus},
		{"conns=shared/bus=tls", 10, tlsBus},
		{"conns=per-agent/bus=plain", 1, plainBus},
		{"conns=per-agent/bus=tls+auth", 1, securedBus},
	} {
		b.Run(v.name, func(b *testing.B) {
			for range b.N {
				benchFleet(b, benchRun(1000, v.perConn, v.bus, ownKeyring)).report(b)
			}
		})
	}
}

// BenchmarkScale_DecisionToAppliedOwnConnections is the fleet as it is
// deployed: every agent on a connection of its own with an identity of its
// own, TLS, the NATS server a nats-server process apart, beside the raw
// fan-out to as many connections of their own on that server: 1,000 agents
// each checking signatures itself and with one shared keyring (see
// BenchmarkScale_DecisionToApplied).
//
// It stops at 1,000: 10,000 agents on TLS connections of their own keep
// this machine's two cores busy while idle and do not start within the
// run's bound (docs/operations.md, Fleet scale, has the tries);
// BenchmarkScale_DecisionToApplied measures 10,000, ten to a connection.
func BenchmarkScale_DecisionToAppliedOwnConnections(b *testing.B) {
	const agents = 1000
	for _, keys := range []struct {
		name string
		use  keyringUse
	}{{"own", ownKeyring}, {"shared", sharedKeyring}} {
		b.Run(fmt.Sprintf("agents=%d/keyring=%s", agents, keys.name), func(b *testing.B) {
			for range b.N {
				run := benchRun(agents, 1, securedBus, keys.use)
				run.natsProcess = true
				benchFleet(b, run).report(b)
			}
		})
	}
}

// rawFanout publishes msgs messages, one at a time, from pub to n core
// subscribers, perConn to a connection made by dial, and returns each
// subscriber's delay, per message the slowest one's, and the CPU this
// process spent from each publish to its last delivery (the server's, the
// client's and the subscribers', as cpu_to_applied_us/agent counts the
// decision path's; the idle fleet still running beside it included), read
// with cpuNow.
func rawFanout(tb testing.TB, ctx context.Context, dial func() *nats.Conn, pub *nats.Conn, n, perConn, msgs int, cpuNow func() time.Duration) (each, all []time.Duration, cpu time.Duration) {
	subject := bus.QuerySubject("bench-fanout")
	got := make(chan time.Duration, n)
	var c *nats.Conn
	for i := range n {
		if i%perConn == 0 {
			c = dial()
			defer c.Close()
		}
		if _, err := c.Subscribe(subject, func(m *nats.Msg) {
			var sent time.Time
			_ = sent.UnmarshalBinary(m.Data)
			got <- time.Since(sent)
		}); err != nil {
			tb.Fatal(err)
		}
		if i%perConn == perConn-1 || i == n-1 {
			if err := c.Flush(); err != nil {
				tb.Fatalf("subscriber %d: %v", i, err)
			}
		}
	}
	for range msgs {
		cpu0 := cpuNow()
		now, _ := time.Now().MarshalBinary()
		if err := pub.Publish(subject, now); err != nil {
			tb.Fatal(err)
		}
		var last time.Duration
		for range n {
			select {
			case d := <-got:
				each = append(each, d)
				last = max(last, d)
			case <-ctx.Done():
				tb.Fatal("raw fan-out lost a message")
			}
		}
		all = append(all, last)
		cpu += cpuNow() - cpu0
	}
	return each, all, cpu
}

// TestScale_FleetBenchmarkRunsShort is make bench's fleet benchmark on a
// fleet small enough for every CI run: on the plain bus with agents
// sharing connections, and on the secured bus with an identity each. It
// fails where the benchmark would (an agent that never applies, a stage
// with no stamps, a proxy left on the wrong backend) and checks that every
// figure the benchmark reports is there and possible.
func TestScale_FleetBenchmarkRunsShort(t *testing.T) {
	for _, c := range []struct {
		name string
		run  fleetRun
	}{
		{"bus=plain/conns=shared", fleetRun{agents: 30, perConn: 10, bus: plainBus, keys: ownKeyring}},
		{"bus=tls+auth/conns=per-agent", fleetRun{agents: 8, perConn: 1, bus: securedBus, keys: sharedKeyring}},
		{"bus=tls+auth/conns=per-agent/nats=process", fleetRun{agents: 8, perConn: 1, bus: securedBus, keys: ownKeyring, natsProcess: true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			run := c.run
			run.rollouts, run.settle, run.window, run.timeout = 1, 500*time.Millisecond, time.Second, 3*time.Minute
			fig := benchFleet(t, run)
			want := []string{"agent_apply_p50_ms", "agent_apply_p99_ms", "all_applied_p50_ms", "all_applied_p99_ms",
				"cpu_to_applied_us/agent", "cpu_to_reported_us/agent", "cpu_idle_us/agent/s", "alloc_to_applied_KB/agent",
				"gc_cycles_in_decisions", "nats_fanout_p50_ms", "nats_fanout_p99_ms", "nats_all_p50_ms", "nats_all_p99_ms", "nats_cpu_us/agent"}
			for _, st := range stageOrder {
				want = append(want, "stage_"+st+"_p50_ms", "stage_"+st+"_p99_ms")
			}
			fig.require(t, want...)
			for k := range fig {
				if !slices.Contains(want, k) {
					t.Errorf("figure %s is not in this test's list", k)
				}
			}
			for _, pair := range [][2]string{{"all_applied_p50_ms", "all_applied_p99_ms"}, {"nats_all_p50_ms", "nats_all_p99_ms"}, {"agent_apply_p50_ms", "agent_apply_p99_ms"}} {
				if fig[pair[0]] > fig[pair[1]] {
					t.Errorf("%s %v above %s %v", pair[0], fig[pair[0]], pair[1], fig[pair[1]])
				}
			}
			// Every agent applied after the decision and the slowest no
			// sooner than the median; the raw fan-out took some time too.
			if fig["all_applied_p50_ms"] < fig["agent_apply_p50_ms"] || fig["nats_all_p50_ms"] <= 0 || fig["cpu_to_applied_us/agent"] <= 0 {
				t.Errorf("figures out of order: %v", fig)
			}
		})
	}
}
