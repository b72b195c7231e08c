package coordinator

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/audit"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A request names the subject its answer goes to, and a coordinator may
// publish where no one else may: the desired-state and drills buckets, the
// audit stream, the intents, the beacon. A viewer (read only) or an
// operator who names one of those as the reply subject of a query, or in
// an intent's reply header, must not have the coordinator write its answer
// there (overwriting the signed document of a service, a record in the
// audit chain): answers go to inboxes only, and the others are counted.
func TestSecured_AnswersGoToInboxesOnly(t *testing.T) {
	b, c, operator, watcher := securedRollout(t)

	// What lands, from here on, on the subjects the coordinator alone may
	// write that a coordinator's identity may read (the buckets) or an
	// agent's (the fleet subjects, where the leader's own are empty).
	type landing struct {
		subject string
		data    []byte
	}
	var mu sync.Mutex
	var landed []landing
	agent := b.connect(t, bus.RoleAgent, "edge-1")
	for nc, subjects := range map[*nats.Conn][]string{watcher: {bus.DesiredKeySubject("web"), bus.DrillsAll()}, agent: {bus.FleetAll()}} {
		for _, subject := range subjects {
			if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
				if m.Subject == bus.BeaconSubject && len(m.Data) == 0 {
					return // the leader's own, every 2 s
				}
				mu.Lock()
				landed = append(landed, landing{m.Subject, m.Data})
				mu.Unlock()
			}); err != nil {
				t.Fatal(err)
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	malformed := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues(state.CodeMalformed))

	targets := []string{bus.DesiredKeySubject("web"), bus.DrillKeySubject("d-1"), bus.AuditSubject(), bus.IntentSubject(bus.IntentKindRollout), bus.BeaconSubject}
	viewer := b.connect(t, bus.RoleViewer, "eve")
	query, err := proto.Marshal(&sv1.RolloutsQuery{Rollout: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		if err := viewer.PublishRequest(bus.QuerySubject(bus.QueryRollouts), target, query); err != nil {
			t.Fatal(err)
		}
		if err := viewer.PublishRequest(bus.QuerySubject(bus.QueryCoordinators), target, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i, target := range targets {
		data, err := proto.Marshal(applyIntent(fmt.Sprintf("evil-%d", i), "web-2"))
		if err != nil {
			t.Fatal(err)
		}
		msg := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
		msg.Data = data
		msg.Header.Set(bus.ReplyHeader, target)
		msg.Header.Set(bus.MsgIDHeader, fmt.Sprintf("evil-%d", i))
		if err := operator.PublishMsg(msg); err != nil {
			t.Fatal(err)
		}
	}
	// Queries are answered in order, intents taken in order: once a
	// query and an intent sent after them are answered, those were too.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var ans sv1.RolloutsAnswer
	if err := bus.Query(ctx, viewer, bus.QueryRollouts, &sv1.RolloutsQuery{Rollout: "web-1"}, &ans); err != nil {
		t.Fatal(err)
	}
	send(t, operator, applyIntent("i-last", "web-3"))
	refused := func() float64 { return testutil.ToFloat64(c.srv.metrics.repliesRefused) }
	for deadline := time.Now().Add(5 * time.Second); refused() < float64(3*len(targets)) && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	if got := refused(); got != float64(3*len(targets)) {
		t.Errorf("switchyard_coordinator_replies_refused_total %v, want %d (two queries and an intent for each of %d subjects)", got, 3*len(targets), len(targets))
	}
	mu.Lock()
	defer mu.Unlock()
	for _, l := range landed {
		if l.subject == bus.DesiredKeySubject("web") {
			// The leader's own writes of web's document: signed.
			if _, _, err := testTrust.OpenDesired(l.data, "web", time.Now()); err != nil {
				t.Errorf("an unsigned message landed on %s (%d bytes): %v", l.subject, len(l.data), err)
			}
			continue
		}
		t.Errorf("a message landed on %s (%d bytes)", l.subject, len(l.data))
	}
	// An answer on the intent subject would be taken as an intent, and
	// refused as malformed.
	if got := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues(state.CodeMalformed)); got != malformed {
		t.Errorf("%v malformed intents taken from the stream, want none", got-malformed)
	}
	// An answer in the audit stream would stop its export: the last
	// record must still be one.
	js, err := jetstream.New(watcher)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := audit.StreamLastSeq(ctx, js); err != nil {
		t.Errorf("audit stream: %v", err)
	}
	if ds := desiredInBucket(t, watcher, "web"); ds == nil {
		t.Fatal("web's document is gone from the bucket")
	}
}

// The NATS server answers a JetStream API request on whatever reply
// subject the request names, and stores the answer when a stream captures
// that subject: an agent or an operator, who may read the desired-state
// bucket through the API, can so replace a service's signed document with
// the server's JSON. The leader follows the buckets' keys and writes the
// document again at once, instead of at its periodic round (30 s).
func TestSecured_ADocumentReplacedThroughAJetStreamReplyIsWrittenAgain(t *testing.T) {
	b, c, operator, watcher := securedRollout(t)
	js, err := jetstream.New(watcher)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, bus.DesiredBucket)
	if err != nil {
		t.Fatal(err)
	}
	before, err := kv.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, who := range []*nats.Conn{operator, b.connect(t, bus.RoleAgent, "edge-1")} {
		if err := who.PublishRequest("$JS.API.STREAM.INFO.KV_"+bus.DesiredBucket, bus.DesiredKeySubject("web"), nil); err != nil {
			t.Fatal(err)
		}
		if err := who.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the bucket to hold the server's answer", 10*time.Second, func() bool {
		e, err := kv.Get(ctx, "web")
		return err == nil && e.Revision() > before.Revision()
	})
	waitFor(t, "web's signed document written again", 10*time.Second, func() bool {
		e, err := kv.Get(ctx, "web")
		if err != nil {
			return false
		}
		ds, _, err := testTrust.OpenDesired(e.Value(), "web", time.Now())
		return err == nil && ds.GetRolloutId() == "web-1"
	})
	if got := testutil.ToFloat64(c.srv.metrics.publishes.WithLabelValues("replaced_unverified")); got < 1 {
		t.Errorf("switchyard_coordinator_desired_publishes_total{result=\"replaced_unverified\"} %v, want at least 1", got)
	}
}

// securedRollout starts a coordinator on a secured bus and has an operator
// apply rollout web-1; watcher holds a coordinator's identity.
func securedRollout(t *testing.T) (b *securedBus, c *testCoordinator, operator, watcher *nats.Conn) {
	t.Helper()
	b = startSecuredBus(t)
	c = startCoordinatorWith(t, b.url, t.TempDir(), func(c *Config) {
		c.NATS = bus.Security{Creds: b.credsFile(t, bus.RoleCoordinator, "c1"), CA: b.ca.CAPath()}
	})
	operator = b.connect(t, bus.RoleOperator, "alice")
	if res := send(t, operator, applyIntent("i-1", "web-1")); !res.GetAccepted() {
		t.Fatalf("apply: %v", res)
	}
	watcher = b.connect(t, bus.RoleCoordinator, "watcher")
	waitFor(t, "the signed document of web in the bucket", 10*time.Second, func() bool {
		return desiredInBucket(t, watcher, "web").GetRolloutId() == "web-1"
	})
	return b, c, operator, watcher
}
