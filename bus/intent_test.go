package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// An intent sent while the intent stream cannot take it (here: no
// coordinator has created it yet, as while a NATS server that led it is
// dead and the stream elects another) is retried until the stream is
// there, and its result is this call's own, not "applied before".
func TestSendIntent_RetriesUntilTheStreamCanTakeIt(t *testing.T) {
	ns, nc := embeddedBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// The "coordinator" comes late: it creates the stream after a second,
	// then answers each intent it reads.
	coordinator := make(chan error, 1)
	go func() {
		coordinator <- func() error {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			cc, err := nats.Connect(ns.ClientURL())
			if err != nil {
				return err
			}
			defer cc.Close()
			js, err := jetstream.New(cc)
			if err != nil {
				return err
			}
			if _, err := EnsureIntentStream(ctx, js, 1); err != nil {
				return err
			}
			cons, err := EnsureIntentConsumer(ctx, js)
			if err != nil {
				return err
			}
			msg, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
			if err != nil {
				return fmt.Errorf("read the intent: %w", err)
			}
			in := &sv1.Intent{}
			if err := proto.Unmarshal(msg.Data(), in); err != nil {
				return err
			}
			body, _ := proto.Marshal(&sv1.IntentResult{IntentId: in.GetId(), Accepted: true, Index: 7})
			if err := cc.Publish(msg.Headers().Get(ReplyHeader), body); err != nil {
				return err
			}
			return msg.Ack()
		}()
	}()

	res, err := SendIntent(ctx, nc, IntentKindRollout, &sv1.Intent{Id: "late-stream"})
	if err != nil {
		t.Fatalf("send: %v (coordinator: %v)", err, <-coordinator)
	}
	if !res.GetAccepted() || res.GetIndex() != 7 || res.GetDuplicate() {
		t.Fatalf("result %v, want accepted at index 7, not a duplicate", res)
	}
	if err := <-coordinator; err != nil {
		t.Fatal(err)
	}
}

// Without a stream ever appearing, the send gives up when its context
// ends and says why.
func TestSendIntent_GivesUpAtItsDeadlineNamingTheCause(t *testing.T) {
	_, nc := embeddedBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	_, err := SendIntent(ctx, nc, IntentKindRollout, &sv1.Intent{Id: "no-stream"})
	if !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("err = %v, want no stream response", err)
	}
}

func TestTransientPublishError(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{jetstream.ErrNoStreamResponse, true},
		{fmt.Errorf("nats: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}), true},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("nats: %w", &jetstream.APIError{Code: 400, Description: "maximum payload exceeded"}), false},
		{nats.ErrPermissionViolation, false},
	} {
		if got := transientPublishError(c.err); got != c.want {
			t.Errorf("transientPublishError(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// embeddedBus runs an embedded NATS server with JetStream and a client
// connected to it, both stopped when the test ends.
func embeddedBus(t testing.TB) (*server.Server, *nats.Conn) {
	t.Helper()
	ns, err := RunEmbedded(EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return ns, nc
}

// A message someone else published first under an intent's id makes the
// stream drop the intent as a resend. With no result known for that id,
// the sender is told that the id was taken and nothing of its intent was
// applied, not left to guess.
func TestSendIntent_SaysWhenAnotherMessageTookItsID(t *testing.T) {
	_, nc := embeddedBus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureIntentStream(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	squat := nats.NewMsg(IntentSubject(IntentKindRollout))
	squat.Data = []byte("junk")
	squat.Header.Set(MsgIDHeader, "ci-build-43")
	if _, err := js.PublishMsg(ctx, squat); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	defer scancel()
	_, err = SendIntent(sctx, nc, IntentKindRollout, &sv1.Intent{Id: "ci-build-43"})
	if !errors.Is(err, ErrNoResult) {
		t.Fatalf("SendIntent: %v, want ErrNoResult", err)
	}
	for _, want := range []string{"already held a message with id ci-build-43", "another message took its id", "send it again with a new id"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
}

// A coordinator that knows no leader says so at once; when the caller's
// deadline then cuts a later attempt short, the error still carries what
// the coordinator said, not only that the deadline passed.
func TestQuery_KeepsTheRefusalWhenTheDeadlineCutsTheLastAttempt(t *testing.T) {
	_, nc := embeddedBus(t)
	answered := 0
	sub, err := nc.Subscribe(QuerySubject(QueryIntent), func(m *nats.Msg) {
		answered++
		if answered > 3 {
			return // frozen from now on: the caller's deadline ends the attempt
		}
		reply := nats.NewMsg(m.Reply)
		reply.Header.Set(NotCurrentHeader, "1")
		reply.Header.Set(ErrorHeader, "coordinator c1 knows no leader")
		_ = nc.PublishMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var res sv1.IntentResult
	err = Query(ctx, nc, QueryIntent, &sv1.IntentQuery{Id: "x"}, &res)
	if !errors.Is(err, ErrNoCurrentAnswer) || !strings.Contains(err.Error(), "knows no leader") {
		t.Fatalf("Query = %v, want %v naming what the coordinator said (knows no leader)", err, ErrNoCurrentAnswer)
	}
}

// A coordinator that answers, but only after longer than queryAttempt (a
// big view on a loaded machine), is still answered from: an ask is still
// waited for when the next goes out, where giving each ask up at
// queryAttempt would ask again and again and never take an answer.
func TestQuery_WaitsLongerForACoordinatorThatAnswersSlowly(t *testing.T) {
	_, nc := embeddedBus(t)
	var asked atomic.Int32
	sub, err := nc.Subscribe(QuerySubject(QueryIntent), func(m *nats.Msg) {
		asked.Add(1)
		go func() {
			time.Sleep(queryAttempt + 500*time.Millisecond)
			b, _ := proto.Marshal(&sv1.IntentResult{IntentId: "slow", Accepted: true})
			_ = m.Respond(b)
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var res sv1.IntentResult
	if err := Query(ctx, nc, QueryIntent, &sv1.IntentQuery{Id: "slow"}, &res); err != nil || res.GetIntentId() != "slow" {
		t.Fatalf("Query = %v (%v), want the slow coordinator's answer", err, &res)
	}
	if n := asked.Load(); n != 2 {
		t.Errorf("asked %d times, want 2: the second ask goes out after queryAttempt, the first is answered", n)
	}
}

// A coordinator frozen with asks in hand costs one queryAttempt per ask it
// holds, not a wait that grows with each: here it holds the first three
// asks (as a frozen member of the queue group may, by chance), and the
// fourth, a little over three queryAttempts on, is answered well inside a
// deadline that a doubling wait (1 + 2 + 4 s) would run past.
func TestQuery_AFrozenCoordinatorCostsOneAttemptPerAskItHolds(t *testing.T) {
	_, nc := embeddedBus(t)
	var asked atomic.Int32
	sub, err := nc.Subscribe(QuerySubject(QueryIntent), func(m *nats.Msg) {
		if asked.Add(1) <= 3 {
			return // held by the frozen coordinator
		}
		b, _ := proto.Marshal(&sv1.IntentResult{IntentId: "held", Accepted: true})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	ctx, cancel := context.WithTimeout(context.Background(), 6*queryAttempt)
	defer cancel()
	var res sv1.IntentResult
	if err := Query(ctx, nc, QueryIntent, &sv1.IntentQuery{Id: "held"}, &res); err != nil || res.GetIntentId() != "held" {
		t.Fatalf("Query = %v (%v) after %d asks, want the answer to the fourth", err, &res, asked.Load())
	}
	if n := asked.Load(); n != 4 {
		t.Errorf("asked %d times, want 4: three held, the fourth answered", n)
	}
}
