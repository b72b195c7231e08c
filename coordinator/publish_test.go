package coordinator

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A leader whose desired-state bucket disappears while it leads (a NATS
// server restarted without its store, an operator deleting the bucket)
// creates the bucket again and publishes there, as a new leader would,
// instead of failing every write until leadership changes.
func TestPublish_BucketLostWhileLeadingIsCreatedAgain(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, filepath.Join(t.TempDir(), "c1"))
	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	waitFor(t, "the first desired state", 5*time.Second, func() bool {
		return desiredInBucket(t, nc, "web").GetGeneration() == res.GetIndex()
	})

	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := js.DeleteKeyValue(ctx, bus.DesiredBucket); err != nil {
		t.Fatal(err)
	}
	ab := send(t, nc, &sv1.Intent{Id: "i-2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}})
	if !ab.GetAccepted() {
		t.Fatal(ab)
	}
	waitFor(t, "the abort's desired state in a bucket created again", 10*time.Second, func() bool {
		return desiredInBucket(t, nc, "web").GetGeneration() == ab.GetIndex()
	})
	// The round that wrote it records its result only after the write:
	// wait for that, not for the next failure.
	waitPublisherHealth(t, c, "the publisher healthy again", func(err error) bool { return err == nil })
}

// waitPublisherHealth waits until the publisher's health satisfies ok: a
// publishing round records its result only after its writes, so a test that
// sees a write (or a count) must wait for the round to say so. It fails
// naming what the health last was.
func waitPublisherHealth(t *testing.T, c *testCoordinator, what string, ok func(error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for since, err := c.srv.publisher.health(); !ok(err); since, err = c.srv.publisher.health() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: publisher health %v (failing since %v)", what, err, since)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Every document the leader writes, desired state and drills, first writes
// and renewals, goes out again on its push subject once the bucket holds
// it, the same signed bytes: agents behind a leaf server, which never gets
// the bucket's own $KV.… subjects, follow these.
func TestPublish_EveryDocumentWrittenIsPushedToo(t *testing.T) {
	nc, url := startNATS(t)
	sub := func(subject string) *nats.Subscription {
		s, err := nc.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	kvDesired, pushDesired := sub(bus.DesiredKeySubject("web")), sub(bus.DesiredPushSubject("web"))
	kvDrills, pushDrills := sub(bus.DrillsAll()), sub(bus.DrillsPushAll())
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Documents valid for 4s are signed again every 2s or so.
	c := startCoordinatorWith(t, url, t.TempDir(), func(cfg *Config) { cfg.Signing.Validity = 4 * time.Second })

	// pushed waits for the put on kv's next message to come out on push,
	// byte for byte, and returns the document's fence.
	pushed := func(kv, push *nats.Subscription, what string) bus.Fence {
		t.Helper()
		put, err := kv.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("%s: no write: %v", what, err)
		}
		f, err := bus.PeekFence(put.Data)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		for {
			m, err := push.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("%s: the write of %s (%s) was not pushed: %v", what, put.Subject, f, err)
			}
			if bytes.Equal(m.Data, put.Data) {
				return f
			}
		}
	}

	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	first := pushed(kvDesired, pushDesired, "the rollout's desired state")
	if first.Generation != res.GetIndex() {
		t.Fatalf("pushed generation %d, want %d", first.Generation, res.GetIndex())
	}
	if renewed := pushed(kvDesired, pushDesired, "the desired state signed again"); renewed != first {
		t.Fatalf("renewal pushed %s, want %s", renewed, first)
	}

	for _, n := range []string{"edge-1", "edge-2", "edge-3"} {
		publishStatus(t, nc, n, 0)
	}
	waitFor(t, "three nodes seen", 5*time.Second, func() bool {
		var ans sv1.FleetAnswer
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return bus.Query(ctx, nc, bus.QueryFleet, &sv1.FleetQuery{Service: "web"}, &ans) == nil && len(ans.GetNodes()) == 3
	})
	sp := drillSpec(t, strings.Replace(testDrill, "maxNodes: 2", "maxNodes: 3", 1))
	if res := sendChaos(t, nc, &sv1.Intent{Id: "d-1", Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: sp}}}); !res.GetAccepted() {
		t.Fatalf("drill refused: %v", res)
	}
	pushed(kvDrills, pushDrills, "the drill's document")
	waitFor(t, "three pushes counted sent", 5*time.Second, func() bool {
		return testutil.ToFloat64(c.srv.metrics.pushes.WithLabelValues("sent")) >= 3
	})
}

// A leader killed between a write and its push leaves agents behind a leaf
// server without the document until their resync: the next leader pushes
// the documents it finds already written, once, when it starts leading.
func TestPublish_ANewLeaderPushesWhatItFindsWritten(t *testing.T) {
	nc, url := startNATS(t)
	dir := t.TempDir()
	c := startCoordinatorWith(t, url, dir, func(*Config) {})
	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	waitFor(t, "the document written", 10*time.Second, func() bool {
		ds := desiredInBucket(t, nc, "web")
		return ds != nil && ds.GetGeneration() == res.GetIndex()
	})
	c.stop()

	push, err := nc.SubscribeSync(bus.DesiredPushSubject("web"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	startCoordinatorWith(t, url, dir, func(*Config) {})
	m, err := push.NextMsg(15 * time.Second)
	if err != nil {
		t.Fatalf("the new leader did not push the document it found written: %v", err)
	}
	if f, err := bus.PeekFence(m.Data); err != nil || f.Generation != res.GetIndex() {
		t.Fatalf("pushed %v (%v), want generation %d", f, err, res.GetIndex())
	}
}

// After a recovery that lost entries, the bucket can hold a document of the
// same fence as this cluster's current one with other content (the lost
// lineage's decision). Agents that applied it refuse this cluster's as a
// conflict, so the leader does not write over it, counts no node at that
// fence as converged (the rollout does not complete on them), and says on
// its health and its metrics what to do; the next decision gets past it.
func TestPublish_AnotherDocumentOfTheSameFenceIsAConflictNotConvergence(t *testing.T) {
	nc, url := startNATS(t)
	dir := t.TempDir()
	c := startCoordinator(t, url, dir)
	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	var ds *sv1.DesiredState
	waitFor(t, "the document written", 10*time.Second, func() bool {
		ds = desiredInBucket(t, nc, "web")
		return ds != nil && ds.GetGeneration() == res.GetIndex()
	})
	c.stop()

	// The lost lineage's document of the same fence: other weights, signed
	// by the cluster's own key.
	lost := proto.Clone(ds).(*sv1.DesiredState)
	for _, w := range lost.GetWaves() {
		for b := range w.GetWeights() {
			w.Weights[b] = 0
		}
		w.Weights["blue"] = 100
	}
	if proto.Equal(lost, ds) {
		t.Fatal("the lost lineage's document is the same as the cluster's")
	}
	sealed, err := c.srv.docs.Signer.SealDesired(lost, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.DesiredBucket)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Put(ctx, "web", sealed)
	if err != nil {
		t.Fatal(err)
	}

	c = startCoordinator(t, url, dir)
	waitFor(t, "the conflict counted", 10*time.Second, func() bool {
		return testutil.ToFloat64(c.srv.metrics.publishes.WithLabelValues("conflict")) >= 1
	})
	// The round records its result after counting: wait for it.
	waitPublisherHealth(t, c, "a publisher health that names raise-epoch", func(err error) bool {
		return err != nil && strings.Contains(err.Error(), "raise-epoch")
	})
	for _, n := range []string{"edge-1", "edge-2"} {
		publishStatus(t, nc, n, res.GetIndex())
	}
	waitFor(t, "two nodes seen", 5*time.Second, func() bool {
		_, live := c.srv.fleet.Convergence("web", res.GetIndex())
		return live == 2
	})
	time.Sleep(statusAskGrace + time.Second) // past the restarted leader's wait for the fleet
	if p := rolloutPhase(c, "web-1"); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		t.Fatalf("phase %v with every node on the other document of the fence", p)
	}
	ans, err := c.srv.Rollouts(&sv1.RolloutsQuery{Rollout: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	if v := ans.GetRollouts()[0]; v.GetConverged() != 0 || v.GetLive() != 2 {
		t.Fatalf("rollout view counts %d/%d converged, want 0/2", v.GetConverged(), v.GetLive())
	}
	if e, err := kv.Get(ctx, "web"); err != nil || e.Revision() != rev {
		t.Fatalf("the bucket was written over the conflict: %v", err)
	}

	// The next decision has a higher fence: written, and no conflict left.
	ab := send(t, nc, &sv1.Intent{Id: "i-2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}})
	if !ab.GetAccepted() {
		t.Fatal(ab)
	}
	waitFor(t, "the abort's document written", 10*time.Second, func() bool {
		return desiredInBucket(t, nc, "web").GetGeneration() == ab.GetIndex()
	})
	waitPublisherHealth(t, c, "the publisher healthy again", func(err error) bool { return err == nil })
	if c.srv.fleet.conflicted("web", bus.Fence{Epoch: ds.GetEpoch(), Generation: res.GetIndex()}) {
		t.Fatal("the conflict is still recorded after the next fence was written")
	}
}
