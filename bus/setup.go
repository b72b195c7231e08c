package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Replicas is the replication of streams and buckets: 1 on a single server,
// 3 on a cluster. It is chosen by whoever creates them (the coordinator).
type Replicas int

// ChooseReplicas is configured when above 0; otherwise what the cluster nc
// is connected to can hold: 3 when it knows of 3 or more servers (its own
// and those the cluster advertises), else 1.
func ChooseReplicas(nc *nats.Conn, configured int) Replicas {
	if configured > 0 {
		return Replicas(configured)
	}
	if len(nc.Servers()) >= 3 {
		return 3
	}
	return 1
}

// existingReplicas is the replica count of a stream that exists, 0 if none.
// The Ensure functions never lower it: an operator who raised it by hand
// meant it.
func existingReplicas(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	st, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read stream %s: %w", stream, err)
	}
	return st.CachedInfo().Config.Replicas, nil
}

// replicasFor is r, or more when the stream already has more.
func replicasFor(ctx context.Context, js jetstream.JetStream, stream string, r Replicas) (int, error) {
	have, err := existingReplicas(ctx, js, stream)
	if err != nil {
		return 0, err
	}
	return max(int(r), have, 1), nil
}

// StreamReplicas reads the replica count of the intent stream and the
// buckets as the servers have them now (0 for one that does not exist).
func StreamReplicas(ctx context.Context, js jetstream.JetStream) (map[string]int, error) {
	out := map[string]int{}
	for _, name := range []string{IntentStream, "KV_" + DesiredBucket, "KV_" + DrillsBucket} {
		n, err := existingReplicas(ctx, js, name)
		if err != nil {
			return nil, err
		}
		out[name] = n
	}
	return out, nil
}

// EnsureIntentStream creates or updates the intent stream. Intents stay until
// the coordinators have acknowledged them; duplicates by Nats-Msg-Id within
// the window are dropped by the server.
func EnsureIntentStream(ctx context.Context, js jetstream.JetStream, r Replicas) (jetstream.Stream, error) {
	n, err := replicasFor(ctx, js, IntentStream, r)
	if err != nil {
		return nil, err
	}
	s, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:        IntentStream,
		Description: "Switchyard rollout and drill intents from operators and pipelines",
		Subjects:    []string{IntentSubjects()},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.WorkQueuePolicy,
		Replicas:    n,
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
	n, err := replicasFor(ctx, js, "KV_"+DesiredBucket, r)
	if err != nil {
		return nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      DesiredBucket,
		Description: "Switchyard desired state, one signed document per service",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    n,
	})
	if err != nil {
		return nil, fmt.Errorf("ensure bucket %s: %w", DesiredBucket, err)
	}
	return kv, nil
}

// EnsureDrillsBucket creates or updates the drills bucket.
func EnsureDrillsBucket(ctx context.Context, js jetstream.JetStream, r Replicas) (jetstream.KeyValue, error) {
	n, err := replicasFor(ctx, js, "KV_"+DrillsBucket, r)
	if err != nil {
		return nil, err
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      DrillsBucket,
		Description: "Switchyard chaos drills, one signed document per drill",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    n,
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
