package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
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
	// AckWait is 30 s; well under it means the new leader did not wait.
	r, err := replies.NextMsg(10 * time.Second)
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
