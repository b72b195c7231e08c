package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
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

// TestRotation_SigningKeyRotatedUnderARunningRollout follows the rotation
// procedure of docs/security.md while a canary rollout is under way: agents
// trust old and new, coordinators restart one by one signing with the new
// key, agents drop the old key. The rollout goes on at every step and no
// agent refuses a single genuine document.
func TestRotation_SigningKeyRotatedUnderARunningRollout(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 6*time.Minute)
	sy, be := binaries(t)
	url := harnesstest.StartNATS(t)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url})
	oldKey := c.TrustKeyPrivate()
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be, NATS: url, TrustKeys: []string{c.TrustKey()}})
	nc := connectNATS(t, url)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}

	spec := "version: v1\nname: web-rotate-1\nservice: web\nfrom: blue\nto: green\nstrategy:\n  canary:\n    steps:\n" +
		"      - setWeight: 20\n      - pause: {}\n      - setWeight: 40\n      - pause: {}\n      - setWeight: 60\n      - pause: {}\n      - setWeight: 100\n"
	if _, err := f.Apply(ctx, writeSpec(t, "rotate", spec)); err != nil {
		t.Fatal(err)
	}
	approve := func(step int32) {
		t.Helper()
		if _, err := f.WaitRollout(ctx, "web-rotate-1", atStep(f, step)); err != nil {
			t.Fatal(err)
		}
		if res, err := f.Run(ctx, "rollout", "approve", "web-rotate-1"); err != nil || res.ExitCode != 0 {
			t.Fatalf("approve at step %d: %v %+v", step, err, res)
		}
	}
	restartAgents := func(keys []string) {
		t.Helper()
		for i := range f.Nodes {
			if err := f.SetTrustKeys(i, keys); err != nil {
				t.Fatal(err)
			}
			if err := f.StopAgent(i); err != nil {
				t.Fatal(err)
			}
			if err := f.StartAgent(ctx, i); err != nil {
				t.Fatal(err)
			}
		}
	}
	signedBy := func() string {
		t.Helper()
		kv, err := js.KeyValue(ctx, bus.DesiredBucket)
		if err != nil {
			t.Fatal(err)
		}
		e, err := kv.Get(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		return keyIDOf(t, e.Value())
	}

	// 1. A new key.
	newKey := filepath.Join(t.TempDir(), "new.key")
	newPub, err := bus.GenerateSigningKey(newKey)
	if err != nil {
		t.Fatal(err)
	}
	oldPub, err := bus.LoadPublicKey(c.TrustKey())
	if err != nil {
		t.Fatal(err)
	}
	// 2. Agents trust both (at the first gate, 20% on green).
	if _, err := f.WaitRollout(ctx, "web-rotate-1", atStep(f, 1)); err != nil {
		t.Fatal(err)
	}
	restartAgents([]string{c.TrustKey(), newKey + ".pub"})
	approve(1)

	// 3. Coordinators sign with the new key, one by one, trusting the old.
	if _, err := f.WaitRollout(ctx, "web-rotate-1", atStep(f, 3)); err != nil {
		t.Fatal(err)
	}
	c.SwitchSigningKey(newKey, oldKey+".pub")
	for i, co := range c.Coordinators {
		if err := co.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	harnesstest.Eventually(t, ctx, "the bucket's document signed with the new key", func(ctx context.Context) error {
		if id := signedBy(); id != bus.KeyID(newPub) {
			return fmt.Errorf("signed by %s (old key %s), want %s", id, bus.KeyID(oldPub), bus.KeyID(newPub))
		}
		return nil
	})
	approve(3)

	// 4. Agents drop the old key.
	if _, err := f.WaitRollout(ctx, "web-rotate-1", atStep(f, 5)); err != nil {
		t.Fatal(err)
	}
	restartAgents([]string{newKey + ".pub"})
	approve(5)
	if _, err := f.WaitRollout(ctx, "web-rotate-1", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}

	// No agent refused a genuine document at any time: every refusal is
	// logged with its reason, across restarts.
	for _, n := range f.Nodes {
		b, err := os.ReadFile(n.Agent.StderrPath())
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "desired state refused") {
				t.Errorf("%s refused a document during the rotation: %s", n.ID, line)
			}
		}
	}
	for i, n := range f.Nodes {
		m, err := f.AgentMetrics(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		for _, reason := range append(bus.RejectReasons(), "stale", "conflict") {
			if v, _ := harness.MetricValue(m, "switchyard_agent_documents_rejected_total", map[string]string{"service": "web", "reason": reason}); v != 0 {
				t.Errorf("%s: %v documents rejected as %s", n.ID, v, reason)
			}
		}
	}
}

// keyIDOf reads the key id of a signed document without verifying it.
func keyIDOf(t *testing.T, raw []byte) string {
	t.Helper()
	var env sv1.SignedDocument
	if err := proto.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	return env.GetKeyId()
}
