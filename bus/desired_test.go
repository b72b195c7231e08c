package bus

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestBus_PutDesiredIsFencedByVerifiedDocuments(t *testing.T) {
	_, nc := embeddedBus(t)
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
	signer, ring := testSigner(t, 1, time.Minute)
	pub := &Publisher{Signer: signer, Trusted: ring}
	next, _ := testSigner(t, 3, time.Minute)
	all, err := NewKeyring(signer.Public(), next.Public())
	if err != nil {
		t.Fatal(err)
	}
	get := func() Header {
		t.Helper()
		e, err := kv.Get(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		_, h, err := all.OpenDesired(e.Value(), "web", time.Time{})
		if err != nil {
			t.Fatalf("bucket holds a document that does not open: %v", err)
		}
		return h
	}
	doc := func(epoch, gen uint64) *sv1.DesiredState {
		return &sv1.DesiredState{Service: "web", Epoch: epoch, Generation: gen}
	}
	now := time.Now()
	if _, err := pub.PutDesired(ctx, kv, doc(1, 5), now); err != nil {
		t.Fatal(err)
	}
	for _, older := range []*sv1.DesiredState{doc(1, 5), doc(1, 3)} {
		if _, err := pub.PutDesired(ctx, kv, older, now); !errors.Is(err, ErrStaleGeneration) {
			t.Fatalf("generation %d over 5: %v, want ErrStaleGeneration", older.GetGeneration(), err)
		}
	}
	if _, err := pub.PutDesired(ctx, kv, doc(1, 9), now); err != nil || get().Fence != (Fence{1, 9}) {
		t.Fatalf("newer generation: %v, bucket has %s", err, get().Fence)
	}
	// A higher epoch wins over any generation of a lower one.
	if _, err := pub.PutDesired(ctx, kv, doc(2, 1), now); err != nil || get().Fence != (Fence{2, 1}) {
		t.Fatalf("higher epoch: %v, bucket has %s", err, get().Fence)
	}
	// The same fence is signed again once half its validity is gone.
	res, err := pub.PutDesired(ctx, kv, doc(2, 1), now.Add(31*time.Second))
	if err != nil || !res.Renewed || !get().ExpiresAt.Equal(now.Add(31*time.Second).Add(time.Minute)) {
		t.Fatalf("renewal: %+v %v, bucket expires at %s", res, err, get().ExpiresAt)
	}
	// A value that does not verify is overwritten rather than trusted,
	// whatever fence it claims: garbage, and a document of a stranger's key
	// with a huge generation.
	stranger, _ := testSigner(t, 2, time.Minute)
	forged, err := stranger.SealDesired(doc(1<<40, 1<<62), now)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]byte{"garbage": {0xff, 0xff}, "forged": forged} {
		if _, err := kv.Put(ctx, "web", bad); err != nil {
			t.Fatal(err)
		}
		res, err := pub.PutDesired(ctx, kv, doc(2, 2), now)
		if err != nil || !res.ReplacedUnverified || get().Fence != (Fence{2, 2}) {
			t.Fatalf("over %s: %+v %v, bucket has %s", name, res, err, get().Fence)
		}
	}
	// After a switch of signing key the same fence is written again at
	// once, so agents can drop the old key without waiting for a renewal.
	pub = &Publisher{Signer: next, Trusted: all}
	if res, err := pub.PutDesired(ctx, kv, doc(2, 2), now); err != nil || !res.Renewed || get().KeyID != next.KeyID() {
		t.Fatalf("after the key switch: %+v %v, bucket signed by %s", res, err, get().KeyID)
	}
	// Another document of the same fence (a lineage a recovery lost wrote
	// it) is never overwritten, fresh or nearly expired, by this key or
	// another: agents holding it refuse the new one as a conflict.
	before, err := kv.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	other := doc(2, 2)
	other.RolloutId = "web-other-lineage"
	for _, p := range []*Publisher{pub, {Signer: signer, Trusted: all}} {
		for _, at := range []time.Time{now, now.Add(59 * time.Second)} {
			if _, err := p.PutDesired(ctx, kv, other, at); !errors.Is(err, ErrFenceConflict) {
				t.Fatalf("other content under fence 2/2 by %s at +%s: %v, want ErrFenceConflict", p.Signer.KeyID(), at.Sub(now), err)
			}
		}
	}
	if after, err := kv.Get(ctx, "web"); err != nil || after.Revision() != before.Revision() {
		t.Fatalf("the bucket was written over a conflict: %v", err)
	}
	// The next fence gets past it.
	other.Generation = 3
	if _, err := pub.PutDesired(ctx, kv, other, now); err != nil || get().Fence != (Fence{2, 3}) {
		t.Fatalf("next generation over a conflict: %v, bucket has %s", err, get().Fence)
	}
}

func TestBus_NamesAreSpelledOnce(t *testing.T) {
	for got, want := range map[string]string{
		IntentSubject(IntentKindRollout): "switchyard.intent.rollout",
		IntentSubject(IntentKindChaos):   "switchyard.intent.chaos",
		DesiredKeySubject("web"):         "$KV.switchyard_desired.web",
		DrillKeySubject("d1"):            "$KV.switchyard_drills.d1",
		DesiredPushSubject("web"):        "switchyard.desired.web",
		DrillPushSubject("d1"):           "switchyard.drills.d1",
		DesiredPushAll():                 "switchyard.desired.>",
		DrillsPushAll():                  "switchyard.drills.>",
		TelemetrySubject("web", "edge"):  "switchyard.telemetry.web.edge",
		StatusSubject("edge"):            "switchyard.status.edge",
		QuerySubject(QueryRollouts):      "switchyard.query.rollouts",
	} {
		if got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}
