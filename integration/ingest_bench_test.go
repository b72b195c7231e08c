package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	"github.com/switchyard/switchyard/integration/reports"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The telemetry ingest benchmarks: one `switchyard coordinator` process (so
// its CPU and RSS are its own, read from /proc) on an embedded NATS server
// with auth and TLS, fed by load generators in the benchmark process that
// publish pre-encoded health reports of many simulated nodes, each node one
// report a second as agents send them. A subscriber that only counts takes
// the same messages: the raw NATS rate of the run (beside the coordinator,
// or after it, on its own: see BenchmarkIngest_ReportsPerSecond).

// procStat is a process's CPU time and resident memory from /proc.
type procStat struct {
	cpu time.Duration
	rss int64 // bytes
}

func readProc(pid int) (procStat, error) {
	var ps procStat
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, err
	}
	// Fields after the command (which may hold spaces) start at ")".
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	if len(f) < 13 {
		return ps, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	ps.cpu = time.Duration(utime+stime) * (time.Second / 100) // USER_HZ is 100 on Linux
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			ps.rss = kb << 10
		}
	}
	return ps, nil
}

// reportLoad publishes health reports for simulated nodes: every node one
// report per wall-clock second, spread over the second.
type reportLoad struct {
	published atomic.Int64
	// bodies are report bodies without node and windows, shared by nodes.
	bodies [][]byte
	nodes  []string
	// subjects are the nodes' own telemetry subjects.
	subjects []string
}

// newReportLoad encodes bodies: backends per report, each with a latency
// sketch of that many requests.
func newReportLoad(tb testing.TB, nodes, backends int, rollout *sv1.Rollout) *reportLoad {
	bodies, err := reports.Bodies("web", harness.Blue, harness.Green, rollout.GetId(), rollout.GetGeneration(), backends, 256)
	if err != nil {
		tb.Fatal(err)
	}
	l := &reportLoad{bodies: bodies}
	for i := range nodes {
		l.nodes = append(l.nodes, fmt.Sprintf("sim-%06d", i))
		l.subjects = append(l.subjects, bus.TelemetrySubject("web", l.nodes[i]))
	}
	return l
}

// run publishes until ctx ends over conns, each connection taking its share
// of the nodes; each report goes on its node's own subject, as the
// coordinator requires (the connections hold a wildcard agent identity).
func (l *reportLoad) run(ctx context.Context, conns []*nats.Conn) {
	var wg sync.WaitGroup
	for g, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			const slices = 50
			var mine []int
			for i := g; i < len(l.nodes); i += len(conns) {
				mine = append(mine, i)
			}
			tick := time.NewTicker(time.Second / slices)
			defer tick.Stop()
			buf := make([]byte, 0, 4096)
			// Slice by slice, never skipping one: generators that fall
			// behind publish less than the target rate, and say so.
			for {
				for slice := range slices {
					sec := time.Now().Unix()
					for _, i := range mine[len(mine)*slice/slices : len(mine)*(slice+1)/slices] {
						buf = reports.AppendNode(buf[:0], l.nodes[i])
						buf = append(buf, l.bodies[i%len(l.bodies)]...)
						buf = reports.AppendWindow(buf, sec)
						if err := nc.Publish(l.subjects[i], buf); err != nil {
							return
						}
						l.published.Add(1)
					}
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
				}
			}
		}()
	}
	wg.Wait()
}

// reportgenBin is the ingest benchmark's load generator.
var reportgenBin = &builtBinary{pkg: "./integration/reportgen", name: "reportgen"}

// reportGenerator is a running reportgen process.
type reportGenerator struct {
	p *harness.Process
	// reportBytes is the mean size of a report it publishes.
	reportBytes int
}

// startReportGenerator starts reportgen for nodes simulated nodes on the
// rig's bus, with the wildcard agent identity, and waits until it is
// connected.
func startReportGenerator(b testing.TB, ctx context.Context, nb harness.Bus, nodes, conns int, rollout *sv1.Rollout) *reportGenerator {
	p, err := harness.StartProcess(harness.ProcessSpec{
		Name: "reportgen", Path: reportgenBin.get(b), LogDir: b.TempDir(),
		Args: []string{"--nats", nb.URL, "--nats-creds", wildcardAgentCreds(b, nb), "--nats-ca", nb.CA,
			"--nodes", strconv.Itoa(nodes), "--conns", strconv.Itoa(conns), "--backends", "10",
			"--from", harness.Blue, "--to", harness.Green,
			"--rollout", rollout.GetId(), "--generation", strconv.FormatUint(rollout.GetGeneration(), 10)},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := p.Stop(); err != nil {
			b.Errorf("reportgen: %v", err)
		}
	})
	if _, err := p.WaitForStdoutLine(ctx, "ready"); err != nil {
		b.Fatal(err)
	}
	line, err := p.WaitForStdoutLine(ctx, "report-bytes ")
	if err != nil {
		b.Fatal(err)
	}
	size, err := strconv.Atoi(strings.TrimPrefix(line, "report-bytes "))
	if err != nil {
		b.Fatalf("reportgen: %q: %v", line, err)
	}
	return &reportGenerator{p: p, reportBytes: size}
}

// published is the generator's running total, from the last line it
// printed (every 100 ms).
func (g *reportGenerator) published(b testing.TB) int64 {
	out, err := os.ReadFile(g.p.StdoutPath())
	if err != nil {
		b.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if rest, ok := strings.CutPrefix(lines[i], "published "); ok {
			n, err := strconv.ParseInt(rest, 10, 64)
			if err != nil {
				b.Fatalf("reportgen: %q: %v", lines[i], err)
			}
			return n
		}
	}
	return 0
}

// ingestRig is a coordinator process, its bus, load connections and a
// counting subscriber.
type ingestRig struct {
	nb      harness.Bus
	c       *harness.Cluster
	nc      *nats.Conn
	load    []*nats.Conn
	counter *nats.Conn
	counted atomic.Int64
	// gen is the load generator process, when the load is not in this
	// process.
	gen *reportGenerator
}

// startIngestRig starts the bus, the coordinator and conns load
// connections; with count, the counting subscriber too (else see count).
func startIngestRig(b testing.TB, ctx context.Context, conns int, count bool) *ingestRig {
	sy, _ := binaries(b)
	nb := harnesstest.StartNATS(b)
	rig := &ingestRig{nb: nb, nc: connectNATS(b, nb)}
	// With SWITCHYARD_BENCH_PROFILES the coordinator serves its profiles
	// on loopback, and the benchmark keeps one of the measured seconds.
	rig.c = harnesstest.StartCluster(b, ctx, harness.ClusterOptions{Size: 1, Switchyard: sy, NATS: nb, Log: io.Discard, LogLevel: "warn",
		Pprof: os.Getenv(profileDirEnv) != ""})
	opts := wildcardAgent(b, nb)
	for g := range conns {
		nc, err := nats.Connect(nb.URL, append(opts, nats.Name(fmt.Sprintf("load-%d", g)))...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		rig.load = append(rig.load, nc)
	}
	counter, err := nb.Connect(bus.RoleCoordinator, "counter", nats.Name("counter"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(counter.Close)
	rig.counter = counter
	if count {
		rig.count(b)
	}
	return rig
}

// count subscribes the counting subscriber to every health report.
func (rig *ingestRig) count(b testing.TB) {
	sub, err := rig.counter.Subscribe(bus.TelemetryAll(), func(*nats.Msg) { rig.counted.Add(1) })
	if err != nil {
		b.Fatal(err)
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		b.Fatal(err)
	}
	if err := rig.counter.Flush(); err != nil {
		b.Fatal(err)
	}
}

// profileCoordinator, with SWITCHYARD_BENCH_PROFILES set, fetches a CPU
// profile of a coordinator process over d from its --pprof-addr (addr) and
// then its heap profile, into <dir>/<name>.coordinator.{cpu,heap}.pprof; wait
// waits for both. Without the variable it does nothing.
func profileCoordinator(b testing.TB, ctx context.Context, addr, name string, d time.Duration) (wait func()) {
	return profileCoordinatorTo(b, ctx, os.Getenv(profileDirEnv), addr, name, d)
}

// profileCoordinatorTo is profileCoordinator into dir ("" writes none).
func profileCoordinatorTo(b testing.TB, ctx context.Context, dir, addr, name string, d time.Duration) (wait func()) {
	if dir == "" {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatalf("profiles: %v", err)
	}
	fetch := func(path, file string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s: %s", path, resp.Status)
		}
		f, err := os.Create(filepath.Join(dir, file))
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, resp.Body); err != nil {
			_ = f.Close()
			return err
		}
		return f.Close()
	}
	errc := make(chan error, 1)
	go func() {
		if err := fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(int(d.Seconds()), 1)), name+".coordinator.cpu.pprof"); err != nil {
			errc <- err
			return
		}
		errc <- fetch("/debug/pprof/heap?gc=1", name+".coordinator.heap.pprof")
	}()
	return func() {
		if err := <-errc; err != nil {
			b.Errorf("coordinator profile: %v", err)
		}
	}
}

// wildcardAgent mints, for the benchmark only, a user of the agent role
// named "*": the role's subject template then lets it publish health
// reports and statuses for every node, so simulated nodes report on their
// own subjects from a few connections. Production identities are issued
// with real names (auth.Setup.Issue refuses "*"). The connections only
// publish, so they need no inbox.
func wildcardAgent(tb testing.TB, nb harness.Bus) []nats.Option {
	return []nats.Option{nats.UserCredentials(wildcardAgentCreds(tb, nb)), nats.RootCAs(nb.CA)}
}

// wildcardAgentCreds writes the wildcard agent's .creds file and returns its
// path.
func wildcardAgentCreds(tb testing.TB, nb harness.Bus) string {
	setup, err := auth.Load(nb.AuthDir)
	if err != nil {
		tb.Fatal(err)
	}
	seed, err := os.ReadFile(filepath.Join(nb.AuthDir, "signing", string(bus.RoleAgent)+".nk"))
	if err != nil {
		tb.Fatal(err)
	}
	signer, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
	if err != nil {
		tb.Fatal(err)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		tb.Fatal(err)
	}
	pub, err := user.PublicKey()
	if err != nil {
		tb.Fatal(err)
	}
	userSeed, err := user.Seed()
	if err != nil {
		tb.Fatal(err)
	}
	uc := jwt.NewUserClaims(pub)
	uc.Name = "*"
	uc.IssuerAccount = setup.Account()
	uc.SetScoped(true)
	uc.Tags.Add("role:" + string(bus.RoleAgent))
	token, err := uc.Encode(signer)
	if err != nil {
		tb.Fatal(err)
	}
	creds, err := jwt.FormatUserConfig(token, userSeed)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(tb.TempDir(), "wildcard-agent.creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// sample is one reading of everything the benchmark reports.
type ingestSample struct {
	at                      time.Time
	coord, self, gen        procStat
	published, counted      int64
	merged, shed, rejected  float64
	storeBytes, storeNodes  float64
	storeReports, queuedNow float64
}

func (rig *ingestRig) sample(b testing.TB, ctx context.Context, l *reportLoad) ingestSample {
	s := ingestSample{at: time.Now(), counted: rig.counted.Load()}
	if l != nil {
		s.published = l.published.Load()
	}
	var err error
	if rig.gen != nil {
		s.published = rig.gen.published(b)
		if s.gen, err = readProc(rig.gen.p.Pid()); err != nil {
			b.Fatal(err)
		}
	}
	if s.coord, err = readProc(rig.c.Coordinators[0].Pid()); err != nil {
		b.Fatal(err)
	}
	if s.self, err = readProc(os.Getpid()); err != nil {
		b.Fatal(err)
	}
	m, err := rig.c.Metrics(ctx, 0)
	if err != nil {
		b.Fatal(err)
	}
	v := func(name string, labels map[string]string) float64 {
		x, _ := harness.MetricValue(m, name, labels)
		return x
	}
	s.merged = v("switchyard_coordinator_health_reports_total", nil)
	s.rejected = v("switchyard_coordinator_health_reports_rejected_total", map[string]string{"reason": "malformed"}) +
		v("switchyard_coordinator_health_reports_rejected_total", map[string]string{"reason": "wrong_subject"})
	for _, reason := range []string{"queue_full", "waited_too_long", "slow_consumer"} {
		s.shed += v("switchyard_coordinator_reports_shed_total", map[string]string{"reason": reason})
	}
	s.storeBytes = v("switchyard_coordinator_analysis_bytes", nil)
	s.storeNodes = v("switchyard_coordinator_analysis_nodes", nil)
	s.storeReports = v("switchyard_coordinator_analysis_reports", nil)
	s.queuedNow = v("switchyard_coordinator_health_reports_queued", nil)
	return s
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkIngest_ReportsPerSecond: SWITCHYARD_INGEST_RATE simulated nodes
// (100,000 by default) each send one report a second with 10 backends and
// their latency sketches, for a canary whose analysis step the sequential
// judge is running on, to one coordinator. Measured over
// SWITCHYARD_INGEST_SECONDS (10) after 5 s of warm-up: reports/s published,
// merged by the coordinator and shed; the coordinator's CPU (cores) and
// RSS, and the analysis store's bytes per node; the benchmark process's own
// CPU (the NATS server). Then, in the same run and from the same generator,
// the coordinator stopped, the raw NATS rate: what the counting subscriber
// receives over as many seconds. The two phases take turns because they
// share two cores: a counter beside the coordinator takes the CPU of a
// second subscriber's TLS and copies from it (~0.3 cores at 100k/s), which
// is the machine's, not the coordinator's, limit.
func BenchmarkIngest_ReportsPerSecond(b *testing.B) {
	rate := envInt("SWITCHYARD_INGEST_RATE", 100_000)
	seconds := envInt("SWITCHYARD_INGEST_SECONDS", 10)
	b.ResetTimer()
	ingestReports(b, rate, time.Duration(seconds)*time.Second, 5*time.Second).report(b)
	b.ReportMetric(0, "ns/op")
}

// ingestReports runs the ingest benchmark: rate simulated nodes, the
// coordinator measured over measure after warm of full load, then the raw
// NATS rate over as long.
func ingestReports(b testing.TB, rate int, measure, warm time.Duration) figures {
	fig := figures{}
	ctx := harnesstest.Context(b, 2*measure+5*time.Minute)
	rig := startIngestRig(b, ctx, 0, false)

	// A canary held in its analysis step: the judge runs on every report.
	in := &sv1.Intent{Id: "ingest-canary", Operator: "integration-test", CreatedAt: timestamppb.Now(),
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
			Name: "ingest-canary", Service: "web", From: harness.Blue, To: harness.Green,
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
				{Kind: &sv1.Step_SetWeight{SetWeight: 50}},
				{Kind: &sv1.Step_Analysis{Analysis: &sv1.AnalysisStep{Windows: 100_000}}},
			}}}},
			Analysis: &sv1.AnalysisSpec{Horizon: durationpb.New(time.Hour)},
		}}},
	}
	res, err := sendIntent(ctx, rig.nc, bus.IntentKindRollout, in)
	if err != nil || !res.GetAccepted() {
		b.Fatalf("apply: %v %v", res, err)
	}
	var rollout *sv1.Rollout
	err = harness.Poll(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		ans, err := rig.c.Rollouts(ctx, 0, "ingest-canary")
		if err != nil {
			return err
		}
		rollout = ans.GetRollouts()[0].GetRollout()
		if rollout.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
			return fmt.Errorf("rollout %s", rollout.GetPhase())
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}

	rig.gen = startReportGenerator(b, ctx, rig.nb, rate, 4, rollout)
	time.Sleep(warm) // warm-up: the measured seconds are whole seconds of full load
	a := rig.sample(b, ctx, nil)
	profiled := profileCoordinator(b, ctx, rig.c.Coordinators[0].PprofAddr, "BenchmarkIngest_ReportsPerSecond", measure)
	time.Sleep(measure)
	z := rig.sample(b, ctx, nil)
	profiled()

	ans, err := rig.c.Rollouts(ctx, 0, "ingest-canary")
	if err != nil {
		b.Fatal(err)
	}
	view := ans.GetRollouts()[0]
	b.Logf("rollout %s at step %d: %s", view.GetRollout().GetPhase(), view.GetRollout().GetStep(), view.GetAnalysis())
	if view.GetRollout().GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		// The generator's backends do equally well: nothing to roll back.
		b.Errorf("the judge moved the canary to %s under load", view.GetRollout().GetPhase())
	}

	// Raw NATS: the coordinator stopped, the counter on, the generator
	// going on as it was.
	if err := rig.c.StopAll(); err != nil {
		b.Fatal(err)
	}
	rig.count(b)
	time.Sleep(2 * time.Second)
	ra := rig.sampleRaw(b)
	time.Sleep(measure)
	rz := rig.sampleRaw(b)
	if err := rig.gen.p.Stop(); err != nil {
		b.Fatal(err)
	}

	ingestFigures(b, fig, a, z, rate)
	d := z.at.Sub(a.at).Seconds()
	fig["generator-cores"] = (z.gen.cpu - a.gen.cpu).Seconds() / d
	fig["report-bytes"] = float64(rig.gen.reportBytes)
	rd := rz.at.Sub(ra.at).Seconds()
	fig["raw-nats/s"] = float64(rz.counted-ra.counted) / rd
	fig["raw-published/s"] = float64(rz.published-ra.published) / rd
	fig["raw-nats+counter-cores"] = (rz.self.cpu - ra.self.cpu).Seconds() / rd
	if z.merged-a.merged == 0 {
		b.Fatal("the coordinator merged no reports")
	}
	return fig
}

// sampleRaw reads what the raw phase reports: published and counted
// reports, and the benchmark process's CPU.
func (rig *ingestRig) sampleRaw(b testing.TB) ingestSample {
	s := ingestSample{at: time.Now(), counted: rig.counted.Load(), published: rig.gen.published(b)}
	var err error
	if s.self, err = readProc(os.Getpid()); err != nil {
		b.Fatal(err)
	}
	return s
}

func ingestFigures(b testing.TB, fig figures, a, z ingestSample, nodes int) {
	d := z.at.Sub(a.at).Seconds()
	per := func(x, y float64) float64 { return (y - x) / d }
	fig["published/s"] = per(float64(a.published), float64(z.published))
	if z.counted > 0 {
		fig["raw-nats/s"] = per(float64(a.counted), float64(z.counted))
	}
	fig["merged/s"] = per(a.merged, z.merged)
	fig["shed/s"] = per(a.shed, z.shed)
	fig["rejected/s"] = per(a.rejected, z.rejected)
	fig["coordinator-cores"] = (z.coord.cpu - a.coord.cpu).Seconds() / d
	fig["coordinator-rss-MB"] = float64(z.coord.rss) / (1 << 20)
	fig["bench-process-cores"] = (z.self.cpu - a.self.cpu).Seconds() / d
	if merged := z.merged - a.merged; merged > 0 {
		// CPU per report is what the machine's other load distorts least.
		fig["coordinator-cpu-µs/report"] = (z.coord.cpu - a.coord.cpu).Seconds() * 1e6 / merged
	}
	if z.storeNodes > 0 {
		fig["store-bytes/node"] = z.storeBytes / z.storeNodes
	}
	fig["rss-bytes/node"] = float64(z.coord.rss) / float64(max(nodes, 1))
	b.Logf("%d nodes: store %.0f nodes, %.0f reports waiting, %.1f MB; queue %.0f at the end", nodes, z.storeNodes, z.storeReports, z.storeBytes/(1<<20), z.queuedNow)
}

// statusLoad publishes each simulated node's AgentStatus: once at start as
// a change, then as a heartbeat every interval, spread over it.
func statusLoad(ctx context.Context, tb testing.TB, nodes []string, conns []*nats.Conn, interval time.Duration, sent *atomic.Int64) {
	encode := func(node string, heartbeat bool) []byte {
		st := &sv1.AgentStatus{Node: node, Labels: map[string]string{"site": "pop-" + node[len(node)-1:]}, At: timestamppb.Now(),
			Version: "bench", Heartbeat: heartbeat, Services: []*sv1.ServiceStatus{{Service: "web",
				Weights: map[string]uint32{harness.Blue: 100, harness.Green: 0}, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK}}}
		b, err := proto.Marshal(st)
		if err != nil {
			tb.Error(err)
		}
		return b
	}
	var wg sync.WaitGroup
	for g, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each node on its own status subject: coordinators refuse a
			// status that names another node than its subject's.
			type nodeStatus struct {
				subject string
				msg     [2][]byte
			}
			var mine []nodeStatus
			for i := g; i < len(nodes); i += len(conns) {
				mine = append(mine, nodeStatus{bus.StatusSubject(nodes[i]), [2][]byte{encode(nodes[i], false), encode(nodes[i], true)}})
			}
			const slices = 50
			tick := time.NewTicker(interval / slices)
			defer tick.Stop()
			for round := 0; ; round++ {
				for s := range slices {
					for _, m := range mine[len(mine)*s/slices : len(mine)*(s+1)/slices] {
						msg := m.msg[1]
						if round == 0 {
							msg = m.msg[0]
						}
						if err := nc.Publish(m.subject, msg); err != nil {
							return
						}
						sent.Add(1)
					}
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkIngest_IdleFleet: SWITCHYARD_IDLE_NODES (10,000) live nodes that
// only keep in touch: a status heartbeat every 5 s (the agent's default) and
// an idle health report every second (two backends, no traffic, no
// rollout), from lightweight publishers. Reported: the coordinator's CPU
// (cores) and RSS with the fleet, beside the same coordinator idle with no
// nodes just before, and the coordinator's view of the fleet.
func BenchmarkIngest_IdleFleet(b *testing.B) {
	nodes := envInt("SWITCHYARD_IDLE_NODES", 10_000)
	seconds := envInt("SWITCHYARD_INGEST_SECONDS", 20)
	b.ResetTimer()
	idleFleet(b, nodes, time.Duration(seconds)*time.Second, 5*time.Second).report(b)
	b.ReportMetric(0, "ns/op")
}

// idleFleet runs the idle-fleet benchmark: the empty coordinator measured
// over half of measure after settle, then with nodes live nodes over
// measure.
func idleFleet(b testing.TB, nodes int, measure, settle time.Duration) figures {
	fig := figures{}
	ctx := harnesstest.Context(b, measure+5*time.Minute)
	rig := startIngestRig(b, ctx, 8, true)

	time.Sleep(settle) // the empty coordinator settles
	e0 := rig.sample(b, ctx, nil)
	time.Sleep(measure / 2)
	e1 := rig.sample(b, ctx, nil)

	l := newReportLoad(b, nodes, 2, nil)
	for i := range l.bodies { // idle: no requests, empty sketches
		rep := &sv1.HealthReport{Service: "web", Backends: []*sv1.BackendHealth{
			{Backend: harness.Blue, Latency: sketch.New().ToProto()}, {Backend: harness.Green, Latency: sketch.New().ToProto()}}}
		body, err := proto.Marshal(rep)
		if err != nil {
			b.Fatal(err)
		}
		l.bodies[i] = body
	}
	lctx, stop := context.WithCancel(ctx)
	var statuses atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		l.run(lctx, rig.load)
	}()
	go func() {
		defer wg.Done()
		statusLoad(lctx, b, l.nodes, rig.load, agentHeartbeat, &statuses)
	}()
	defer func() {
		stop()
		wg.Wait()
	}()
	// Every node is live in the coordinator's view before measuring.
	err := harness.Poll(ctx, 250*time.Millisecond, func(ctx context.Context) error {
		m, err := rig.c.Metrics(ctx, 0)
		if err != nil {
			return err
		}
		if live, _ := harness.MetricValue(m, "switchyard_coordinator_nodes", map[string]string{"service": "web", "state": "live"}); int(live) != nodes {
			return fmt.Errorf("%v of %d nodes live", live, nodes)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	time.Sleep(agentHeartbeat) // a whole heartbeat round, past the first statuses
	a := rig.sample(b, ctx, l)
	s0 := statuses.Load()
	time.Sleep(measure)
	z := rig.sample(b, ctx, l)
	s1 := statuses.Load()

	d := z.at.Sub(a.at).Seconds()
	fig["empty-coordinator-cores"] = (e1.coord.cpu - e0.coord.cpu).Seconds() / e1.at.Sub(e0.at).Seconds()
	fig["empty-coordinator-rss-MB"] = float64(e1.coord.rss) / (1 << 20)
	fig["statuses/s"] = float64(s1-s0) / d
	ingestFigures(b, fig, a, z, nodes)
	return fig
}

// agentHeartbeat is the agent's default heartbeat (agent.DefaultHeartbeat).
const agentHeartbeat = 5 * time.Second

// TestIngest_BenchmarksRunShort runs make bench's two ingest benchmarks at
// a rate and a fleet every CI run can take: the same coordinator process,
// generator and counting subscriber, for a couple of seconds. The
// coordinator must keep up with so little, shed nothing and refuse
// nothing, and every figure the benchmarks report must be there.
func TestIngest_BenchmarksRunShort(t *testing.T) {
	keepsUp := func(t *testing.T, fig figures, sent string) {
		t.Helper()
		if fig["merged/s"] < 0.7*fig[sent] || fig["shed/s"] != 0 || fig["rejected/s"] != 0 {
			t.Errorf("merged %.0f/s of %.0f/s sent, shed %.0f/s, refused %.0f/s", fig["merged/s"], fig[sent], fig["shed/s"], fig["rejected/s"])
		}
	}
	t.Run("reports", func(t *testing.T) {
		fig := ingestReports(t, 2_000, 2*time.Second, time.Second)
		fig.require(t, "published/s", "merged/s", "shed/s", "rejected/s", "coordinator-cores", "coordinator-rss-MB",
			"bench-process-cores", "coordinator-cpu-µs/report", "store-bytes/node", "rss-bytes/node",
			"generator-cores", "report-bytes", "raw-nats/s", "raw-published/s", "raw-nats+counter-cores")
		keepsUp(t, fig, "published/s")
		if fig["raw-nats/s"] < 0.7*fig["raw-published/s"] || fig["coordinator-rss-MB"] <= 0 || fig["store-bytes/node"] <= 0 {
			t.Errorf("figures: %v", fig)
		}
	})
	t.Run("idle", func(t *testing.T) {
		const nodes = 300
		fig := idleFleet(t, nodes, 2*time.Second, time.Second)
		fig.require(t, "empty-coordinator-cores", "empty-coordinator-rss-MB", "statuses/s", "published/s", "merged/s",
			"shed/s", "rejected/s", "coordinator-cores", "coordinator-rss-MB", "rss-bytes/node")
		keepsUp(t, fig, "published/s")
		// A heartbeat every 5 s from every node.
		if want := float64(nodes) / agentHeartbeat.Seconds(); fig["statuses/s"] < 0.5*want || fig["statuses/s"] > 2*want {
			t.Errorf("%.0f statuses/s from %d nodes, want about %.0f", fig["statuses/s"], nodes, want)
		}
	})
}
