package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Replicas is the replication of streams and buckets: 1 on a single server,
// 3 on a cluster. It is chosen by whoever creates them (the coordinator).
type Replicas int

// EnsureIntentStream creates or updates the intent stream. Intents stay until
// the coordinators have acknowledged them; duplicates by Nats-Msg-Id within
// the window are dropped by the server.
func EnsureIntentStream(ctx context.Context, js jetstream.JetStream, r Replicas) (jetstream.Stream, error) {
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        IntentStream,
		Description: "Switchyard rollout and drill intents from operators and pipelines",
		Subjects:    []string{IntentSubjects()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.WorkQueuePolicy,
		Replicas:    max(int(r), 1),
		Duplicates:  10 * time.Minute,
		MaxAge:      7 * 24 * time.Hour,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure stream %s: %w", IntentStream, err)
	}
	return s, nil
}

// EnsureIntentConsumer creates or updates the one durable consumer the leader
// reads intents from. An intent stays unacknowledged, and is redelivered to
// the next leader, until it is committed.
func EnsureIntentConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, IntentStream, jetstream.ConsumerConfig{
		Durable:       IntentConsumer,
		Description:   "the leading coordinator",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxAckPending: 256,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure consumer %s on %s: %w", IntentConsumer, IntentStream, err)
	}
	return c, nil
}

// EnsureDesiredBucket creates or updates the desired-state bucket. Only the
// latest value per service matters, so history is 1.
func EnsureDesiredBucket(ctx context.Context, js jetstream.JetStream, r Replicas) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      DesiredBucket,
		Description: "Switchyard desired state, one signed document per service",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(int(r), 1),
	})
	if err != nil {
		return nil, fmt.Errorf("ensure bucket %s: %w", DesiredBucket, err)
	}
	return kv, nil
}

// EnsureDrillsBucket creates or updates the drills bucket.
func EnsureDrillsBucket(ctx context.Context, js jetstream.JetStream, r Replicas) (jetstream.KeyValue, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      DrillsBucket,
		Description: "Switchyard chaos drills, one signed document per drill",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(int(r), 1),
	})
	if err != nil {
		return nil, fmt.Errorf("ensure bucket %s: %w", DrillsBucket, err)
	}
	return kv, nil
}

// DesiredBucketHandle opens the desired-state bucket without creating it, for
// agents whose credentials may not allow creation.
func DesiredBucketHandle(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, DesiredBucket)
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", DesiredBucket, err)
	}
	return kv, nil
}
