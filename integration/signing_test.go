package integration

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestSigning_ForgedDocumentsAreRefusedAndTheNextDecisionApplies writes, with
// write access to the desired-state bucket (what a stolen coordinator
// credential gives), every kind of bad document the agents must refuse:
// forged under an unknown key, unsigned, one byte flipped, expired,
// replayed older, another service's, and a forgery with a huge generation.
// Each is refused with its own counter while HAProxy keeps serving what the
// coordinator decided, and the next real decision still applies.
func TestSigning_ForgedDocumentsAreRefusedAndTheNextDecisionApplies(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be})
	nc := connectNATS(t, f.Bus)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, bus.DesiredBucket)
	if err != nil {
		t.Fatal(err)
	}
	key, err := bus.LoadSigningKey(f.SigningKey())
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := bus.NewSigner(key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := bus.NewKeyring(trusted.Public())
	_, strangerKey, _ := ed25519.GenerateKey(rand.Reader)
	stranger, _ := bus.NewSigner(strangerKey, time.Hour)

	// The fleet's first document (before any rollout), kept for a replay.
	waitDocument := func(minGen uint64) ([]byte, *sv1.DesiredState) {
		t.Helper()
		var raw []byte
		var ds *sv1.DesiredState
		err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
			e, err := kv.Get(ctx, "web")
			if err != nil {
				return err
			}
			d, _, err := ring.OpenDesired(e.Value(), "web", time.Now())
			if err != nil {
				return err
			}
			if d.GetGeneration() < minGen {
				return fmt.Errorf("bucket at generation %d, want %d", d.GetGeneration(), minGen)
			}
			raw, ds = e.Value(), d
			return nil
		})
		if err != nil {
			t.Fatalf("desired state of web: %v", err)
		}
		return raw, ds
	}
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	view, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	current, ds := waitDocument(view.GetRollout().GetGeneration())
	if ds.GetEpoch() != 1 {
		t.Errorf("first cluster's documents carry epoch %d, want 1", ds.GetEpoch())
	}

	back := func(d *sv1.DesiredState) *sv1.DesiredState {
		d = proto.CloneOf(d)
		d.Waves, d.DefaultWeights = nil, map[string]uint32{harness.Blue: 100, harness.Green: 0}
		return d
	}
	seal := func(s *bus.Signer, d *sv1.DesiredState, at time.Time) []byte {
		b, err := s.SealDesired(d, at)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	newer := back(ds)
	newer.Generation += 1000
	huge := back(ds)
	huge.Epoch, huge.Generation = 1<<40, 1<<62
	older := back(ds)
	older.Generation--
	other := back(ds)
	other.Service = "api"
	other.Generation += 1000
	unsigned, _ := proto.Marshal(newer)
	// One byte of the signed body flipped (a weight, a backend name...).
	var env sv1.SignedDocument
	if err := proto.Unmarshal(current, &env); err != nil {
		t.Fatal(err)
	}
	env.Body = []byte(string(env.GetBody()))
	env.Body[len(env.Body)/2] ^= 0x01
	tampered, _ := proto.Marshal(&env)

	attacks := []struct {
		name, reason string
		raw          []byte
	}{
		{"forged under an unknown key", "unknown_key", seal(stranger, newer, time.Now())},
		{"unsigned", "malformed", unsigned},
		{"one byte flipped", "bad_signature", tampered},
		{"expired", "expired", seal(trusted, newer, time.Now().Add(-2*time.Hour))},
		{"replayed older", "stale", seal(trusted, older, time.Now())},
		{"another service's", "wrong_key", seal(trusted, other, time.Now())},
		{"huge generation, unknown key", "unknown_key", seal(stranger, huge, time.Now())},
	}
	want := map[int]map[string]float64{}
	for i := range f.Nodes {
		want[i] = map[string]float64{}
	}
	for _, a := range attacks {
		if _, err := kv.Put(ctx, "web", a.raw); err != nil {
			t.Fatal(err)
		}
		for i, n := range f.Nodes {
			want[i][a.reason]++
			err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
				m, err := f.AgentMetrics(ctx, i)
				if err != nil {
					return err
				}
				got, _ := harness.MetricValue(m, "switchyard_agent_documents_rejected_total", map[string]string{"service": "web", "reason": a.reason})
				if got < want[i][a.reason] {
					return fmt.Errorf("%s: %s rejections %v, want %v", n.ID, a.reason, got, want[i][a.reason])
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%s: %v", a.name, err)
			}
			if got := f.Sample(ctx, i, samples); got[harness.Green] != samples {
				t.Fatalf("after %s: %s serves %v, want all green", a.name, n.ID, got)
			}
		}
	}
	// Status: both nodes still on exactly the current document.
	view, err = f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED))
	if err != nil {
		t.Fatalf("after the attacks: %v", err)
	}
	checkNodes(t, view, ds.GetGeneration(), harness.Green)

	// The forgery with the huge generation is still in the bucket; the
	// coordinator's next write overwrites it, and the agents apply it.
	if _, err := f.Abort(ctx, exampleRollout, "integration test"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after abort: %v", err)
	}
	view, err = f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK))
	if err != nil {
		t.Fatalf("abort after the attacks: %v", err)
	}
	checkNodes(t, view, view.GetRollout().GetGeneration(), harness.Blue)
	m, err := f.CoordinatorMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := harness.MetricValue(m, "switchyard_coordinator_desired_publishes_total", map[string]string{"result": "replaced_unverified"}); got < 1 {
		t.Errorf("coordinator replaced_unverified = %v, want at least 1 (the forgery sat in the bucket)", got)
	}
	for i := range f.Nodes {
		m, err := f.AgentMetrics(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(m, "switchyard_agent_document_expired{service=\"web\"} 0") {
			t.Errorf("%s: document_expired is not 0 for a current document", f.Nodes[i].ID)
		}
	}
}
