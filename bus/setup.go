package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
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

// StreamHealth is how the NATS servers hold one stream or bucket now.
type StreamHealth struct {
	// Replicas is its replica count; 0 when it does not exist yet.
	Replicas int `json:"replicas"`
	// Leader is the NATS server leading it (the one that takes its
	// writes); empty while none does.
	Leader string `json:"leader,omitempty"`
	// Current counts its replicas up to date with the leader, the leader
	// included.
	Current int `json:"current"`
	// Behind names its replicas that are offline or not up to date.
	Behind []string `json:"behind,omitempty"`
	// Error says why the servers did not answer for it (no leader, no
	// quorum); the other fields are zero then.
	Error string `json:"error,omitempty"`
}

// Degraded says what is wrong with the stream, "" when it exists, has a
// leader and every replica is current: with one replica behind, a stream
// of 3 still takes writes, but one more loss stops it.
func (h StreamHealth) Degraded() string {
	switch {
	case h.Error != "":
		return "no answer: " + h.Error
	case h.Replicas == 0:
		return ""
	case h.Leader == "":
		return "no leader"
	case len(h.Behind) > 0:
		return fmt.Sprintf("%d of %d replicas current, behind: %s", h.Current, h.Replicas, strings.Join(h.Behind, ", "))
	}
	return ""
}

// StreamsHealth reads, for the intent stream, the buckets and the audit
// stream, how the servers hold them now.
func StreamsHealth(ctx context.Context, js jetstream.JetStream) map[string]StreamHealth {
	out := map[string]StreamHealth{}
	for _, name := range []string{IntentStream, "KV_" + DesiredBucket, "KV_" + DrillsBucket, AuditStream} {
		var h StreamHealth
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := js.Stream(sctx, name)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
		case err != nil:
			h.Error = err.Error()
		default:
			info := st.CachedInfo()
			h.Replicas = info.Config.Replicas
			if c := info.Cluster; c == nil {
				// A server outside a cluster holds its one replica.
				h.Current = 1
			} else {
				h.Leader = c.Leader
				if h.Leader != "" {
					h.Current = 1
				}
				for _, p := range c.Replicas {
					if p.Current && !p.Offline {
						h.Current++
					} else {
						h.Behind = append(h.Behind, p.Name)
					}
				}
				slices.Sort(h.Behind)
			}
		}
		out[name] = h
	}
	return out
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

// IntentAckWait is how long the intent consumer waits for the leader to
// acknowledge an intent before handing it out again. An intent handed to a
// pull request the leader can no longer hear (its NATS server went silent
// and the leader moved to another, the request left behind) is lost until
// then: an abort must not wait the JetStream default of 30 s. The leader
// acknowledges an intent once it is committed, well within this; one it is
// still committing when it comes again is answered as a duplicate.
const IntentAckWait = 10 * time.Second

// EnsureIntentConsumer creates or updates the one durable consumer the leader
// reads intents from. An intent stays unacknowledged, and is redelivered to
// the next leader, until it is committed.
func EnsureIntentConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	c, err := js.CreateOrUpdateConsumer(ctx, IntentStream, jetstream.ConsumerConfig{
		Durable:       IntentConsumer,
		Description:   "the leading coordinator",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       IntentAckWait,
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
