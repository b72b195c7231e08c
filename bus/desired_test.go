package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestBus_PutDesiredIsFencedByGeneration(t *testing.T) {
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
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := EnsureDesiredBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureDesiredBucket(ctx, js, 1); err != nil {
		t.Fatalf("second ensure: %v", err)
	}
	get := func() uint64 {
		e, err := kv.Get(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		var ds sv1.DesiredState
		if err := proto.Unmarshal(e.Value(), &ds); err != nil {
			t.Fatal(err)
		}
		return ds.GetGeneration()
	}
	if _, err := PutDesired(ctx, kv, &sv1.DesiredState{Service: "web", Generation: 5}); err != nil {
		t.Fatal(err)
	}
	for _, older := range []uint64{5, 3} {
		if _, err := PutDesired(ctx, kv, &sv1.DesiredState{Service: "web", Generation: older}); !errors.Is(err, ErrStaleGeneration) {
			t.Fatalf("generation %d over 5: %v, want ErrStaleGeneration", older, err)
		}
	}
	if _, err := PutDesired(ctx, kv, &sv1.DesiredState{Service: "web", Generation: 9}); err != nil || get() != 9 {
		t.Fatalf("newer generation: %v, bucket has %d", err, get())
	}
	// A value that does not decode is overwritten rather than trusted.
	if _, err := kv.Put(ctx, "web", []byte{0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	if _, err := PutDesired(ctx, kv, &sv1.DesiredState{Service: "web", Generation: 2}); err != nil || get() != 2 {
		t.Fatalf("over garbage: %v, bucket has %d", err, get())
	}
}

func TestBus_NamesAreSpelledOnce(t *testing.T) {
	for got, want := range map[string]string{
		IntentSubject(IntentKindRollout): "switchyard.intent.rollout",
		IntentSubject(IntentKindChaos):   "switchyard.intent.chaos",
		DesiredKeySubject("web"):         "$KV.switchyard_desired.web",
		DrillKeySubject("d1"):            "$KV.switchyard_drills.d1",
		TelemetrySubject("web", "edge"):  "switchyard.telemetry.web.edge",
		StatusSubject("edge"):            "switchyard.status.edge",
		QuerySubject(QueryRollouts):      "switchyard.query.rollouts",
	} {
		if got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}
