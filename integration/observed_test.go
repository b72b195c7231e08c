package integration

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// nodeConverged is what the coordinator counts as converged for one node:
// the generation applied, and the proxy read back doing it.
func nodeConverged(n *sv1.NodeView, generation uint64) bool {
	if n.GetStale() || n.GetAppliedGeneration() < generation || !n.GetObservedMatches() {
		return false
	}
	for b, w := range n.GetWeights() {
		if hw, ok := n.GetObservedWeights()[b]; !ok || hw != w {
			return false
		}
	}
	return true
}

// TestObserved_HAProxyKilledUnderRolloutNeverShownConverged kills one
// node's HAProxy with SIGKILL and starts it again from its config (blue)
// after a rollout moved the fleet to green. The coordinator's rollout view,
// sampled throughout, never counts that node converged while its HAProxy
// serves blue; the agent puts green back, and no request made after the
// repair reaches blue.
func TestObserved_HAProxyKilledUnderRolloutNeverShownConverged(t *testing.T) {
	// Serial (no t.Parallel): a sampler and a load loop run back to back,
	// CPU-heavy.
	const restarts = 5
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be})

	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatal(err)
	}
	gen := view.GetRollout().GetGeneration()
	res, err := f.Run(ctx, "rollout", "status", exampleRollout)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("rollout status: %v %+v", err, res)
	}
	if !strings.Contains(res.Stdout, "OBSERVED") || !strings.Contains(res.Stdout, "blue=0 green=100  blue=0 green=100") {
		t.Fatalf("rollout status lacks the observed weights beside the applied ones:\n%s", res.Stdout)
	}

	node := f.Nodes[0]
	drv, err := haproxy.New(haproxy.Config{Socket: node.HAProxy.SocketPath(), Backend: "web",
		Servers: map[string]string{harness.Blue: harness.Blue, harness.Green: harness.Green}})
	if err != nil {
		t.Fatal(err)
	}
	green := map[string]uint32{harness.Blue: 0, harness.Green: 100}
	blue := map[string]uint32{harness.Blue: 100, harness.Green: 0}
	truth := func(ctx context.Context) (map[string]uint32, bool) {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		w, err := drv.Weights(rctx)
		return w, err == nil
	}

	nc := connectNATS(t, f.Bus)
	q, _ := proto.Marshal(&sv1.RolloutsQuery{Rollout: exampleRollout})
	coordinatorSays := func(ctx context.Context) (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		msg, err := nc.RequestWithContext(rctx, bus.QuerySubject(bus.QueryRollouts), q)
		if err != nil {
			return false, err
		}
		if e := msg.Header.Get(bus.ErrorHeader); e != "" {
			return false, fmt.Errorf("%s", e)
		}
		var ans sv1.RolloutsAnswer
		if err := proto.Unmarshal(msg.Data, &ans); err != nil {
			return false, err
		}
		for _, v := range ans.GetRollouts() {
			for _, n := range v.GetNodes() {
				if n.GetNode() == node.ID {
					return nodeConverged(n, gen), nil
				}
			}
		}
		return false, fmt.Errorf("node %s not in the rollout view", node.ID)
	}

	sctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var lies, samples int
	// Sampler: HAProxy before and after the coordinator's answer; a
	// "converged" between two blue readings is a lie.
	wg.Go(func() {
		for sctx.Err() == nil {
			before, ok1 := truth(sctx)
			conv, err := coordinatorSays(sctx)
			after, ok2 := truth(sctx)
			if !ok1 || !ok2 || err != nil {
				continue
			}
			mu.Lock()
			samples++
			if conv && maps.Equal(before, blue) && maps.Equal(after, blue) {
				lies++
			}
			mu.Unlock()
		}
	})
	// Load through the node, each answer stamped with its start.
	type answer struct {
		start   time.Time
		backend string
	}
	var answers []answer
	client := &http.Client{Timeout: 2 * time.Second}
	wg.Go(func() {
		for sctx.Err() == nil {
			start := time.Now()
			req, _ := http.NewRequestWithContext(sctx, http.MethodGet, "http://"+node.FrontendAddr+"/", nil)
			resp, err := client.Do(req)
			if err != nil {
				continue
			}
			resp.Body.Close()
			mu.Lock()
			answers = append(answers, answer{start, resp.Header.Get("X-Backend")})
			mu.Unlock()
		}
	})

	var took []time.Duration
	var repairedAt, killedAt []time.Time
	for i := range restarts {
		killedAt = append(killedAt, time.Now())
		if err := node.HAProxy.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := node.HAProxy.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		err := harness.Poll(ctx, 5*time.Millisecond, func(ctx context.Context) error {
			if w, ok := truth(ctx); !ok || !maps.Equal(w, green) {
				return fmt.Errorf("restart %d: HAProxy has %v", i+1, w)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		repairedAt = append(repairedAt, time.Now())
		took = append(took, time.Since(killedAt[i]))
		// The coordinator counts the node again once it hears the repair.
		if err := harness.Poll(ctx, 20*time.Millisecond, func(ctx context.Context) error {
			if conv, err := coordinatorSays(ctx); err != nil || !conv {
				return fmt.Errorf("restart %d: node not converged again (%v)", i+1, err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		// Traffic on the repaired proxy before the next kill.
		if err := harness.Poll(ctx, 10*time.Millisecond, func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, a := range answers {
				if a.start.After(repairedAt[i]) {
					n++
				}
			}
			if n < 50 {
				return fmt.Errorf("restart %d: %d requests since the repair", i+1, n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	stop()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	var wrong, after int
	for _, a := range answers {
		for i, r := range repairedAt {
			end := time.Now()
			if i+1 < len(killedAt) {
				end = killedAt[i+1]
			}
			if a.start.After(r) && a.start.Before(end) {
				after++
				if a.backend != harness.Green {
					wrong++
				}
				break
			}
		}
	}
	if lies > 0 {
		t.Errorf("the coordinator counted %s converged while its HAProxy served blue in %d of %d samples", node.ID, lies, samples)
	}
	if wrong > 0 {
		t.Errorf("%d of %d requests made after a repair were not answered by green", wrong, after)
	}
	if samples == 0 || after == 0 {
		t.Fatalf("nothing measured: %d samples, %d requests after repairs", samples, after)
	}
	t.Logf("%d SIGKILL+restarts of %s's HAProxy: green back %v after each kill; %d coordinator samples, %d lies; %d requests after repairs, %d wrong",
		restarts, node.ID, took, samples, lies, after, wrong)
}
