package integration

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// These tests run chaos drills on a 3-node fleet of real processes (the
// coordinator and NATS of `switchyard dev`, and per node an agent, a real
// HAProxy and blue and green backends), through the CLI, and measure what
// the faults do to real requests through each node's HAProxy.

// chaosSample is what a batch of requests through one node's HAProxy got:
// answers by backend, 503s (the fault proxy's, or HAProxy's own) under
// "503", and everything else (other statuses, no answer) under
// harness.SampleError.
type chaosSample map[string]int

const sample503 = "503"

func (s chaosSample) total() int {
	n := 0
	for _, v := range s {
		n += v
	}
	return n
}

// errors counts the failed requests.
func (s chaosSample) errors() int { return s[sample503] + s[harness.SampleError] }

func (s chaosSample) errShare() float64 {
	return float64(s.errors()) / float64(s.total())
}

// sampleNodes sends n requests through each node's HAProxy, every request
// on a new connection, with a few clients per node at once.
func sampleNodes(ctx context.Context, f *harness.Fleet, n int) []chaosSample {
	out := make([]chaosSample, len(f.Nodes))
	var wg sync.WaitGroup
	for i := range f.Nodes {
		wg.Go(func() {
			var mu sync.Mutex
			s := chaosSample{}
			var inner sync.WaitGroup
			for w := range 4 {
				inner.Go(func() {
					for range n/4 + boolInt(w < n%4) {
						b, err := f.Get(ctx, i)
						switch {
						case err != nil && strings.Contains(err.Error(), "answered 503 "):
							b = sample503
						case err != nil:
							b = harness.SampleError
						}
						mu.Lock()
						s[b]++
						mu.Unlock()
					}
				})
			}
			inner.Wait()
			out[i] = s
		})
	}
	wg.Wait()
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// writeDrill writes a drill spec for the CLI.
func writeDrill(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// runDrill runs `switchyard chaos run -f` and fails the test unless the
// coordinator accepted it.
func runDrill(t *testing.T, ctx context.Context, f *harness.Fleet, name, text string) {
	t.Helper()
	res, err := f.Run(ctx, "chaos", "run", "-f", writeDrill(t, name, text), "--timeout", "30s")
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("chaos run %s: exit %d: %s", name, res.ExitCode, res.Stderr)
	}
}

// drillStatus runs `switchyard chaos status NAME -o json`.
func drillStatus(ctx context.Context, f *harness.Fleet, name string) (*sv1.DrillView, error) {
	res, err := f.Run(ctx, "chaos", "status", name, "-o", "json")
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("chaos status %s: exit %d: %s", name, res.ExitCode, res.Stderr)
	}
	var ans sv1.DrillsAnswer
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(res.Stdout), &ans); err != nil {
		return nil, fmt.Errorf("decode chaos status: %w\n%s", err, res.Stdout)
	}
	for _, v := range ans.GetDrills() {
		if v.GetDrill().GetId() == name {
			return v, nil
		}
	}
	return nil, fmt.Errorf("drill %s not in chaos status", name)
}

// waitDrill polls `chaos status NAME` until cond accepts it.
func waitDrill(t *testing.T, ctx context.Context, f *harness.Fleet, name string, cond func(*sv1.DrillView) error) *sv1.DrillView {
	t.Helper()
	var view *sv1.DrillView
	err := harness.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) error {
		v, err := drillStatus(ctx, f, name)
		if err != nil {
			return err
		}
		view = v
		return cond(v)
	})
	if err != nil {
		t.Fatalf("drill %s: %v", name, err)
	}
	return view
}

// activeOn is a waitDrill condition: the drill runs and exactly these
// nodes report its fault active.
func activeOn(nodes ...string) func(*sv1.DrillView) error {
	return func(v *sv1.DrillView) error {
		if v.GetDrill().GetPhase() != sv1.DrillPhase_DRILL_PHASE_RUNNING {
			return fmt.Errorf("phase %s (%s)", v.GetDrill().GetPhase(), v.GetDrill().GetAbortReason())
		}
		if got := v.GetActive(); !slices.Equal(got, nodes) {
			return fmt.Errorf("active on %v, want %v", got, nodes)
		}
		return nil
	}
}

// waitClean polls until n requests through each listed node are all
// answered by backend, and returns when that was first seen.
func waitClean(t *testing.T, ctx context.Context, f *harness.Fleet, nodes []int, backend string, n int) time.Time {
	t.Helper()
	err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		for _, i := range nodes {
			if s := f.Sample(ctx, i, n); s[backend] != n {
				return fmt.Errorf("%s: %v", f.Nodes[i].ID, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("waiting for %s on nodes %v: %v", backend, nodes, err)
	}
	return time.Now()
}

const fleetDrill = `
version: v1
name: %s
service: web
maxNodes: 3
maxPercent: 100
duration: %s
fault:
  http: {backend: green, errorPercent: %d}
`

// errTol is how far the 503 share measured over chaosSamples requests may
// be from the injected one: at 20% over 1200 requests the binomial standard
// deviation is 1.2 points; 4.5 points is nearly four of them.
const (
	chaosSamples = 400 // per node
	errTol       = 0.045
)

func TestChaos_DrillsOnAFleet(t *testing.T) {
	// Serial (no t.Parallel): it measures 503 shares over 1,200 requests
	// inside a 25 s drill and wants every fault gone within 3 s of a drill's
	// end; a test running beside it would move both.
	ctx := harnesstest.Context(t, 6*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be})
	all := []int{0, 1, 2}
	ids := []string{"edge-1", "edge-2", "edge-3"}

	// Green carries every node's traffic.
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}

	t.Run("over the cap", func(t *testing.T) {
		spec := strings.Replace(fmt.Sprintf(fleetDrill, "too-wide", "1m", 20), "maxNodes: 3", "maxNodes: 2", 1)
		res, err := f.Run(ctx, "chaos", "run", "-f", writeDrill(t, "too-wide", spec), "--timeout", "30s")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("chaos run: exit %d: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
		if res.ExitCode != 1 || !strings.Contains(res.Stderr, "blast_radius") || !strings.Contains(res.Stderr, "more than drill.maxNodes 2") {
			t.Fatalf("a drill over its cap: exit %d, stderr %q; want exit 1 and a blast_radius error naming maxNodes 2", res.ExitCode, res.Stderr)
		}
		if _, err := drillStatus(ctx, f, "too-wide"); err == nil {
			t.Fatal("the refused drill was committed")
		}
		for i, s := range sampleNodes(ctx, f, 20) {
			if s[harness.Green] != 20 {
				t.Fatalf("%s after the refusal: %v", ids[i], s)
			}
		}
	})

	t.Run("dry run changes nothing", func(t *testing.T) {
		res, err := f.Run(ctx, "chaos", "run", "--dry-run", "-f", writeDrill(t, "dry", fmt.Sprintf(fleetDrill, "dry", "1m", 20)))
		if err != nil {
			t.Fatal(err)
		}
		if res.ExitCode != 0 {
			t.Fatalf("dry run: exit %d: %s", res.ExitCode, res.Stderr)
		}
		for _, id := range ids {
			if !strings.Contains(res.Stdout, id+" ") {
				t.Errorf("dry run does not name %s:\n%s", id, res.Stdout)
			}
		}
		if !strings.Contains(res.Stdout, "answer 20% of green's requests with 503") {
			t.Errorf("dry run does not say what each node would do:\n%s", res.Stdout)
		}
		if _, err := drillStatus(ctx, f, "dry"); err == nil {
			t.Fatal("a dry run committed the drill")
		}
		for i, s := range sampleNodes(ctx, f, 20) {
			if s[harness.Green] != 20 {
				t.Fatalf("%s after the dry run: %v", ids[i], s)
			}
		}
	})

	t.Run("20% errors until the end", func(t *testing.T) {
		runDrill(t, ctx, f, "green-errors", fmt.Sprintf(fleetDrill, "green-errors", "25s", 20))
		view := waitDrill(t, ctx, f, "green-errors", activeOn(ids...))
		end := view.GetDrill().GetEndAt().AsTime()
		samples := sampleNodes(ctx, f, chaosSamples)
		if time.Now().After(end) {
			t.Fatalf("the measurement ran past the drill's end; lengthen it")
		}
		var errs, total int
		for i, s := range samples {
			t.Logf("%s during the drill: %v (%.1f%% errors)", ids[i], s, 100*s.errShare())
			errs += s.errors()
			total += s.total()
			if s[harness.Green]+s[sample503] != s.total() || math.Abs(s.errShare()-0.2) > 0.1 {
				t.Errorf("%s: %v, want about 20%% 503s and the rest from green", ids[i], s)
			}
		}
		share := float64(errs) / float64(total)
		t.Logf("fleet: %d of %d requests failed: %.1f%% (injected 20%%, tolerance ±%.1f points)", errs, total, 100*share, 100*errTol)
		if math.Abs(share-0.2) > errTol {
			t.Fatalf("fleet error share %.3f, want 0.20 ± %.3f", share, errTol)
		}
		// Every agent ends the fault at the drill's end by its own timer.
		clean := waitClean(t, ctx, f, all, harness.Green, 50)
		t.Logf("every node clean %v after the drill's end", clean.Sub(end).Round(time.Millisecond))
		for i, s := range sampleNodes(ctx, f, 200) {
			if s[harness.Green] != 200 {
				t.Fatalf("%s after the drill: %v, want all green", ids[i], s)
			}
		}
		v := waitDrill(t, ctx, f, "green-errors", func(v *sv1.DrillView) error {
			if v.GetDrill().GetReport() == nil || len(v.GetActive()) != 0 {
				return fmt.Errorf("phase %s, active %v, report %v", v.GetDrill().GetPhase(), v.GetActive(), v.GetDrill().GetReport())
			}
			return nil
		})
		rep := v.GetDrill().GetReport()
		t.Logf("report: %s: %s", rep.GetVerdict(), rep.GetSummary())
		if v.GetDrill().GetPhase() != sv1.DrillPhase_DRILL_PHASE_ENDED || rep.GetVerdict() != "pass" || len(rep.GetInjected()) != 3 {
			t.Fatalf("drill %v, report %v; want ended, pass, injected on 3 nodes", v.GetDrill().GetPhase(), rep)
		}
	})

	t.Run("agent killed mid-fault, then stop-all", func(t *testing.T) {
		runDrill(t, ctx, f, "long", fmt.Sprintf(fleetDrill, "long", "10m", 50))
		waitDrill(t, ctx, f, "long", activeOn(ids...))
		for i, s := range sampleNodes(ctx, f, 100) {
			if s.errors() == 0 || s[harness.Green] == 0 {
				t.Fatalf("%s with the long drill: %v, want errors and green answers", ids[i], s)
			}
		}

		// SIGKILL: the fault proxy dies with the agent, HAProxy keeps
		// pointing green at it, and the node's green is down until the
		// agent is back and reverts from its journal; it does not inject
		// the drill again.
		if err := f.KillAgent(0); err != nil {
			t.Fatal(err)
		}
		dead := f.Sample(ctx, 0, 5)
		t.Logf("edge-1 with its agent killed mid-fault: %v", dead)
		if dead[harness.Green] != 0 {
			t.Errorf("edge-1 with its agent killed: %v, want green unreachable", dead)
		}
		if err := f.StartAgent(ctx, 0); err != nil {
			t.Fatal(err)
		}
		waitClean(t, ctx, f, []int{0}, harness.Green, 50)
		waitDrill(t, ctx, f, "long", activeOn("edge-2", "edge-3"))
		for i, s := range sampleNodes(ctx, f, 100)[1:] {
			if s.errors() == 0 {
				t.Fatalf("%s while edge-1 recovered: %v, want the fault still on", ids[i+1], s)
			}
		}
		if s := f.Sample(ctx, 0, 100); s[harness.Green] != 100 {
			t.Fatalf("edge-1 after its restart: %v, want all green", s)
		}

		stopped := time.Now()
		res, err := f.Run(ctx, "chaos", "stop-all", "--reason", "integration test")
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("stop-all: %v %+v", err, res)
		}
		clean := waitClean(t, ctx, f, all, harness.Green, 50)
		t.Logf("every node clean %v after stop-all", clean.Sub(stopped).Round(time.Millisecond))
		for i, s := range sampleNodes(ctx, f, 200) {
			if s[harness.Green] != 200 {
				t.Fatalf("%s after stop-all: %v, want all green", ids[i], s)
			}
		}
		v := waitDrill(t, ctx, f, "long", func(v *sv1.DrillView) error {
			if v.GetDrill().GetPhase() != sv1.DrillPhase_DRILL_PHASE_ABORTED || len(v.GetActive()) != 0 {
				return fmt.Errorf("phase %s, active %v", v.GetDrill().GetPhase(), v.GetActive())
			}
			return nil
		})
		t.Logf("chaos status after stop-all: %s, %q", v.GetDrill().GetPhase(), v.GetDrill().GetAbortReason())
		for i := range f.Nodes {
			text, err := f.AgentMetrics(ctx, i)
			if err != nil {
				t.Fatal(err)
			}
			if v, _ := harness.MetricValue(text, "switchyard_agent_faults_active", map[string]string{"kind": "http"}); v != 0 {
				t.Errorf("%s: faults_active{kind=http} = %v after stop-all", ids[i], v)
			}
		}
	})

	t.Run("bus gone, faults still end on time", func(t *testing.T) {
		runDrill(t, ctx, f, "no-bus", fmt.Sprintf(fleetDrill, "no-bus", "15s", 50))
		view := waitDrill(t, ctx, f, "no-bus", activeOn(ids...))
		end := view.GetDrill().GetEndAt().AsTime()
		// NATS and the coordinator go away together: nobody can tell the
		// agents anything any more.
		if err := f.Dev.Stop(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(end) {
			t.Fatal("dev took longer to stop than the drill lasts; lengthen it")
		}
		for i, s := range sampleNodes(ctx, f, 50) {
			if s.errors() == 0 && time.Now().Before(end) {
				t.Fatalf("%s with the bus gone, before the end: %v, want the fault still on", ids[i], s)
			}
		}
		clean := waitClean(t, ctx, f, all, harness.Green, 50)
		t.Logf("with NATS and the coordinator stopped, every node clean %v after the drill's end", clean.Sub(end).Round(time.Millisecond))
		if clean.Sub(end) > 3*time.Second {
			t.Fatalf("clean %v after the end, want within 3s", clean.Sub(end))
		}
	})
}

const rollbackCanary = `
version: v1
name: web-canary-drill
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 50
      - pause: {duration: 10m}
`

const rollbackDrill = `
version: v1
name: web-canary-drill-proof
service: web
rollout: web-canary-drill
maxNodes: 3
maxPercent: 100
duration: 5m
detectWithin: 60s
recoverWithin: 60s
fault:
  http: {backend: green, errorPercent: 50}
`

// chaosLoad sends requests through every node's HAProxy at about perSecond
// each until stopped, so the agents report real traffic and the
// coordinator's analysis has windows to judge.
func chaosLoad(ctx context.Context, f *harness.Fleet, perSecond int) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, n := range f.Nodes {
		wg.Go(func() {
			tick := time.NewTicker(time.Second / time.Duration(perSecond))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.FrontendAddr+"/", nil)
				if resp, err := client.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		})
	}
	return func() { cancel(); wg.Wait() }
}

func TestChaos_RollbackDrillProvesTheGuardrails(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 5*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be})
	stop := chaosLoad(ctx, f, 40)
	defer stop()

	if _, err := f.Apply(ctx, writeDrill(t, "canary", rollbackCanary)); err != nil {
		t.Fatal(err)
	}
	// The canary holds at 50% on every node (one wave: the whole fleet).
	if _, err := f.WaitRollout(ctx, "web-canary-drill", func(v *sv1.RolloutView) error {
		if err := f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)(v); err != nil {
			return err
		}
		if v.GetRollout().GetStep() != 1 {
			return fmt.Errorf("at step %d", v.GetRollout().GetStep()+1)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, s := range sampleNodes(ctx, f, 40) {
		if s[harness.Green] == 0 || s[harness.Blue] == 0 || s.errors() != 0 {
			t.Fatalf("edge-%d at 50%%: %v, want both backends and no errors", i+1, s)
		}
	}

	runDrill(t, ctx, f, "rollback-drill", rollbackDrill)
	// No operator action from here on: the guardrails must see green fail
	// on the canary's nodes and roll the fleet back.
	view, err := f.WaitRollout(ctx, "web-canary-drill", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("rolled back: %s", view.GetRollout().GetReason())
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the rollback: %v", err)
	}
	for i, s := range sampleNodes(ctx, f, 100) {
		if s[harness.Blue] != 100 {
			t.Fatalf("edge-%d after the rollback: %v, want every request on blue", i+1, s)
		}
	}

	v := waitDrill(t, ctx, f, "web-canary-drill-proof", func(v *sv1.DrillView) error {
		if v.GetDrill().GetReport() == nil {
			return fmt.Errorf("phase %s, no report yet (active %v)", v.GetDrill().GetPhase(), v.GetActive())
		}
		return nil
	})
	rep := v.GetDrill().GetReport()
	inj, det, back, rec := rep.GetFirstInjectedAt().AsTime(), rep.GetDetectedAt().AsTime(), rep.GetRolledBackAt().AsTime(), rep.GetRecoveredAt().AsTime()
	t.Logf("drill %s (%s): %s: %s", v.GetDrill().GetPhase(), v.GetDrill().GetAbortReason(), rep.GetVerdict(), rep.GetSummary())
	t.Logf("injected %s; detected +%v; every node on blue +%v; traffic recovered +%v (on %d targets)",
		inj.Format(time.StampMilli), det.Sub(inj).Round(100*time.Millisecond), back.Sub(inj).Round(100*time.Millisecond),
		rec.Sub(inj).Round(100*time.Millisecond), len(rep.GetInjected()))
	if rep.GetVerdict() != "pass" || rep.GetFirstInjectedAt() == nil || rep.GetDetectedAt() == nil || rep.GetRolledBackAt() == nil || rep.GetRecoveredAt() == nil {
		t.Fatalf("report %v; want pass with injection, detection, rollback and recovery times", rep)
	}
	if !(inj.Before(det) && !back.Before(det) && !rec.Before(back)) || det.Sub(inj) > time.Minute || rec.Sub(det) > time.Minute {
		t.Fatalf("times out of order or past the deadlines: injected %v, detected %v, rolled back %v, recovered %v", inj, det, back, rec)
	}
	if len(rep.GetInjected()) != 3 {
		t.Fatalf("fault seen on %d targets, want 3: %v", len(rep.GetInjected()), rep.GetInjected())
	}
	// The drill ended when the fleet recovered; its agents revert then,
	// not at the drill's 5m end.
	waitDrill(t, ctx, f, "web-canary-drill-proof", func(v *sv1.DrillView) error {
		if len(v.GetActive()) != 0 {
			return fmt.Errorf("fault still active on %v", v.GetActive())
		}
		return nil
	})
}
