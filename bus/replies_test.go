package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// An inbox's queue is as long as its request's answers; more than that is
// an error the reader sees once it has read what fit, not a silent gap.
func TestReplies_MoreAnswersThanRoomIsAnError(t *testing.T) {
	_, nc := embeddedBus(t)
	inbox := nc.NewRespInbox()
	r, err := subscribeReplies(nc, inbox, 3)
	if err != nil {
		t.Fatal(err)
	}
	defer r.unsubscribe()
	for range 5 {
		if err := nc.Publish(inbox, []byte("answer")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The client may still be handing the last ones over: wait for them.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if n, _ := r.sub.Dropped(); n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the client never dropped the answers past the room")
		}
	}
	for i := range 3 {
		if _, err := r.next(ctx); err != nil {
			t.Fatalf("answer %d of the 3 that fit: %v", i+1, err)
		}
	}
	if _, err := r.next(ctx); !errors.Is(err, nats.ErrSlowConsumer) {
		t.Fatalf("after the answers that fit: %v, want ErrSlowConsumer", err)
	}
}

// A reader waiting on an inbox whose connection closes is told at once, as
// a sync subscription's reader is, not left waiting for its deadline.
func TestReplies_ClosedConnectionEndsTheWait(t *testing.T) {
	_, nc := embeddedBus(t)
	r, err := subscribeReplies(nc, nc.NewRespInbox(), 1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := r.next(ctx); done <- err }()
	time.Sleep(50 * time.Millisecond)
	nc.Close()
	select {
	case err := <-done:
		if !errors.Is(err, nats.ErrConnectionClosed) {
			t.Fatalf("next on a closed connection: %v, want ErrConnectionClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("next still waiting 10s after its connection closed")
	}
	// And one that starts after the close.
	if _, err := r.next(ctx); !errors.Is(err, nats.ErrConnectionClosed) {
		t.Fatalf("next after the close: %v, want ErrConnectionClosed", err)
	}
}

// A request nobody listens to is answered by the servers with "no
// responders", which next returns as nats.ErrNoResponders.
func TestReplies_NoRespondersIsSaid(t *testing.T) {
	_, nc := embeddedBus(t)
	inbox := nc.NewRespInbox()
	r, err := subscribeReplies(nc, inbox, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.unsubscribe()
	msg := nats.NewMsg("switchyard.nobody.listens")
	msg.Reply = inbox
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.next(ctx); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("next: %v, want ErrNoResponders", err)
	}
}

// What one read of a bucket costs the reader (every agent reads both
// buckets as it starts, and the drills bucket whenever it changed): B/op
// is the figure to watch.
func BenchmarkLastValues(b *testing.B) {
	_, nc := embeddedBus(b)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := EnsureDrillsBucket(ctx, js, 1)
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []string{"web", "api", "static"} {
		if _, err := kv.PutString(ctx, k, "a document of a few hundred bytes"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if got, err := LastValues(ctx, js, DrillsBucket); err != nil || len(got) != 3 {
			b.Fatalf("%d values, %v", len(got), err)
		}
	}
}
