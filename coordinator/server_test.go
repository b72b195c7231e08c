package coordinator

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type testCoordinator struct {
	srv    *Server
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan struct{}
}

func (c *testCoordinator) stop() {
	c.cancel()
	<-c.done
}

func startCoordinator(t *testing.T, natsURL, dataDir string) *testCoordinator {
	t.Helper()
	return startCoordinatorWith(t, natsURL, dataDir, func(*Config) {})
}

// startCoordinatorWith starts a single leading coordinator whose config
// tune may change first.
func startCoordinatorWith(t *testing.T, natsURL, dataDir string, tune func(*Config)) *testCoordinator {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{
		NodeID: "c1", DataDir: dataDir, RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		NATSURL: natsURL, BootstrapExpect: 1, Registerer: reg, Gatherer: reg,
		TickInterval: 50 * time.Millisecond, Signing: testSigning,
	}
	tune(&cfg)
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &testCoordinator{srv: srv, reg: reg, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_ = srv.Run(ctx)
	}()
	t.Cleanup(c.stop)
	waitFor(t, "leadership", 10*time.Second, func() bool { return testutil.ToFloat64(srv.metrics.isLeader) == 1 })
	return c
}

func startNATS(t testing.TB) (*nats.Conn, string) {
	t.Helper()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, ns.ClientURL()
}

func applyIntent(id, name string) *sv1.Intent {
	return &sv1.Intent{Id: id, Operator: "test", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
		Name: name, Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}},
	}}}}
}

func send(t testing.TB, nc *nats.Conn, in *sv1.Intent) *sv1.IntentResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := bus.SendIntent(ctx, nc, bus.IntentKindRollout, in)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func desiredInBucket(t *testing.T, nc *nats.Conn, service string) *sv1.DesiredState {
	t.Helper()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.DesiredBucket)
	if err != nil {
		return nil
	}
	e, err := kv.Get(ctx, service)
	if err != nil {
		return nil
	}
	ds, _, err := testTrust.OpenDesired(e.Value(), service, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func publishStatus(t *testing.T, nc *nats.Conn, node string, gen uint64) {
	t.Helper()
	b, _ := proto.Marshal(&sv1.AgentStatus{Node: node, Services: []*sv1.ServiceStatus{{
		Service: "web", AppliedGeneration: gen, Driver: sv1.DriverHealth_DRIVER_HEALTH_OK, ObservedMatches: true,
	}}})
	if err := nc.Publish(bus.StatusSubject(node), b); err != nil {
		t.Fatal(err)
	}
}

func rolloutPhase(c *testCoordinator, name string) sv1.RolloutPhase {
	ans, err := c.srv.Rollouts(&sv1.RolloutsQuery{Rollout: name})
	if err != nil {
		return sv1.RolloutPhase_ROLLOUT_PHASE_UNSPECIFIED
	}
	return ans.GetRollouts()[0].GetRollout().GetPhase()
}

func TestCoordinator_IntentToDesiredStateToConvergence(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())

	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() || res.GetIndex() == 0 {
		t.Fatalf("apply: %v", res)
	}
	var ds *sv1.DesiredState
	waitFor(t, "desired state in the bucket", 5*time.Second, func() bool {
		ds = desiredInBucket(t, nc, "web")
		return ds != nil
	})
	if ds.GetGeneration() != res.GetIndex() || ds.GetRolloutId() != "web-1" {
		t.Fatalf("desired %v, want generation %d", ds, res.GetIndex())
	}

	// Sending the same intent again (a retrying pipeline) applies nothing.
	again := send(t, nc, applyIntent("i-1", "web-1"))
	if !again.GetDuplicate() || again.GetIndex() != res.GetIndex() {
		t.Fatalf("resend: %v", again)
	}

	// The rollout completes once every live node reports the generation.
	publishStatus(t, nc, "edge-1", res.GetIndex())
	publishStatus(t, nc, "edge-2", res.GetIndex()-1)
	time.Sleep(200 * time.Millisecond) // several convergence ticks, one node still behind
	if p := rolloutPhase(c, "web-1"); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		t.Fatalf("phase %v with a node behind", p)
	}
	publishStatus(t, nc, "edge-2", res.GetIndex())
	waitFor(t, "completion", 5*time.Second, func() bool {
		return rolloutPhase(c, "web-1") == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED
	})

	// Abort sends the fleet back with a newer generation.
	ab := send(t, nc, &sv1.Intent{Id: "i-2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}})
	if !ab.GetAccepted() || ab.GetIndex() <= res.GetIndex() {
		t.Fatalf("abort: %v", ab)
	}
	waitFor(t, "rollback desired state", 5*time.Second, func() bool {
		d := desiredInBucket(t, nc, "web")
		return d.GetGeneration() == ab.GetIndex() && d.GetWaves()[0].GetWeights()["blue"] == 100
	})
}

// A coordinator restarted mid-rollout knows none of the fleet. It asks
// every agent for its status and does not take the first nodes it hears
// from for the fleet: a node that answers only the ask, and has not applied
// yet, still holds the rollout.
func TestCoordinator_RestartedMidRolloutWaitsForTheWholeFleet(t *testing.T) {
	nc, url := startNATS(t)
	dir := t.TempDir()
	c := startCoordinator(t, url, dir)
	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatalf("apply: %v", res)
	}
	gen := res.GetIndex()
	c.stop()

	// edge-2 has not applied; its heartbeat is far off, it answers asks.
	answerAsks(t, nc, "edge-2", gen-1)
	c = startCoordinator(t, url, dir)
	heldForTheWholeFleet(t, nc, c, gen)
}

// answerAsks has node answer every status ask, a moment later, with a
// status at generation gen (and no heartbeat otherwise).
func answerAsks(t *testing.T, nc *nats.Conn, node string, gen uint64) {
	t.Helper()
	asks, err := nc.Subscribe(bus.StatusAskSubject, func(*nats.Msg) {
		time.AfterFunc(300*time.Millisecond, func() { publishStatus(t, nc, node, gen) })
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = asks.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// heldForTheWholeFleet: a coordinator that has just (re)started listening
// hears edge-1, which applied web-1's generation gen, first; edge-2, which
// has not, answers its ask. The rollout must wait for edge-2, and complete
// once it applied.
func heldForTheWholeFleet(t *testing.T, nc *nats.Conn, c *testCoordinator, gen uint64) {
	t.Helper()
	publishStatus(t, nc, "edge-1", gen)
	time.Sleep(statusAskGrace + time.Second)
	if p := rolloutPhase(c, "web-1"); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		t.Fatalf("phase %v with edge-2 not applied (it answered the ask)", p)
	}
	publishStatus(t, nc, "edge-2", gen)
	waitFor(t, "completion", 5*time.Second, func() bool {
		return rolloutPhase(c, "web-1") == sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED
	})
}

// The leader tells the fleet that it leads, every bus.BeaconInterval; an
// agent that stops hearing it is cut off from the coordinators.
func TestCoordinator_LeaderBeacons(t *testing.T) {
	nc, url := startNATS(t)
	beacons, err := nc.SubscribeSync(bus.BeaconSubject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	c := startCoordinator(t, url, t.TempDir())
	for i := range 2 {
		if _, err := beacons.NextMsg(2 * bus.BeaconInterval); err != nil {
			t.Fatalf("beacon %d of the leader: %v", i, err)
		}
	}
	// A coordinator that stopped leads nothing and says nothing.
	c.stop()
	for heard := 0; ; heard++ {
		if _, err := beacons.NextMsg(2 * bus.BeaconInterval); err != nil {
			break
		}
		if heard > 3 {
			t.Fatal("beacons go on after the coordinator stopped")
		}
	}
}

func TestCoordinator_MalformedAndInvalidIntentsAreRefusedAndCounted(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	js, _ := jetstream.New(nc)

	publishRaw := func(body []byte, msgID string) *sv1.IntentResult {
		t.Helper()
		inbox := nc.NewRespInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		m := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
		m.Data = body
		m.Header.Set(bus.ReplyHeader, inbox)
		if msgID != "" {
			m.Header.Set(bus.MsgIDHeader, msgID)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		r, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var res sv1.IntentResult
		unmarshal := proto.Unmarshal
		if bus.IsJSON(body) {
			unmarshal = protojson.Unmarshal // answered in the intent's encoding
		}
		if err := unmarshal(r.Data, &res); err != nil {
			t.Fatal(err)
		}
		return &res
	}

	res := publishRaw([]byte("\xff\xfe not an intent"), "m-1")
	if res.GetAccepted() || res.GetCode() != "malformed" {
		t.Fatalf("garbage: %v", res)
	}
	res = publishRaw([]byte(`{"id": "j-1", "applyRollout": {"spec": {"name": "x", "service": "web", "from": "blue", "to": "blue", "strategy": {"blueGreen": {}}}}}`), "")
	if res.GetAccepted() || res.GetCode() != "invalid" || !strings.Contains(res.GetError(), "spec.to") {
		t.Fatalf("invalid spec: %v", res)
	}
	res = publishRaw([]byte(`{"id": "j-2", "colour": "red"}`), "")
	if res.GetCode() != "malformed" || !strings.Contains(res.GetError(), "colour") {
		t.Fatalf("unknown json field: %v", res)
	}
	if got := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues("malformed")); got != 2 {
		t.Errorf("malformed counter = %v, want 2", got)
	}
	if got := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues("invalid")); got != 1 {
		t.Errorf("invalid counter = %v, want 1", got)
	}
	if n := len(c.srv.fsm.State().Rollouts()); n != 0 {
		t.Fatalf("%d rollouts committed from bad intents", n)
	}

	// A protojson intent from a shell pipeline works, and the coordinator is
	// still consuming after the bad ones.
	res = publishRaw([]byte(`{"id": "j-3", "operator": "ci", "applyRollout": {"spec": {"name": "web-ok", "service": "web", "from": "blue", "to": "green", "strategy": {"blueGreen": {}}}}}`), "")
	if !res.GetAccepted() || res.GetRolloutId() != "web-ok" {
		t.Fatalf("protojson intent: %v", res)
	}
}

func TestCoordinator_RestartKeepsStateAndRepublishes(t *testing.T) {
	nc, url := startNATS(t)
	dir := filepath.Join(t.TempDir(), "c1")
	c := startCoordinator(t, url, dir)
	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	c.stop()

	// Lose the bucket's content, as if NATS had lost it: the restarted leader
	// republishes from its own state.
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := js.DeleteKeyValue(ctx, bus.DesiredBucket); err != nil {
		t.Fatal(err)
	}
	c2 := startCoordinator(t, url, dir)
	if p := rolloutPhase(c2, "web-1"); p != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
		t.Fatalf("after restart phase %v", p)
	}
	waitFor(t, "republished desired state", 5*time.Second, func() bool {
		return desiredInBucket(t, nc, "web").GetGeneration() == res.GetIndex()
	})
}
