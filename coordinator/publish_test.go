package coordinator

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A leader whose desired-state bucket disappears while it leads (a NATS
// server restarted without its store, an operator deleting the bucket)
// creates the bucket again and publishes there, as a new leader would,
// instead of failing every write until leadership changes.
func TestPublish_BucketLostWhileLeadingIsCreatedAgain(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, filepath.Join(t.TempDir(), "c1"))
	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	waitFor(t, "the first desired state", 5*time.Second, func() bool {
		return desiredInBucket(t, nc, "web").GetGeneration() == res.GetIndex()
	})

	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := js.DeleteKeyValue(ctx, bus.DesiredBucket); err != nil {
		t.Fatal(err)
	}
	ab := send(t, nc, &sv1.Intent{Id: "i-2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}})
	if !ab.GetAccepted() {
		t.Fatal(ab)
	}
	waitFor(t, "the abort's desired state in a bucket created again", 10*time.Second, func() bool {
		return desiredInBucket(t, nc, "web").GetGeneration() == ab.GetIndex()
	})
	if since, err := c.srv.publisher.health(); err != nil {
		t.Errorf("publisher still failing since %v: %v", since, err)
	}
}
