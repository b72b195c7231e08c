package bus

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestLastValues_NewestOfEachKeyWithoutAConsumer(t *testing.T) {
	_, nc := embeddedBus(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := EnsureDrillsBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := LastValues(ctx, js, DrillsBucket); err != nil || len(got) != 0 {
		t.Fatalf("empty bucket: %v %v", got, err)
	}
	for _, put := range [][2]string{{"a", "a1"}, {"b", "b1"}, {"a", "a2"}, {"c", "c1"}, {"d", "d1"}} {
		if _, err := kv.PutString(ctx, put[0], put[1]); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	got, err := LastValues(ctx, js, DrillsBucket)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a": "a2", "b": "b1"}
	if len(got) != len(want) {
		t.Fatalf("got %d keys %v, want %v", len(got), slicesOf(got), want)
	}
	for k, v := range want {
		if string(got[k]) != v {
			t.Fatalf("key %s: %q, want %q", k, got[k], v)
		}
	}

	// The stream full of consumers (the servers' default is 1,000 a
	// stream): a key listing, which takes one, fails; the batched read
	// does not.
	for i := 0; ; i++ {
		_, err := js.CreateOrUpdateConsumer(ctx, "KV_"+DrillsBucket, jetstream.ConsumerConfig{Durable: fmt.Sprintf("squatter-%d", i), AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			if i < 10 {
				t.Fatalf("consumer %d: %v", i, err)
			}
			t.Logf("the stream took %d consumers: %v", i, err)
			break
		}
	}
	lctx, lcancel := context.WithTimeout(ctx, 5*time.Second)
	defer lcancel()
	if l, err := kv.ListKeys(lctx); err == nil {
		n := 0
		for range l.Keys() {
			n++
		}
		if n == len(want) {
			t.Fatal("the key listing worked on a stream with no consumer left; the test proves nothing")
		}
	}
	if got, err := LastValues(ctx, js, DrillsBucket); err != nil || len(got) != len(want) {
		t.Fatalf("batched read of a stream with no consumer left: %v %v", slicesOf(got), err)
	}
}

func TestLastValues_TooManyKeysSaysSo(t *testing.T) {
	_, nc := embeddedBus(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv, err := EnsureDrillsBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxBatchKeys {
		if _, err := kv.PutString(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := LastValues(ctx, js, DrillsBucket); err != nil || len(got) != MaxBatchKeys {
		t.Fatalf("%d keys: read %d, %v", MaxBatchKeys, len(got), err)
	}
	if _, err := kv.PutString(ctx, "one-more", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := LastValues(ctx, js, DrillsBucket); !errors.Is(err, ErrTooManyKeys) {
		t.Fatalf("%d keys: %v, want ErrTooManyKeys", MaxBatchKeys+1, err)
	}
	// ReadAll walks the stream instead, in batches, and keeps the newest
	// value of each key but no deleted one.
	if _, err := kv.PutString(ctx, "k0", "v2"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	got, err := ReadAll(ctx, js, kv)
	if err != nil || len(got) != MaxBatchKeys || string(got["k0"]) != "v2" || got["k1"] != nil || string(got["one-more"]) != "v" {
		t.Fatalf("ReadAll of %d keys, one deleted: %d keys, k0 %q, k1 %q, %v", MaxBatchKeys+1, len(got), got["k0"], got["k1"], err)
	}
}

func slicesOf(m map[string][]byte) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range maps.All(m) {
		out[k] = string(v)
	}
	return out
}
