package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// readRollout runs `rollout status NAME -o json` and returns the rollout's
// generation, or an error naming what the CLI said.
func readRollout(ctx context.Context, cp *controlPlane, name string, extra ...string) (uint64, *harness.CLIResult, error) {
	args := append([]string{"rollout", "status", name, "-o", "json", "--timeout", "15s"}, extra...)
	res, err := cp.fleet.Run(ctx, args...)
	if err != nil {
		return 0, res, err
	}
	if res.ExitCode != 0 {
		return 0, res, fmt.Errorf("exit %d: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
	}
	var ans sv1.RolloutsAnswer
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(res.Stdout), &ans); err != nil {
		return 0, res, err
	}
	for _, v := range ans.GetRollouts() {
		if v.GetRollout().GetId() == name {
			return v.GetRollout().GetGeneration(), res, nil
		}
	}
	return 0, res, fmt.Errorf("%s not in the answer of %s", name, ans.GetAnsweredBy())
}

func applyOwnService(ctx context.Context, t *testing.T, cp *controlPlane, name string) {
	t.Helper()
	spec := fmt.Sprintf("version: v1\nname: %s\nservice: %s\nfrom: blue\nto: green\nstrategy:\n  blueGreen: {}\n", name, name)
	if _, err := cp.fleet.Apply(ctx, writeSpec(t, name, spec)); err != nil {
		t.Fatal(err)
	}
}

// TestReads_CurrentOrDeclined: `rollout status` right after `rollout apply`
// shows the rollout every time (a follower that has not applied the entry
// yet declines instead of saying "no rollout named …"); with the leader
// frozen every query is still answered (the frozen coordinator holds one
// attempt, the CLI asks again); a killed leader restarted behind the others
// never answers with its old state; --stale answers from any replica and
// says so.
func TestReads_CurrentOrDeclined(t *testing.T) {
	// Serial (no t.Parallel): with the leader frozen every answer needs both
	// other coordinators to keep a leader between them, which a test
	// running beside it can starve of CPU past Raft's lease.
	ctx := harnesstest.Context(t, 5*time.Minute)
	cp := startControlPlane(t, ctx)
	c := cp.cluster

	const rounds = 15
	for i := range rounds {
		name := fmt.Sprintf("ryw-%d", i+1)
		applyOwnService(ctx, t, cp, name)
		if _, _, err := readRollout(ctx, cp, name); err != nil {
			t.Fatalf("round %d: status right after apply: %v", i+1, err)
		}
	}

	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Freeze(leader); err != nil {
		t.Fatal(err)
	}
	thawed := false
	t.Cleanup(func() {
		if !thawed {
			_ = c.Thaw(leader)
		}
	})
	for i := range 6 {
		if _, _, err := readRollout(ctx, cp, "ryw-1"); err != nil {
			t.Fatalf("query %d with the leader %s frozen: %v", i+1, c.Coordinators[leader].ID, err)
		}
	}
	if err := c.Thaw(leader); err != nil {
		t.Fatal(err)
	}
	thawed = true

	leader, err = c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := leader
	if err := c.Kill(old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx, old); err != nil {
		t.Fatal(err)
	}
	// A change the killed coordinator has never seen.
	applyOwnService(ctx, t, cp, "ryw-after-kill")
	if err := c.Coordinators[old].Process.Start(); err != nil {
		t.Fatal(err)
	}
	for i := range 16 {
		if _, _, err := readRollout(ctx, cp, "ryw-after-kill"); err != nil {
			t.Fatalf("query %d after %s restarted: %v", i+1, c.Coordinators[old].ID, err)
		}
	}

	gen, res, err := readRollout(ctx, cp, "ryw-1", "--stale")
	if err != nil || gen == 0 || !strings.Contains(res.Stderr, "note: --stale: answered by coordinator") {
		t.Fatalf("status --stale: generation %d, %v, stderr %q", gen, err, res.Stderr)
	}

	var declined float64
	for i := range c.Coordinators {
		text, err := c.Metrics(ctx, i)
		if err != nil {
			continue
		}
		v, _ := harness.MetricValue(text, "switchyard_coordinator_queries_total", map[string]string{"result": "declined"})
		declined += v
	}
	t.Logf("queries declined by coordinators that could not answer as current: %v", declined)
	if declined == 0 {
		t.Error("no coordinator ever declined a query; followers should have")
	}
}
