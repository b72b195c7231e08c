package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A leader killed with an intent in hand (delivered, never acknowledged)
// must not make the intent wait out the consumer's AckWait: the next leader
// gets it as soon as it leads.
func TestIntents_NewLeaderGetsAtOnceWhatADeadLeaderHeld(t *testing.T) {
	nc, url := startNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.EnsureIntentStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := bus.EnsureIntentConsumer(ctx, js); err != nil {
		t.Fatal(err)
	}

	inbox := nc.NewRespInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	body, err := proto.Marshal(applyIntent("i-held", "web-1"))
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
	m.Data = body
	m.Header.Set(bus.MsgIDHeader, "i-held")
	m.Header.Set(bus.ReplyHeader, inbox)
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}

	// The dead leader: it fetched the intent and vanished without an ack.
	dead, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	djs, err := jetstream.New(dead)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := djs.Consumer(ctx, bus.IntentStream, bus.IntentConsumer)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for range batch.Messages() {
		held++
	}
	if held != 1 {
		t.Fatalf("the dead leader fetched %d intents (%v), want 1", held, batch.Error())
	}
	dead.Close()

	start := time.Now()
	startCoordinator(t, url, t.TempDir())
	// Well under the consumer's AckWait means the new leader did not wait.
	r, err := replies.NextMsg(bus.IntentAckWait / 2)
	if err != nil {
		t.Fatalf("no answer %v after the new leader started: %v", time.Since(start), err)
	}
	var res sv1.IntentResult
	if err := proto.Unmarshal(r.Data, &res); err != nil {
		t.Fatal(err)
	}
	if !res.GetAccepted() || res.GetIntentId() != "i-held" {
		t.Fatalf("held intent answered %v", &res)
	}
	t.Logf("held intent answered %v after the new leader started", time.Since(start).Round(time.Millisecond))
}

// A consumer deleted under a running leader (by hand, or lost by the
// server) is opened again: the leader's term goes on taking intents.
func TestIntents_LeaderReopensADeletedConsumer(t *testing.T) {
	nc, url := startNATS(t)
	startCoordinator(t, url, t.TempDir())
	if res := send(t, nc, applyIntent("i-1", "web-1")); !res.GetAccepted() {
		t.Fatalf("first intent: %v", res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, bus.IntentStream, bus.IntentConsumer); err != nil {
		t.Fatal(err)
	}
	res := send(t, nc, &sv1.Intent{Id: "i-2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}})
	if !res.GetAccepted() {
		t.Fatalf("intent after the consumer was deleted: %v", res)
	}
}

// An intent id names one intent. The same intent sent again (a retried CI
// job, a later created_at) is answered with its first result; another
// intent sent with a taken id is refused with code id_taken, whether the
// stream dropped it as a resend (the sender then asks for the result) or
// it reached the leader under another message id. Neither is applied, and
// neither is handed the first intent's result.
func TestIntents_AnIDTakenByAnotherIntentIsRefused(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())

	first := send(t, nc, applyIntent("ci-7", "web-1"))
	if !first.GetAccepted() {
		t.Fatalf("first: %v", first)
	}
	again := applyIntent("ci-7", "web-1")
	again.CreatedAt = timestamppb.New(time.Now().Add(time.Minute))
	if res := send(t, nc, again); !res.GetAccepted() || !res.GetDuplicate() || res.GetIndex() != first.GetIndex() {
		t.Fatalf("the same intent sent again: %v, want the first result (index %d) as a duplicate", res, first.GetIndex())
	}

	other := applyIntent("ci-7", "web-2")
	other.GetApplyRollout().GetSpec().Service = "api"
	// The stream drops it as a resend of ci-7; the sender asks for the
	// result and is told the id was another intent's.
	res := send(t, nc, other)
	if res.GetAccepted() || res.GetDuplicate() || res.GetCode() != state.CodeIDTaken || !strings.Contains(res.GetError(), `"ci-7" was taken`) {
		t.Fatalf("another intent under a taken id (stream): %v, want refused %s", res, state.CodeIDTaken)
	}
	// Under another message id the leader sees it, and refuses it before
	// it commits.
	raw := publishIntentRaw(t, nc, mustMarshal(t, other))
	res = &sv1.IntentResult{}
	if err := proto.Unmarshal(raw, res); err != nil || res.GetAccepted() || res.GetCode() != state.CodeIDTaken || res.GetIndex() != 0 {
		t.Fatalf("another intent under a taken id (leader): %v %v, want refused %s before commit", err, res, state.CodeIDTaken)
	}
	if r := c.srv.fsm.State().Rollout("web-2"); r != nil {
		t.Fatalf("the refused intent was applied: %v", r)
	}
	if got := c.srv.fsm.State().IntentResult("ci-7"); !got.GetAccepted() || got.GetRolloutId() != "web-1" {
		t.Fatalf("the id's record changed: %v", got)
	}
}
