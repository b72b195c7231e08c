package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// publishIntentRaw publishes body as an intent and returns the raw result.
func publishIntentRaw(t *testing.T, nc *nats.Conn, body []byte) []byte {
	t.Helper()
	js, _ := jetstream.New(nc)
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	m := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
	m.Data = body
	m.Header.Set(bus.ReplyHeader, inbox)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	r, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return r.Data
}

func TestIntents_JSONIsAnsweredInJSONAndTakesTheFilesVersion(t *testing.T) {
	nc, url := startNATS(t)
	startCoordinator(t, url, t.TempDir())

	body := `{"id": "ci-1", "operator": "ci", "applyRollout": {"spec": {"version": "v1",
	  "name": "web-json", "service": "web", "from": "blue", "to": "green", "strategy": {"blueGreen": {}}}}}`
	raw := publishIntentRaw(t, nc, []byte(body))
	var res sv1.IntentResult
	if err := protojson.Unmarshal(raw, &res); err != nil {
		t.Fatalf("a JSON intent's result is not JSON: %v (%q)", err, raw)
	}
	if !res.GetAccepted() || res.GetRolloutId() != "web-json" {
		t.Fatalf("result %v, want accepted web-json", &res)
	}

	raw = publishIntentRaw(t, nc, []byte(strings.Replace(strings.Replace(body, `"v1"`, `"v2"`, 1), "ci-1", "ci-2", 1)))
	res.Reset()
	if err := protojson.Unmarshal(raw, &res); err != nil {
		t.Fatalf("result is not JSON: %v", err)
	}
	if res.GetCode() != "invalid" || !strings.Contains(res.GetError(), "applyRollout.spec.version") {
		t.Fatalf("version v2: %v, want invalid naming applyRollout.spec.version", &res)
	}

	// A protobuf intent still gets protobuf (refused: web-json holds the service).
	raw = publishIntentRaw(t, nc, mustMarshal(t, applyIntent("pb-1", "web-pb")))
	res.Reset()
	if err := proto.Unmarshal(raw, &res); err != nil || res.GetIntentId() != "pb-1" || res.GetCode() != "conflict" {
		t.Fatalf("protobuf intent result: %v %v", err, &res)
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestQueries_GarbageGetsAnErrorAndJSONGetsJSON(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	waitFor(t, "a whole view of the fleet", 10*time.Second, c.srv.fleet.Settled) // reads of rollouts decline before
	send(t, nc, applyIntent("a-1", "web-q"))

	ask := func(body []byte) *nats.Msg {
		t.Helper()
		msg, err := nc.Request(bus.QuerySubject(bus.QueryRollouts), body, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	for _, garbage := range [][]byte{[]byte("hello, coordinator"), {0xff, 0xfe, 0x01}, []byte("{not json")} {
		msg := ask(garbage)
		if e := msg.Header.Get(bus.ErrorHeader); !strings.Contains(e, "RolloutsQuery") {
			t.Errorf("query %q: error header %q, want a refusal naming RolloutsQuery (body %d bytes)", garbage, e, len(msg.Data))
		}
		if len(msg.Data) != 0 {
			t.Errorf("query %q was answered with %d bytes", garbage, len(msg.Data))
		}
	}
	if got := testutil.ToFloat64(c.srv.metrics.queriesMalformed); got != 3 {
		t.Errorf("malformed queries = %v, want 3", got)
	}

	msg := ask([]byte(`{"rollout": "web-q"}`))
	if e := msg.Header.Get(bus.ErrorHeader); e != "" {
		t.Fatalf("JSON query refused: %s", e)
	}
	var ans sv1.RolloutsAnswer
	if err := protojson.Unmarshal(msg.Data, &ans); err != nil {
		t.Fatalf("JSON query answered in something else: %v (%q)", err, msg.Data)
	}
	if len(ans.GetRollouts()) != 1 || ans.GetRollouts()[0].GetRollout().GetId() != "web-q" {
		t.Fatalf("answer %v, want web-q", &ans)
	}
}
