package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// setBucketPresent takes the desired-state bucket away or gives it back:
// while it is away the leader's publishing fails and intents still commit,
// as when the one server holding an R1 bucket is down. A bucket merely
// deleted the leader would create again; in its place stands a stream of
// the same name that answers no direct read (the leader's read before
// each write fails, as against a server that is down, so nothing is
// published on the key's subject either), refuses every write (1-byte
// messages), and that the leader cannot turn back into the bucket (a
// memory stream; the bucket is on file).
func setBucketPresent(ctx context.Context, t *testing.T, js jetstream.JetStream, present bool) {
	t.Helper()
	stream := "KV_" + bus.DesiredBucket
	var err error
	if present {
		if err = js.DeleteStream(ctx, stream); err == nil {
			_, err = bus.EnsureDesiredBucket(ctx, js, 1)
		}
	} else if err = js.DeleteKeyValue(ctx, bus.DesiredBucket); err == nil {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{"$KV." + bus.DesiredBucket + ".>"},
			Storage: jetstream.MemoryStorage, MaxMsgSize: 1})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func coordinatorHealthz(ctx context.Context, addr string) (int, string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// TestCommands_SayWhetherTheBusAndTheFleetFollowed: apply --wait returns
// once every proxy is seen on green; an abort committed while the bucket
// is gone exits 3 naming why, the coordinator's /healthz says its
// publishing fails, and once the bucket takes writes again the fleet
// follows the committed abort without another command.
func TestCommands_SayWhetherTheBusAndTheFleetFollowed(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be})

	res, err := f.Run(ctx, "rollout", "apply", "-f", examplePath(t, "bluegreen.yaml"), "--wait", "--timeout", "60s")
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("apply --wait: %v %+v", err, res)
	}
	for _, want := range []string{"committed at index", "published: the bus carries generation", "converged: 2/2 live nodes"} {
		if !strings.Contains(res.Stdout, want) {
			t.Fatalf("apply --wait output lacks %q:\n%s", want, res.Stdout)
		}
	}
	// --wait returned: every proxy already does green.
	for i := range f.Nodes {
		if got := f.Sample(ctx, i, samples); got[harness.Green] != samples {
			t.Fatalf("after apply --wait, %s answered %v", f.Nodes[i].ID, got)
		}
	}

	nc := connectNATS(t, f.Bus)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	setBucketPresent(ctx, t, js, false)
	res, err = f.Run(ctx, "rollout", "abort", exampleRollout, "--reason", "bucket test", "--publish-timeout", "3s")
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || !strings.Contains(res.Stdout, "committed at index") ||
		!strings.Contains(res.Stderr, "did not reach the bus within 3s") || !strings.Contains(res.Stderr, "the leader keeps retrying") {
		t.Fatalf("abort with the bucket gone: exit %d\nstdout: %s\nstderr: %s\nwant exit 3, committed, and why the fleet was not told", res.ExitCode, res.Stdout, res.Stderr)
	}
	if err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		code, body, err := coordinatorHealthz(ctx, f.CoordinatorHTTP)
		if err != nil {
			return err
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "publish: writes of desired state to the bus failing") {
			return fmt.Errorf("coordinator /healthz %d %q", code, body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Nothing moved: the proxies still serve green, as the abort said.
	if got := f.Sample(ctx, 0, samples); got[harness.Green] != samples {
		t.Fatalf("with the abort unpublished, %s answered %v", f.Nodes[0].ID, got)
	}

	setBucketPresent(ctx, t, js, true)
	if err := f.WaitAllServing(ctx, harness.Blue, samples); err != nil {
		t.Fatalf("after the bucket took writes again: %v", err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		code, body, err := coordinatorHealthz(ctx, f.CoordinatorHTTP)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("coordinator /healthz %d %q", code, body)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
