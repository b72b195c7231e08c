package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// connectNATS connects the test itself to the bus, closed with the test.
// It has a coordinator's rights: it watches every node and the buckets.
// Intents it sends (sendIntent) are signed by the bus's operator identity,
// the clusters' first admin.
func connectNATS(tb testing.TB, b harness.Bus) *nats.Conn {
	tb.Helper()
	nc, err := b.Connect(bus.RoleCoordinator, "integration-test", nats.Name("integration-test"), nats.MaxReconnects(-1))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	signer, err := b.IntentSigner()
	if err != nil {
		tb.Fatal(err)
	}
	intentSigners.Store(nc, signer)
	tb.Cleanup(func() { intentSigners.Delete(nc) })
	return nc
}

// intentSigners holds, per connection connectNATS made, the key its
// intents are signed with.
var intentSigners sync.Map

// sendIntent sends an intent over nc signed as connectNATS arranged
// (unsigned for other connections).
func sendIntent(ctx context.Context, nc *nats.Conn, kind string, in *sv1.Intent) (*sv1.IntentResult, error) {
	signer, _ := intentSigners.Load(nc)
	s, _ := signer.(*bus.IntentSigner)
	return bus.SendSignedIntent(ctx, nc, kind, in, s)
}

// generations records, as they arrive on the bus, every generation each
// agent reports as applied for one service and every desired-state document
// the coordinators write to the bucket, for the fencing invariants: no agent
// ever goes back to an older generation, and the bucket's generation of a
// service only grows.
type generations struct {
	service string

	mu sync.Mutex
	// applied[node] is the service's applied generation in every status
	// the node sent, in order.
	applied map[string][]uint64
	// published[service] is the generation of every put of the service's
	// key, in order; publishedAt the arrival time of each.
	published   map[string][]uint64
	publishedAt map[string][]time.Time
}

// recordGenerations subscribes nc to agents' status and to every key of the
// desired-state bucket.
func recordGenerations(tb testing.TB, nc *nats.Conn, service string) *generations {
	tb.Helper()
	g := &generations{service: service, applied: map[string][]uint64{}, published: map[string][]uint64{}, publishedAt: map[string][]time.Time{}}
	status, err := nc.Subscribe(bus.StatusAll(), func(m *nats.Msg) {
		var st sv1.AgentStatus
		if proto.Unmarshal(m.Data, &st) != nil {
			return
		}
		for _, s := range st.GetServices() {
			if s.GetService() == service {
				g.mu.Lock()
				g.applied[st.GetNode()] = append(g.applied[st.GetNode()], s.GetAppliedGeneration())
				g.mu.Unlock()
			}
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	prefix := strings.TrimSuffix(bus.DesiredKeySubject("*"), "*")
	desired, err := nc.Subscribe(bus.DesiredKeySubject("*"), func(m *nats.Msg) {
		at := time.Now()
		if op := m.Header.Get(bus.KVOperationHeader); op == bus.KVOperationDelete || op == bus.KVOperationPurge {
			return
		}
		// An observer: it reads the fence without verifying, which is
		// the agents' job (the bucket holds only coordinators' writes here).
		var env sv1.SignedDocument
		var body sv1.DocumentBody
		if proto.Unmarshal(m.Data, &env) != nil || proto.Unmarshal(env.GetBody(), &body) != nil {
			return
		}
		svc := strings.TrimPrefix(m.Subject, prefix)
		g.mu.Lock()
		g.published[svc] = append(g.published[svc], body.GetGeneration())
		g.publishedAt[svc] = append(g.publishedAt[svc], at)
		g.mu.Unlock()
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = status.Unsubscribe()
		_ = desired.Unsubscribe()
	})
	return g
}

// appliedBy returns the last generation node reported, 0 if none.
func (g *generations) appliedBy(node string) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	seq := g.applied[node]
	if len(seq) == 0 {
		return 0
	}
	return seq[len(seq)-1]
}

// lastPublished returns the newest generation written for service and when
// it arrived; 0 if none.
func (g *generations) lastPublished(service string) (uint64, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	seq := g.published[service]
	if len(seq) == 0 {
		return 0, time.Time{}
	}
	return seq[len(seq)-1], g.publishedAt[service][len(seq)-1]
}

// distinct drops repeats of the same value in a row.
func distinct(seq []uint64) []uint64 {
	return slices.Compact(slices.Clone(seq))
}

// check asserts the invariants and returns, per node, the distinct
// generations it went through, for the log.
func (g *generations) check(tb testing.TB, nodes []string) map[string][]uint64 {
	tb.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	seen := map[string][]uint64{}
	for _, node := range nodes {
		seq := g.applied[node]
		if len(seq) == 0 {
			tb.Errorf("no status from %s for %s", node, g.service)
			continue
		}
		d := distinct(seq)
		for i := 1; i < len(d); i++ {
			if d[i] < d[i-1] {
				tb.Errorf("%s applied generation %d after %d: went back (distinct sequence %v)", node, d[i], d[i-1], d)
			}
		}
		seen[node] = d
	}
	for svc, seq := range g.published {
		for i := 1; i < len(seq); i++ {
			// The same generation may be written again: signed anew
			// before it expires, or by a new signing key.
			if seq[i] < seq[i-1] {
				tb.Errorf("bucket key %s written with generation %d after %d (sequence %v)", svc, seq[i], seq[i-1], seq)
			}
		}
	}
	return seen
}

// sendUntilAnswered sends an intent until a coordinator answers, sending the
// same intent (same id) again after each attempt that got no answer within
// per, as a retrying pipeline does. It returns the answer and how many sends
// it took.
func sendUntilAnswered(ctx context.Context, nc *nats.Conn, in *sv1.Intent, per time.Duration) (*sv1.IntentResult, int, error) {
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, per)
		res, err := sendIntent(actx, nc, bus.IntentKindRollout, in)
		cancel()
		if err == nil {
			return res, attempt, nil
		}
		if ctx.Err() != nil {
			return nil, attempt, fmt.Errorf("intent %s: no answer after %d sends: %w", in.GetId(), attempt, err)
		}
		if !errors.Is(err, bus.ErrNoResult) && !errors.Is(err, context.DeadlineExceeded) {
			// A refused publish or a broken connection: try again, the
			// stream deduplicates by id.
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// queryIntent asks the coordinators for the recorded result of an intent.
func queryIntent(ctx context.Context, nc *nats.Conn, id string) (*sv1.IntentResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var res sv1.IntentResult
	if err := bus.Query(ctx, nc, bus.QueryIntent, &sv1.IntentQuery{Id: id}, &res); err != nil {
		return nil, err
	}
	return &res, nil
}

func applyBlueGreen(id, name, service string) *sv1.Intent {
	return &sv1.Intent{
		Id: id, Operator: "integration-test", CreatedAt: timestamppb.Now(),
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
			Name: name, Service: service, From: harness.Blue, To: harness.Green,
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
		}}},
	}
}

func controlIntent(id, verb, rollout string) *sv1.Intent {
	in := &sv1.Intent{Id: id, Operator: "integration-test", CreatedAt: timestamppb.Now()}
	ctl := &sv1.RolloutControl{Rollout: rollout}
	switch verb {
	case "pause":
		in.Action = &sv1.Intent_PauseRollout{PauseRollout: ctl}
	case "resume":
		in.Action = &sv1.Intent_ResumeRollout{ResumeRollout: ctl}
	case "approve":
		in.Action = &sv1.Intent_ApproveRollout{ApproveRollout: ctl}
	default:
		panic("controlIntent: unknown verb " + verb)
	}
	return in
}

// writeSpec writes a rollout spec to a file for `rollout apply -f`.
func writeSpec(tb testing.TB, name, text string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), name+".yaml")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// atStep is a WaitRollout condition: the rollout progresses, stands at step
// of its only wave, and every node of the fleet applied its generation.
func atStep(f *harness.Fleet, step int32) func(*sv1.RolloutView) error {
	return func(v *sv1.RolloutView) error {
		r := v.GetRollout()
		if r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || r.GetStep() != step {
			return fmt.Errorf("rollout %s %s at step %d, want progressing at step %d", r.GetId(), r.GetPhase(), r.GetStep(), step)
		}
		return f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING)(v)
	}
}

// nodeIDs lists the fleet's node ids.
func nodeIDs(f *harness.Fleet) []string {
	var ids []string
	for _, n := range f.Nodes {
		ids = append(ids, n.ID)
	}
	return ids
}

// history returns the entries of a rollout's history whose message starts
// with prefix.
func history(r *sv1.Rollout, prefix string) []*sv1.RolloutEvent {
	var out []*sv1.RolloutEvent
	for _, e := range r.GetHistory() {
		if strings.HasPrefix(e.GetMessage(), prefix) {
			out = append(out, e)
		}
	}
	return out
}

// waitStep polls coordinator i's own replica, through its read API, until
// the rollout stands at step of its only wave. It fails the test if the
// rollout went past it: a caller that wants to act inside a step must not
// act in the wrong one.
func waitStep(t testing.TB, ctx context.Context, c *harness.Cluster, i int, name string, step int32) *sv1.Rollout {
	t.Helper()
	var r *sv1.Rollout
	err := harness.Poll(ctx, 20*time.Millisecond, func(ctx context.Context) error {
		ans, err := c.Rollouts(ctx, i, name)
		if err != nil {
			return err
		}
		r = ans.GetRollouts()[0].GetRollout()
		switch {
		case r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING || r.GetStep() > step:
			return harness.Permanent(fmt.Errorf("rollout %s went past step %d: %s at step %d", name, step, r.GetPhase(), r.GetStep()))
		case r.GetStep() < step:
			return fmt.Errorf("rollout %s at step %d, want %d", name, r.GetStep(), step)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s: %v", c.Coordinators[i].ID, err)
	}
	return r
}
