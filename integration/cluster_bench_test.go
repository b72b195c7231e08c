package integration

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// failoverPause is each timed pause of the failover benchmark's rollout:
// long enough to restart the coordinator killed in the run before.
const failoverPause = 4 * time.Second

// killLead is how long before a pause ends the leader is killed: the step
// is due by the time any successor could lead, so what is measured is the
// failover, not the rest of the pause.
const killLead = 50 * time.Millisecond

// BenchmarkCluster_Failover measures failover with real processes: three
// `switchyard coordinator`s, NATS, two agents with HAProxy. A canary rollout
// waits in timed pauses; in each run the leader is killed with SIGKILL
// killLead before its pause ends, and the time is taken from the kill to
// the moment the next step's desired state (committed by the new leader,
// then written to the bucket) arrives on the bucket's subject. The killed
// coordinator is started again before the next run. At least 10 runs;
// reported: failover-median-ms, failover-max-ms, and the same from the kill
// to the new leader's decision (decided-*, stamped by it before the commit).
func BenchmarkCluster_Failover(b *testing.B) {
	runs := max(10, b.N)
	ctx := harnesstest.Context(b, time.Duration(runs)*(failoverPause+5*time.Second)+time.Minute)
	sy, be := binaries(b)
	url := harnesstest.StartNATS(b)
	nc := connectNATS(b, url)
	gens := recordGenerations(b, nc, "web")
	// The harness's progress lines would bury the figures.
	c := harnesstest.StartCluster(b, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url, Log: io.Discard})
	f := harnesstest.StartFleet(b, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be, NATS: url, TrustKeys: []string{c.TrustKey()}, Log: io.Discard})

	// setWeight 1, pause, setWeight 2, pause, ... with spare pauses for
	// runs that start too late in theirs.
	pauses := runs + 5
	var spec strings.Builder
	spec.WriteString("version: v1\nname: web-failover-1\nservice: web\nfrom: blue\nto: green\nstrategy:\n  canary:\n    steps:\n")
	for i := range pauses {
		fmt.Fprintf(&spec, "      - setWeight: %d\n      - pause: {duration: %s}\n", i+1, failoverPause)
	}
	spec.WriteString("      - setWeight: 100\n")
	if _, err := f.Apply(ctx, writeSpec(b, "failover", spec.String())); err != nil {
		b.Fatal(err)
	}

	var published, decided []time.Duration
	for p := 0; p < pauses && len(published) < runs; p++ {
		step := int32(2*p + 1)
		leader, err := c.WaitLeader(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var r *sv1.Rollout
		err = harness.Poll(ctx, 10*time.Millisecond, func(ctx context.Context) error {
			ans, err := c.Rollouts(ctx, leader, "web-failover-1")
			if err != nil {
				return err
			}
			r = ans.GetRollouts()[0].GetRollout()
			if r.GetStep() < step {
				return fmt.Errorf("at step %d, want %d", r.GetStep(), step)
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if r.GetStep() != step || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
			b.Fatalf("rollout %s at step %d, want progressing at %d", r.GetPhase(), r.GetStep(), step)
		}
		killAt := r.GetStepStartedAt().AsTime().Add(failoverPause - killLead)
		if time.Until(killAt) < 0 {
			b.Logf("pause %d: too late to kill before it ends; next pause", p)
			continue
		}
		time.Sleep(time.Until(killAt)) // the kill is timed to the pause, not a wait for a condition
		killed := time.Now()
		if err := c.Kill(leader); err != nil {
			b.Fatal(err)
		}
		var at time.Time
		err = harness.Poll(ctx, 5*time.Millisecond, func(context.Context) error {
			g, when := gens.lastPublished("web")
			if g <= r.GetGeneration() {
				return fmt.Errorf("bucket at generation %d", g)
			}
			at = when
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		published = append(published, at.Sub(killed))

		if err := c.Start(ctx, leader); err != nil {
			b.Fatal(err)
		}
		next, err := c.WaitLeader(ctx)
		if err != nil {
			b.Fatal(err)
		}
		ans, err := c.Rollouts(ctx, next, "web-failover-1")
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range ans.GetRollouts()[0].GetRollout().GetHistory() {
			if strings.HasPrefix(e.GetMessage(), "paused") && e.GetIndex() > r.GetGeneration() && e.GetAt().AsTime().After(killed) {
				decided = append(decided, e.GetAt().AsTime().Sub(killed))
				break
			}
		}
		if err := c.WaitReplicated(ctx); err != nil {
			b.Fatal(err)
		}
		b.Logf("run %d: killed %s, next step published %v later", len(published), c.Coordinators[leader].ID, published[len(published)-1].Round(time.Millisecond))
	}
	if len(published) < runs {
		b.Fatalf("only %d of %d runs killed the leader in time", len(published), runs)
	}
	b.StopTimer()
	reportMedianMax(b, "failover", published)
	reportMedianMax(b, "decided", decided)
	b.ReportMetric(float64(len(published)), "runs")
	b.ReportMetric(0, "ns/op")
}

func reportMedianMax(b *testing.B, name string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	s := slices.Clone(d)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	med := ms(s[len(s)/2])
	if len(s)%2 == 0 {
		med = (ms(s[len(s)/2-1]) + ms(s[len(s)/2])) / 2
	}
	b.ReportMetric(med, name+"-median-ms")
	b.ReportMetric(ms(s[len(s)-1]), name+"-max-ms")
}
