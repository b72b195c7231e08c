package agent

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// startHubAndLeaf runs a hub server with JetStream in the domain "hub" and
// a leafnode port, and a PoP's leaf server attached to it without
// JetStream, as docs/operations.md ("How a PoP attaches") lays them out. It
// returns both and a client of the hub holding the desired-state and
// drills buckets.
func startHubAndLeaf(t *testing.T) (hub, leaf *server.Server, b *testBus) {
	t.Helper()
	hub, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true,
		JetStream: true, JetStreamDomain: "hub", StoreDir: t.TempDir(),
		LeafNode: server.LeafNodeOpts{Host: "127.0.0.1", Port: server.RANDOM_PORT},
	})
	if err != nil {
		t.Fatal(err)
	}
	hub.Start()
	t.Cleanup(func() { hub.Shutdown(); hub.WaitForShutdown() })
	if !hub.ReadyForConnections(10 * time.Second) {
		t.Fatal("hub not ready")
	}
	vz, err := hub.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	remote, err := url.Parse(fmt.Sprintf("nats-leaf://127.0.0.1:%d", vz.LeafNode.Port))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err = server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true,
		LeafNode: server.LeafNodeOpts{Remotes: []*server.RemoteLeafOpts{{URLs: []*url.URL{remote}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	leaf.Start()
	t.Cleanup(func() { leaf.Shutdown(); leaf.WaitForShutdown() })
	if !leaf.ReadyForConnections(10 * time.Second) {
		t.Fatal("leaf not ready")
	}
	waitFor(t, 10*time.Second, "the leaf attached to the hub", func() error {
		if hub.NumLeafNodes() != 1 {
			return fmt.Errorf("%d leaf connections", hub.NumLeafNodes())
		}
		return nil
	})
	b = &testBus{srv: hub, url: hub.ClientURL()}
	b.connect(t)
	return hub, leaf, b
}

// putAndPush writes ds to the bucket and publishes the signed bytes on its
// push subject, as the leading coordinator does.
func (b *testBus) putAndPush(t *testing.T, ds *sv1.DesiredState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := testPublisher.PutDesired(ctx, b.kv, ds, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.nc.Publish(bus.DesiredPushSubject(ds.GetService()), res.Value); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// interest is how many subscriptions the server's account has on subject,
// its leaf connections' included.
func interest(s *server.Server, subject string) int {
	return s.GlobalAccount().Interest(subject)
}

// An agent at a PoP, connected to the PoP's leaf server, learns a new
// document (a rollback, say) when the leader writes it, not at its next
// resync: NATS servers never carry a KV put's own subject ($KV.…) over a
// leaf connection, so it follows the copies the leader publishes on the
// push subjects.
func TestAgent_BehindALeafServerAppliesANewDocumentWhenItIsWritten(t *testing.T) {
	hub, leaf, b := startHubAndLeaf(t)
	b.putAndPush(t, defaults(1, map[string]uint32{"blue": 0, "green": 100}))
	kvSubjects := []string{bus.DesiredKeySubject("web"), bus.DrillKeySubject("d1")}
	before := map[string]int{}
	for _, subj := range kvSubjects {
		before[subj] = interest(leaf, subj)
	}

	cfg := testConfig(t, leaf.ClientURL())
	cfg.NATSClient.JetStreamDomain = "hub"
	cfg.Resync = 10 * time.Minute
	web := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": web})
	// The start reads the bucket through the leaf, in the hub's domain.
	ra.waitApplied(t, "web", 1)

	for _, subj := range []string{bus.DesiredPushSubject("web"), bus.DrillPushSubject("d1")} {
		waitFor(t, 10*time.Second, "the hub to hear the agent behind the leaf follow "+subj, func() error {
			if n := interest(hub, subj); n != 1 {
				return fmt.Errorf("%d subscriptions", n)
			}
			return nil
		})
	}
	// The rollback reaches it long before its resync.
	b.putAndPush(t, defaults(2, map[string]uint32{"blue": 100, "green": 0}))
	if w := ra.waitApplied(t, "web", 2); w["blue"] != 100 || w["green"] != 0 {
		t.Fatalf("applied %v, want the rollback's weights", w)
	}
	// The leaf holds only the push subscriptions: $KV.… would bring
	// nothing there.
	for _, subj := range kvSubjects {
		if n := interest(leaf, subj) - before[subj]; n != 0 {
			t.Errorf("the agent behind the leaf subscribes to %s (%d subscriptions)", subj, n)
		}
	}
}

// An agent on the hub follows the KV puts' own subjects, which the put
// delivers without waiting for its acknowledgement, and not the push
// subjects too, which would hand it every document twice.
func TestAgent_OnTheHubFollowsTheBucketsOwnSubjectsOnly(t *testing.T) {
	b := startBus(t)
	b.put(t, defaults(1, map[string]uint32{"blue": 100}))
	want := map[string]int{
		bus.DesiredKeySubject("web"):  1,
		bus.DrillKeySubject("d1"):     1,
		bus.DesiredPushSubject("web"): 0,
		bus.DrillPushSubject("d1"):    0,
	}
	before := map[string]int{}
	for subj := range want {
		before[subj] = interest(b.srv, subj) // the bucket's stream, for one
	}
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": newFakeDriver()})
	ra.waitApplied(t, "web", 1)
	for subj, w := range want {
		if n := interest(b.srv, subj) - before[subj]; n != w {
			t.Errorf("the agent holds %d subscriptions to %s, want %d", n, subj, w)
		}
	}
}

// A drill's document pushed on its push subject is delivered under the
// drill's name, as from its key subject; a push is a copy of a document
// written, so a delete marker on it is no delete.
func TestDrills_PushSubjectDeliversTheDocumentNeverADelete(t *testing.T) {
	f := &drillFollower{inbox: newInbox[drillDelivery](0)}
	del := nats.Header{}
	del.Set(bus.KVOperationHeader, bus.KVOperationDelete)
	for _, m := range []*nats.Msg{
		{Subject: bus.DrillPushSubject("d1"), Data: []byte("doc-1")},
		{Subject: bus.DrillPushSubject("d2"), Data: []byte("doc-2"), Header: del},
		{Subject: bus.DrillKeySubject("d3"), Data: []byte("doc-3")},
		{Subject: bus.DrillKeySubject("d4"), Header: del},
		{Subject: bus.DesiredPushSubject("d5"), Data: []byte("doc-5")},
	} {
		f.onMsg(m)
	}
	got := f.inbox.drain()
	want := []drillDelivery{
		{key: "d1", raw: []byte("doc-1")},
		{key: "d2", raw: []byte("doc-2")},
		{key: "d3", raw: []byte("doc-3")},
		{key: "d4", deleted: true},
	}
	if len(got) != len(want) {
		t.Fatalf("delivered %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i].key != want[i].key || string(got[i].raw) != string(want[i].raw) || got[i].deleted != want[i].deleted {
			t.Errorf("delivery %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

// A PoP whose leaf server loses the hub misses the pushes of whatever the
// leader writes meanwhile (a rollback, say), while its agents' own
// connections to the leaf stay up, so no reconnect reads the documents
// again. An agent that hears the leader's beacon again after a silence
// reads them at once, not at its next resync.
func TestAgent_BehindALeafServerReadsAgainWhenTheLeaderIsHeardAfterASilence(t *testing.T) {
	hub, leaf, b := startHubAndLeaf(t)
	b.putAndPush(t, defaults(1, map[string]uint32{"blue": 0, "green": 100}))
	cfg := testConfig(t, leaf.ClientURL())
	cfg.NATSClient.JetStreamDomain = "hub"
	cfg.Resync = 10 * time.Minute
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": newFakeDriver()})
	ra.waitApplied(t, "web", 1)
	waitFor(t, 10*time.Second, "the agent to hear the leader's beacon through the leaf", func() error {
		if interest(hub, bus.BeaconSubject) == 0 {
			return fmt.Errorf("no interest in the beacon on the hub")
		}
		if err := b.nc.Publish(bus.BeaconSubject, nil); err != nil {
			t.Fatal(err)
		}
		if ra.lastBeacon.Load() == 0 {
			return fmt.Errorf("no beacon heard")
		}
		return nil
	})

	// The rollback is written while the leaf cannot reach the hub: its
	// push goes nowhere here, and the leader is silent for longer than a
	// node waits before it counts itself cut off.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := testPublisher.PutDesired(ctx, b.kv, defaults(2, map[string]uint32{"blue": 100, "green": 0}), time.Now()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(beaconOverdue + 500*time.Millisecond)
	if gen, _ := ra.Applied("web"); gen != 1 {
		t.Fatalf("applied generation %d with no push and no read", gen)
	}
	// The leaf is back: the leader's next beacon brings the node the
	// rollback.
	if err := b.nc.Publish(bus.BeaconSubject, nil); err != nil {
		t.Fatal(err)
	}
	if w := ra.waitApplied(t, "web", 2); w["blue"] != 100 {
		t.Fatalf("applied %v, want the rollback's weights", w)
	}
}
