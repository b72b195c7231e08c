package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// deadGreenCanary walks green to 100% after a timed pause: nothing in its
// steps waits for green to pass anything.
const deadGreenCanary = `
version: v1
name: web-dead-green
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {duration: 30s}
      - setWeight: 100
`

// serverStatus asks a node's HAProxy for the "show stat" status of one
// server of backend web ("UP", "DOWN", ...).
func serverStatus(ctx context.Context, socket, server string) (string, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.WriteString(c, "show stat web 4 -1\n"); err != nil {
		return "", err
	}
	ans, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	_, row, ok := strings.Cut(string(ans), "\nweb,"+server+",")
	if !ok {
		return "", fmt.Errorf("no row for %s in %q", server, ans)
	}
	// After pxname and svname: qcur,qmax,scur,smax,slim,stot,bin,bout,
	// dreq,dresp,ereq,econ,eresp,wretr,wredis,status.
	f := strings.Split(row, ",")
	if len(f) < 16 {
		return "", fmt.Errorf("short row %q", row)
	}
	return f[15], nil
}

// TestHealthChecks_DeadGreenCanaryRolledBackBeforeFull runs a canary of
// timed pauses on real HAProxy with health checks while green's process is
// not listening: HAProxy marks green DOWN and sends it nothing whatever its
// weight, so green answers no request and fails none. The rollout must be
// rolled back before it reaches 100% (where blue at weight 0 and green DOWN
// would have HAProxy answer every request 503 itself), with evidence naming
// the nodes where green was down.
func TestHealthChecks_DeadGreenCanaryRolledBackBeforeFull(t *testing.T) {
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be, HealthChecks: true})
	for _, n := range f.Nodes {
		if err := n.Green.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range f.Nodes {
		if err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
			st, err := serverStatus(ctx, n.HAProxy.SocketPath(), harness.Green)
			if err == nil && !strings.HasPrefix(st, "DOWN") {
				err = fmt.Errorf("%s: green is %q", n.ID, st)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	stop := load(ctx, t, f, 20)
	defer stop()

	if _, err := f.Apply(ctx, writeSpec(t, "dead-green", deadGreenCanary)); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, "web-dead-green", func(v *sv1.RolloutView) error {
		r := v.GetRollout()
		switch {
		case r.GetStep() >= 2 || r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED:
			return harness.Permanent(fmt.Errorf("a dead green went on to 100%%: %s at step %d, %s", r.GetPhase(), r.GetStep()+1, r.GetReason()))
		case r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
			return fmt.Errorf("%s at step %d: %s", r.GetPhase(), r.GetStep()+1, v.GetAnalysis())
		}
		return f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)(v)
	})
	if err != nil {
		t.Fatal(err)
	}
	ev := view.GetRollout().GetEvidence()
	if ev.GetGuardrail() != "health_check" || len(ev.GetWindows()) == 0 {
		t.Fatalf("evidence %v", ev)
	}
	for _, n := range f.Nodes {
		if !strings.Contains(ev.GetSummary(), n.ID) {
			t.Errorf("evidence does not name %s: %s", n.ID, ev.GetSummary())
		}
	}
	t.Logf("rolled back: %s", ev.GetSummary())
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatal(err)
	}
}
