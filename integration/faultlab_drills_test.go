package integration

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// The fault lab's drills: while rollouts and faults run, an HTTP fault
// drill of a few seconds on a share of the nodes, one after another; after
// the round every drill has ended and no agent still injects a fault.

// labDrill is an HTTP fault drill on about two thirds of the nodes (by the
// stable hash of drill and node), answering errorPercent of the requests
// to backend with 503.
func labDrill(name, backend string, duration time.Duration, errorPercent int) string {
	return fmt.Sprintf("version: v1\nname: %s\nservice: web\npercent: 67\nmaxNodes: 3\nmaxPercent: 100\nduration: %s\nfault:\n  http: {backend: %s, errorPercent: %d}\n",
		name, duration, backend, errorPercent)
}

// labDrillBound is how long after its duration a drill may take to end on
// the coordinators and on every agent.
const labDrillBound = 30 * time.Second

// drills runs one drill after another until ctx ends, each 2–4 s long after
// a 0.5–3 s gap, and waits for the last one to end before it returns (a
// drill is a fault, and faults end before the quiet check).
func (l *lab) drills(ctx context.Context) {
	for {
		gap := 500*time.Millisecond + time.Duration(l.drillRNG.Int64N(int64(2500*time.Millisecond)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(gap):
		}
		l.drillSeq++
		name := fmt.Sprintf("lab-drill-%d", l.drillSeq)
		backend := []string{harness.Blue, harness.Green}[l.drillRNG.IntN(2)]
		duration := 2*time.Second + time.Duration(l.drillRNG.IntN(3))*time.Second
		path := writeDrill(l.t, name, labDrill(name, backend, duration, 20+l.drillRNG.IntN(31)))
		if !l.call(l.ctx, "drill", name, "chaos", "run", "-f", path, "--timeout", "20s") {
			continue
		}
		// Wait for its end whatever the round does: the next round's
		// convergence must not see this drill's errors.
		wctx, cancel := context.WithTimeout(l.ctx, duration+labDrillBound)
		_ = harness.Poll(wctx, 300*time.Millisecond, func(ctx context.Context) error {
			v, err := drillStatus(ctx, l.f, name)
			if err != nil {
				return err
			}
			if !drillOver(v) {
				return fmt.Errorf("drill %s %s", name, v.GetDrill().GetPhase())
			}
			return nil
		})
		cancel()
	}
}

func drillOver(v *sv1.DrillView) bool {
	p := v.GetDrill().GetPhase()
	return (p == sv1.DrillPhase_DRILL_PHASE_ENDED || p == sv1.DrillPhase_DRILL_PHASE_ABORTED) && len(v.GetActive()) == 0
}

// faultKindsOnAgents are the kinds switchyard_agent_faults_active counts.
var faultKindsOnAgents = []string{"http", "tcp", "backend_state", "process", "cpu_burn", "bus_drop"}

// checkDrills verifies, within labDrillBound, that every acknowledged
// drill has ended with no target still reporting its fault, and that no
// agent injects any fault (its switchyard_agent_faults_active is 0 for
// every kind); it logs on how many targets each drill was seen injected.
func (l *lab) checkDrills() {
	t := l.t
	l.mu.Lock()
	var names []string
	for _, op := range l.ops {
		if op.op == "drill" && op.acknowledged {
			names = append(names, op.rollout)
		}
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(l.ctx, labDrillBound)
	defer cancel()
	injected := map[string]int{}
	err := harness.Poll(ctx, 300*time.Millisecond, func(ctx context.Context) error {
		for _, name := range names {
			v, err := drillStatus(ctx, l.f, name)
			if err != nil {
				return err
			}
			if !drillOver(v) {
				return fmt.Errorf("drill %s is %s, still active on %v", name, v.GetDrill().GetPhase(), v.GetActive())
			}
			injected[name] = len(v.GetDrill().GetReport().GetInjected())
		}
		for i, n := range l.f.Nodes {
			text, err := l.f.AgentMetrics(ctx, i)
			if err != nil {
				return fmt.Errorf("%s: %w", n.ID, err)
			}
			var active []string
			for _, kind := range faultKindsOnAgents {
				if v, _ := harness.MetricValue(text, "switchyard_agent_faults_active", map[string]string{"kind": kind}); v != 0 {
					active = append(active, fmt.Sprintf("%s=%g", kind, v))
				}
			}
			if len(active) > 0 {
				return fmt.Errorf("%s still injects: %s", n.ID, strings.Join(active, " "))
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("a drill fault was not reverted within %s: %v", labDrillBound, err)
		return
	}
	seen := 0
	for _, n := range injected {
		if n > 0 {
			seen++
		}
	}
	l.mu.Lock()
	l.drillsInjected = seen
	l.mu.Unlock()
	t.Logf("drills checked: %d acknowledged, %d injected on at least one target, every one ended and reverted on every agent", len(names), seen)
}
