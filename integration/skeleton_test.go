package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// exampleRollout is the name of the rollout in examples/bluegreen.yaml.
const exampleRollout = "web-green-1"

// samples is how many requests through one HAProxy must all agree before a
// node counts as switched: with weights 100/0 a single stray answer means
// the weights are wrong, not unlucky.
const samples = 20

func TestSkeleton_BlueGreenSwitchAndAbort(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 3, Service: "web", Switchyard: sy, Backend: be})

	res, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("apply: %s", strings.TrimSpace(res.Stdout))
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatalf("after apply: %v", err)
	}
	view, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatalf("status after apply: %v", err)
	}
	switched := view.GetRollout().GetGeneration()
	checkNodes(t, view, switched, harness.Green)

	// A crash while green must not cost green: the proxy keeps its weights
	// while the agent is gone, and the agent comes back from its local state
	// to the same generation without a new command.
	crashAndRestartAgent(t, ctx, f, 1, switched, harness.Green)

	if _, err := f.Abort(ctx, exampleRollout, "integration test"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after abort: %v", err)
	}
	view, err = f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatalf("status after abort: %v", err)
	}
	aborted := view.GetRollout().GetGeneration()
	if aborted <= switched {
		t.Errorf("abort generation %d, want above the switch's %d (generations only grow)", aborted, switched)
	}
	checkNodes(t, view, aborted, harness.Blue)

	crashAndRestartAgent(t, ctx, f, 2, aborted, harness.Blue)
}

// checkNodes asserts that every node of a rollout view applied generation
// and gives all weight to backend.
func checkNodes(t *testing.T, v *sv1.RolloutView, generation uint64, backend string) {
	t.Helper()
	for _, n := range v.GetNodes() {
		w := n.GetWeights()
		other := harness.Blue
		if backend == harness.Blue {
			other = harness.Green
		}
		if n.GetAppliedGeneration() != generation || w[backend] != 100 || w[other] != 0 || n.GetStale() {
			t.Errorf("node %s: generation %d weights %s stale %v; want generation %d, %s=100 %s=0, not stale",
				n.GetNode(), n.GetAppliedGeneration(), harness.Weights(n), n.GetStale(), generation, backend, other)
		}
	}
}

// crashAndRestartAgent SIGKILLs node i's agent, checks that its HAProxy
// keeps serving backend meanwhile, starts the agent again and checks that,
// once the coordinator has heard from the new process, it reports the same
// generation and weights and traffic is still all backend.
func crashAndRestartAgent(t *testing.T, ctx context.Context, f *harness.Fleet, i int, generation uint64, backend string) {
	t.Helper()
	node := f.Nodes[i].ID
	if err := f.KillAgent(i); err != nil {
		t.Fatal(err)
	}
	if got := f.Sample(ctx, i, samples); got[backend] != samples {
		t.Errorf("%s with its agent dead: %v, want all %d %s", node, got, samples, backend)
	}
	restarted := time.Now()
	if err := f.StartAgent(ctx, i); err != nil {
		t.Fatalf("restart agent: %v", err)
	}
	if got := f.Sample(ctx, i, samples); got[backend] != samples {
		t.Errorf("%s right after its agent restarted: %v, want all %d %s", node, got, samples, backend)
	}

	var nv *sv1.NodeView
	var rollout *sv1.Rollout
	err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		// Asked before the status call: a node seen less than
		// (asked - restarted) ago was seen after the restart, whatever the
		// call's own delay.
		asked := time.Now()
		ans, err := f.Status(ctx, exampleRollout)
		if err != nil {
			return err
		}
		for _, v := range ans.GetRollouts() {
			for _, n := range v.GetNodes() {
				if n.GetNode() != node {
					continue
				}
				since := time.Duration(n.GetSecondsSinceSeen() * float64(time.Second))
				if !asked.Add(-since).After(restarted) {
					return fmt.Errorf("%s last seen %v ago, before its restart %v ago", node, since, asked.Sub(restarted))
				}
				nv, rollout = n, v.GetRollout()
				return nil
			}
		}
		return fmt.Errorf("%s not in the status of %s", node, exampleRollout)
	})
	if err != nil {
		t.Fatalf("coordinator did not hear from the restarted agent: %v", err)
	}
	w := nv.GetWeights()
	if nv.GetAppliedGeneration() != generation || w[backend] != 100 {
		t.Errorf("%s after restart reports generation %d weights %s; want generation %d with %s=100", node, nv.GetAppliedGeneration(), harness.Weights(nv), generation, backend)
	}
	if rollout.GetGeneration() != generation {
		t.Errorf("rollout generation moved from %d to %d with no command", generation, rollout.GetGeneration())
	}
	if got := f.Sample(ctx, i, samples); got[backend] != samples {
		t.Errorf("%s after its agent reported in: %v, want all %d %s", node, got, samples, backend)
	}
}

const goodSpec = `version: v1
name: web-green-1
service: web
from: blue
to: green
strategy:
  blueGreen: {}
`

func TestSkeleton_BadInput(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 1, Service: "web", Switchyard: sy, Backend: be})
	dir := t.TempDir()

	for _, tc := range []struct {
		name, spec, field string
	}{
		{"unknown field", strings.Replace(goodSpec, "blueGreen", "blueGren", 1), "spec.strategy.blueGren"},
		{"missing to", strings.Replace(goodSpec, "to: green\n", "", 1), "spec.to"},
		{"from equals to", strings.Replace(goodSpec, "to: green", "to: blue", 1), "spec.to"},
		{"invalid service name", strings.Replace(goodSpec, "service: web", "service: web/prod", 1), "spec.service"},
		{"weight out of range", strings.Replace(goodSpec, "blueGreen: {}", "canary: {steps: [{setWeight: 140}]}", 1), "spec.strategy.canary.steps[0].setWeight: 140 is out of range"},
		{"ramp weight out of range", strings.Replace(goodSpec, "blueGreen: {}", "blueGreen: {ramp: [50, 120]}", 1), "spec.strategy.blueGreen.ramp[1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			if err := os.WriteFile(path, []byte(tc.spec), 0o644); err != nil {
				t.Fatal(err)
			}
			res, err := f.Run(ctx, "rollout", "apply", "-f", path, "--timeout", "30s")
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 1 || !strings.Contains(res.Stderr, tc.field) {
				t.Errorf("apply: exit %d, stderr %q; want exit 1 and an error naming %s", res.ExitCode, res.Stderr, tc.field)
			}
		})
	}

	res, err := f.Run(ctx, "rollout", "apply")
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 2 {
		t.Errorf("apply without -f: exit %d (stderr %q), want 2 for a usage error", res.ExitCode, res.Stderr)
	}

	// SWITCHYARD_NATS instead of --nats, as a pipeline would set it.
	env, err := f.Bus.CLIEnv()
	if err != nil {
		t.Fatal(err)
	}
	res, err = harness.RunCLI(ctx, sy, env, "rollout", "status", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("status with SWITCHYARD_NATS: exit %d: %s", res.ExitCode, res.Stderr)
	}
	var ans sv1.RolloutsAnswer
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(res.Stdout), &ans); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, res.Stdout)
	}
	if len(ans.GetRollouts()) != 0 {
		t.Fatalf("refused specs left rollouts behind: %v", ans.GetRollouts())
	}

	// Past the CLI, straight onto the intent stream: bytes that are no
	// intent, and a well-formed intent with an invalid spec. The
	// coordinator must answer both and keep running.
	nc := connectNATS(t, f.Bus)

	malformedBefore := rejected(t, ctx, f, "malformed")
	result := publishRawIntent(t, ctx, nc, []byte("not an intent \xff\x00"))
	if result.GetAccepted() || result.GetCode() != "malformed" {
		t.Errorf("malformed intent answered %v; want accepted=false code=malformed", result)
	}
	waitRejected(t, ctx, f, "malformed", malformedBefore+1)

	invalidBefore := rejected(t, ctx, f, "invalid")
	id := fmt.Sprintf("it-invalid-%d", time.Now().UnixNano())
	result, err = sendIntent(ctx, nc, bus.IntentKindRollout, &sv1.Intent{
		Id:        id,
		Operator:  "integration-test",
		CreatedAt: timestamppb.Now(),
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
			Name: "web-bad-1", Service: "web", From: "blue", To: "blue",
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if result.GetAccepted() || result.GetCode() != "invalid" || !strings.Contains(result.GetError(), "spec.to") {
		t.Errorf("intent with from == to answered %v; want accepted=false code=invalid and an error naming spec.to", result)
	}
	waitRejected(t, ctx, f, "invalid", invalidBefore+1)

	if !f.Dev.Running() {
		t.Fatalf("coordinator exited after bad intents: %v", f.Dev.Stop())
	}
	if ans, err := f.Status(ctx, ""); err != nil || len(ans.GetRollouts()) != 0 {
		t.Fatalf("status after bad intents: %v, %v; want no rollouts", ans.GetRollouts(), err)
	}

	acceptedBefore := metric(t, ctx, f, "switchyard_coordinator_intents_accepted_total", nil)
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatalf("a valid apply after bad input: %v", err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	if got := metric(t, ctx, f, "switchyard_coordinator_intents_accepted_total", nil); got < acceptedBefore+1 {
		t.Errorf("intents_accepted_total %v after a valid apply, was %v", got, acceptedBefore)
	}
}

// publishRawIntent publishes body on the rollout intent subject as a
// pipeline would, with a reply inbox, and returns the coordinator's answer.
func publishRawIntent(t *testing.T, ctx context.Context, nc *nats.Conn, body []byte) *sv1.IntentResult {
	t.Helper()
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
	msg.Data = body
	msg.Header.Set(bus.MsgIDHeader, fmt.Sprintf("it-raw-%d", time.Now().UnixNano()))
	msg.Header.Set(bus.ReplyHeader, inbox)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatalf("publish to the intent stream: %v", err)
	}
	replyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, err := sub.NextMsgWithContext(replyCtx)
	if err != nil {
		t.Fatalf("no IntentResult for a malformed intent: %v", err)
	}
	var res sv1.IntentResult
	unmarshal := proto.Unmarshal
	if t := bytes.TrimSpace(body); len(t) > 0 && t[0] == '{' {
		unmarshal = protojson.Unmarshal // a JSON intent is answered in JSON
	}
	if err := unmarshal(m.Data, &res); err != nil {
		t.Fatalf("answer is not an IntentResult: %v (%q)", err, m.Data)
	}
	return &res
}

// metric reads one coordinator metric; a counter not yet exported counts
// as 0.
func metric(t *testing.T, ctx context.Context, f *harness.Fleet, name string, labels map[string]string) float64 {
	t.Helper()
	text, err := f.CoordinatorMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := harness.MetricValue(text, name, labels)
	return v
}

func rejected(t *testing.T, ctx context.Context, f *harness.Fleet, reason string) float64 {
	t.Helper()
	return metric(t, ctx, f, "switchyard_coordinator_intents_rejected_total", map[string]string{"reason": reason})
}

func waitRejected(t *testing.T, ctx context.Context, f *harness.Fleet, reason string, want float64) {
	t.Helper()
	err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		text, err := f.CoordinatorMetrics(ctx)
		if err != nil {
			return err
		}
		got, _ := harness.MetricValue(text, "switchyard_coordinator_intents_rejected_total", map[string]string{"reason": reason})
		if got < want {
			return fmt.Errorf("intents_rejected_total{reason=%q} = %v, want %v", reason, got, want)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
