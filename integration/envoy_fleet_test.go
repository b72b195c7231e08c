package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// rpcLoad makes RPCs back to back through every node's xDS client from
// workers goroutines per node, and keeps what each answered in order.
type rpcLoad struct {
	mu       sync.Mutex
	ok, fail int
	firstErr string
	// seq is, per node and worker, the backends that answered in order.
	seq  map[string][]string
	stop func()
}

func startRPCLoad(ctx context.Context, f *harness.Fleet, workers int) *rpcLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &rpcLoad{seq: map[string][]string{}}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	var wg sync.WaitGroup
	for _, n := range f.Nodes {
		for w := range workers {
			key := fmt.Sprintf("%s/%d", n.ID, w)
			wg.Go(func() {
				for ctx.Err() == nil {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.FrontendAddr+"/", nil)
					resp, err := client.Do(req)
					if ctx.Err() != nil {
						return
					}
					var body []byte
					if err == nil {
						body, _ = io.ReadAll(resp.Body)
						resp.Body.Close()
					}
					l.mu.Lock()
					switch {
					case err != nil:
						l.fail++
						l.firstErr = cmpOr(l.firstErr, err.Error())
					case resp.StatusCode != http.StatusOK:
						l.fail++
						l.firstErr = cmpOr(l.firstErr, fmt.Sprintf("%s: %s %s", n.ID, resp.Status, strings.TrimSpace(string(body))))
					default:
						l.ok++
						l.seq[key] = append(l.seq[key], resp.Header.Get("X-Backend"))
					}
					l.mu.Unlock()
				}
			})
		}
	}
	l.stop = func() { cancel(); wg.Wait(); client.CloseIdleConnections() }
	return l
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// flipping is a canary of 100 steps that switch green from nothing to all
// and back, ending on blue, and then holds. The coordinator moves to the
// next step only once every live node's proxy is seen on the current one,
// so each step is a switch made on every node.
func flipping(name string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: v1\nname: %s\nservice: web\nfrom: blue\nto: green\nstrategy:\n  canary:\n    steps:\n", name)
	for i := range 100 {
		fmt.Fprintf(&b, "      - setWeight: %d\n", 100*((i+1)%2))
	}
	b.WriteString("      - pause: {duration: 10m}\nanalysis:\n  window: 3s\n  minRequests: 20\n")
	return b.String()
}

// TestEnvoyFleet_HundredSwitchesUnderLoadLoseNoRPC drives 100 switches of
// an xDS service through the coordinator (one rollout of 100 alternating
// steps) and an abort, with agent binaries and real grpc-go xDS clients
// making RPCs back to back: not one RPC fails.
func TestEnvoyFleet_HundredSwitchesUnderLoadLoseNoRPC(t *testing.T) {
	// Serial (no t.Parallel): RPCs back to back on every node are CPU-heavy,
	// and the switches a client sees depend on how fast it makes them.
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{
		Nodes: 2, Service: "web", Switchyard: sy, Backend: be,
		XDSClient: xdsClientBin.get(t),
		Envoy:     func(int) bool { return true },
	})
	if err := f.WaitAllServing(ctx, harness.Blue, 5); err != nil {
		t.Fatal(err)
	}
	l := startRPCLoad(ctx, f, 3)
	defer l.stop()

	began := time.Now()
	if _, err := f.Apply(ctx, writeSpec(t, "flips", flipping("web-flips"))); err != nil {
		t.Fatal(err)
	}
	// Step 101 is the hold: every switch before it was made.
	if _, err := f.WaitRollout(ctx, "web-flips", func(v *sv1.RolloutView) error {
		if s := v.GetRollout().GetStep(); s < 100 {
			return fmt.Errorf("at step %d of 101 (%s)", s+1, v.GetRollout().GetPhase())
		}
		return f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)(v)
	}); err != nil {
		t.Fatal(err)
	}
	flipped := time.Since(began)
	l.mu.Lock()
	changes := 0
	for _, s := range l.seq {
		n := 0
		for i := 1; i < len(s); i++ {
			if s[i] != s[i-1] {
				n++
			}
		}
		changes = max(changes, n)
	}
	l.mu.Unlock()
	if _, err := f.Abort(ctx, "web-flips", "switch drill over"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-flips", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, 20); err != nil {
		t.Fatalf("after the abort: %v", err)
	}
	l.stop()
	l.mu.Lock()
	ok, fail, firstErr := l.ok, l.fail, l.firstErr
	l.mu.Unlock()
	t.Logf("100 switches in %s, then an abort: %d RPCs ok, %d failed; one client saw the backend change %d times",
		flipped.Round(100*time.Millisecond), ok, fail, changes)
	if fail != 0 {
		t.Fatalf("%d RPCs failed (first: %s)", fail, firstErr)
	}
	// Clients follow each switch; one worker making RPCs back to back sees
	// most of them (a switch it misses between two of its RPCs is not seen).
	if changes < 80 {
		t.Fatalf("a client saw the answering backend change only %d times across 100 switches", changes)
	}
}

// TestEnvoyFleet_SlowGreenAndAFaultDrill runs on xDS nodes (agent
// binaries, grpc-go xDS clients making real RPCs):
//   - a green that answers half of its RPCs 300 ms late, errors none, is
//     rolled back on latency evidence alone, which only the clients' access
//     logs give;
//   - then an HTTP fault drill: the fault filter's aborts are measured on
//     real RPCs, and with NATS and the coordinator stopped the agents still
//     remove the fault when the drill's time is up.
func TestEnvoyFleet_SlowGreenAndAFaultDrill(t *testing.T) {
	// Serial (no t.Parallel): RPCs back to back, latency evidence, abort
	// shares over 800 RPCs and a 3 s bound after the drill's end.
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{
		Nodes: 2, Service: "web", Switchyard: sy, Backend: be,
		XDSClient: xdsClientBin.get(t),
		Envoy:     func(int) bool { return true },
	})
	// RPCs back to back, two clients per node: the judge gets every
	// node-second's evidence it can use.
	stop := startRPCLoad(ctx, f, 2).stop
	defer stop()
	if _, err := f.Apply(ctx, writeSpec(t, "canary-bad", failingCanary)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, "web-canary-bad", func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 {
			return fmt.Errorf("at step %d", v.GetRollout().GetStep()+1)
		}
		return f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)(v)
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range f.Nodes {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("http://%s/behavior?error-rate=0&latency=300ms&latency-share=0.5", n.GreenAddr), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("slow down green on %s: %s", n.ID, resp.Status)
		}
	}
	slowed := time.Now()
	view, err := f.WaitRollout(ctx, "web-canary-bad", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatal(err)
	}
	reason := view.GetRollout().GetReason()
	t.Logf("rolled back %s after green slowed: %s", time.Since(slowed).Round(100*time.Millisecond), reason)
	if !strings.Contains(reason, "latency") {
		t.Fatalf("rollback reason %q: want latency evidence (green failed no RPC)", reason)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, 20); err != nil {
		t.Fatalf("after the rollback: %v", err)
	}
	for i := range f.Nodes {
		exp, err := f.AgentMetrics(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if v, _ := harness.MetricValue(exp, "switchyard_agent_xds_access_log_entries_total", map[string]string{"service": "web", "result": "timed"}); v == 0 {
			t.Errorf("%s: no access log entry timed", f.Nodes[i].ID)
		}
	}
	stop()

	// The drill: green carries every node's traffic, and is healthy again.
	for _, n := range f.Nodes {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("http://%s/behavior?error-rate=0", n.GreenAddr), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	all := []int{0, 1}
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	runDrill(t, ctx, f, "xds-no-bus", fmt.Sprintf(fleetDrill, "xds-no-bus", "20s", 50))
	dv := waitDrill(t, ctx, f, "xds-no-bus", activeOn("edge-1", "edge-2"))
	end := dv.GetDrill().GetEndAt().AsTime()

	// 400 RPCs per node: 10 points are four standard deviations of the
	// measured share of a 50% abort.
	for i, s := range sampleNodes(ctx, f, 400) {
		t.Logf("%s under the drill: %v (%.1f%% failed)", f.Nodes[i].ID, s, 100*s.errShare())
		if s.errShare() < 0.40 || s.errShare() > 0.60 || s[harness.Blue] != 0 {
			t.Fatalf("%s under a 50%% abort on green: %v, want 50%% ± 10 points failed and no blue", f.Nodes[i].ID, s)
		}
	}
	if err := f.Dev.Stop(); err != nil {
		t.Fatal(err)
	}
	if time.Now().After(end) {
		t.Fatal("dev took longer to stop than the drill lasts; lengthen it")
	}
	for i, s := range sampleNodes(ctx, f, 50) {
		if s.errors() == 0 && time.Now().Before(end) {
			t.Fatalf("%s with the bus gone, before the end: %v, want the fault still on", f.Nodes[i].ID, s)
		}
	}
	clean := waitClean(t, ctx, f, all, harness.Green, 50)
	t.Logf("with NATS and the coordinator stopped, every xDS node clean %v after the drill's end", clean.Sub(end).Round(time.Millisecond))
	if clean.Sub(end) > 3*time.Second {
		t.Fatalf("clean %v after the end, want within 3s", clean.Sub(end))
	}
	for i := range f.Nodes {
		text, err := f.AgentMetrics(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if v, ok := harness.MetricValue(text, "switchyard_agent_faults_active", map[string]string{"kind": "http"}); !ok || v != 0 {
			t.Errorf("%s: faults_active{kind=http} = %v (present: %v) after the drill's end, want 0", f.Nodes[i].ID, v, ok)
		}
	}
}
