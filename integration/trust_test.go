package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// violations records the permission violations a connection is told about.
type violations struct {
	mu   sync.Mutex
	seen []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) {
		v.mu.Lock()
		v.seen = append(v.seen, err.Error())
		v.mu.Unlock()
	}
}

func (v *violations) missing(subjects []string) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	all := strings.Join(v.seen, "\n")
	var out []string
	for _, s := range subjects {
		if !strings.Contains(all, `"`+s+`"`) {
			out = append(out, s)
		}
	}
	return out
}

// TestTrust_NodeCredentialsOnASecuredBus runs a real fleet (`switchyard dev`
// with NATS in operator mode and TLS, agents with their own creds) and uses
// one node's credentials the way a thief of that node's disk would.
func TestTrust_NodeCredentialsOnASecuredBus(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be})

	// The fleet switches once so that the bucket holds a document.
	if _, err := f.Apply(ctx, examplePath(t, "bluegreen.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitAllServing(ctx, harness.Green, samples); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WaitRollout(ctx, exampleRollout, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		t.Fatal(err)
	}

	watch, err := f.Connect(nats.Name("integration-test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(watch.Close)
	wjs, _ := jetstream.New(watch)
	desired, err := bus.DesiredBucketHandle(ctx, wjs)
	if err != nil {
		t.Fatal(err)
	}
	before, err := desired.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	intents, err := wjs.Stream(ctx, bus.IntentStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := intents.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	intentSeq := info.State.LastSeq
	forgedStatus, err := watch.SubscribeSync(bus.StatusSubject("edge-2"))
	if err != nil {
		t.Fatal(err)
	}
	forgedTelemetry, err := watch.SubscribeSync(bus.TelemetrySubject("web", "edge-2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}

	// edge-1's own creds file, the one its agent runs with.
	stolen, err := f.Bus.Security(bus.RoleAgent, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	opts, err := stolen.Options("")
	if err != nil {
		t.Fatal(err)
	}
	var v violations
	thief, err := nats.Connect(f.NATSURL, append(opts, nats.ErrorHandler(v.handler))...)
	if err != nil {
		t.Fatalf("edge-1's creds: %v", err)
	}
	t.Cleanup(thief.Close)
	forged := &sv1.AgentStatus{Node: "edge-2"}
	body := []byte(forged.String())
	forbidden := []string{
		bus.TelemetrySubject("web", "edge-2"),
		bus.StatusSubject("edge-2"),
		bus.IntentSubject(bus.IntentKindRollout),
		bus.IntentSubject(bus.IntentKindChaos),
		bus.DesiredKeySubject("web"),
	}
	for _, s := range forbidden {
		if err := thief.Publish(s, body); err != nil {
			t.Fatal(err)
		}
	}
	tjs, _ := jetstream.New(thief)
	tkv, err := bus.DesiredBucketHandle(ctx, tjs)
	if err != nil {
		t.Fatalf("an agent's creds must still open the bucket: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	_, putErr := tkv.Put(wctx, "web", []byte("forged"))
	_, intentErr := bus.SendIntent(wctx, thief, bus.IntentKindRollout, &sv1.Intent{Id: "forged-1", Operator: "edge-1"})
	cancel()
	if putErr == nil {
		t.Error("edge-1's creds wrote to the desired-state bucket")
	}
	if intentErr == nil {
		t.Error("edge-1's creds published an intent that was answered")
	}
	if err := harness.Poll(ctx, 50*time.Millisecond, func(context.Context) error {
		if m := v.missing(forbidden); len(m) > 0 {
			return fmt.Errorf("no permission violation yet for %v", m)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("refused by the server: %d permission violations", len(v.seen))

	// Nothing stored, nothing delivered.
	after, err := desired.Get(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if after.Revision() != before.Revision() || string(after.Value()) != string(before.Value()) {
		t.Fatalf("desired bucket changed: revision %d -> %d", before.Revision(), after.Revision())
	}
	if info, err = intents.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if info.State.LastSeq != intentSeq {
		t.Fatalf("intent stream moved from %d to %d", intentSeq, info.State.LastSeq)
	}
	for _, sub := range []*nats.Subscription{forgedStatus, forgedTelemetry} {
		for {
			m, err := sub.NextMsg(300 * time.Millisecond)
			if err != nil {
				break
			}
			if string(m.Data) == string(body) {
				t.Fatalf("a forged message reached %s", m.Subject)
			}
		}
	}

	// No creds, or no TLS: refused.
	tlsOnly, err := (bus.Security{CA: f.Bus.CA}).Options("")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(f.NATSURL, tlsOnly...); err == nil {
		nc.Close()
		t.Fatal("a client without creds connected")
	} else {
		t.Logf("without creds: %v", err)
	}
	credsOnly, err := (bus.Security{Creds: stolen.Creds}).Options("")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(strings.Replace(f.NATSURL, "tls://", "nats://", 1), credsOnly...); err == nil {
		nc.Close()
		t.Fatal("a client without TLS connected")
	} else {
		t.Logf("without the CA: %v", err)
	}
	// A client that speaks the protocol in plain text never gets a PONG.
	if answer := plainTextClient(t, strings.TrimPrefix(f.NATSURL, "tls://")); strings.Contains(answer, "PONG") {
		t.Fatalf("a plain-text client was answered: %q", answer)
	} else {
		t.Logf("plain-text client: connection closed after %q", strings.TrimSpace(answer))
	}

	// Revocation with the CLI, against the running server: edge-2 is cut
	// off within seconds and keeps serving what it had; edge-1 follows the
	// next decision.
	edge2Conn := func() (float64, error) {
		text, err := f.AgentMetrics(ctx, 1)
		if err != nil {
			return 0, err
		}
		got, _ := harness.MetricValue(text, "switchyard_agent_bus_connected", nil)
		return got, nil
	}
	if c, err := edge2Conn(); err != nil || c != 1 {
		t.Fatalf("edge-2 bus_connected = %v, %v before the revocation", c, err)
	}
	res, err := harness.RunCLI(ctx, sy, []string{"SWITCHYARD_NATS_CA=" + f.Bus.CA},
		"auth", "revoke", "--dir", f.Bus.AuthDir, "--name", "edge-2", "--nats", f.NATSURL)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("auth revoke: %v %+v", err, res)
	}
	revoked := time.Now()
	if err := harness.Poll(ctx, 20*time.Millisecond, func(context.Context) error {
		c, err := edge2Conn()
		if err != nil {
			return err
		}
		if c != 0 {
			return errors.New("edge-2 still connected")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("edge-2 cut off %v after 'auth revoke' returned", time.Since(revoked).Round(time.Millisecond))
	if !strings.Contains(res.Stdout, "pushed") {
		t.Errorf("auth revoke said %q", res.Stdout)
	}
	if _, err := f.Abort(ctx, exampleRollout, "after revoking edge-2"); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitServing(ctx, 0, harness.Blue, samples); err != nil {
		t.Fatalf("edge-1 after the abort: %v", err)
	}
	// edge-2 never saw the abort: it still serves green from local state,
	// and its agent's reconnects are refused.
	if err := f.WaitServing(ctx, 1, harness.Green, samples); err != nil {
		t.Fatalf("edge-2 after the abort: %v", err)
	}
	if c, err := edge2Conn(); err != nil || c != 0 {
		t.Fatalf("edge-2 bus_connected = %v, %v after the abort", c, err)
	}
	if _, err := nats.Connect(f.NATSURL, mustSecurity(t, f.Bus, "edge-2")...); err == nil {
		t.Fatal("edge-2's creds connect after the revocation")
	}
	setup, err := auth.Load(f.Bus.AuthDir)
	if err != nil {
		t.Fatal(err)
	}
	list, err := setup.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range list {
		if i.Name == "edge-2" && i.RevokedAt == 0 {
			t.Fatal("the auth directory does not record the revocation")
		}
	}
}

func mustSecurity(t *testing.T, b harness.Bus, node string) []nats.Option {
	t.Helper()
	sec, err := b.Security(bus.RoleAgent, node)
	if err != nil {
		t.Fatal(err)
	}
	o, err := sec.Options("")
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// plainTextClient speaks NATS without TLS to addr and returns everything the
// server sent until it closed the connection.
func plainTextClient(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	info, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(info, `"tls_required":true`) {
		t.Errorf("server INFO does not require TLS: %s", info)
	}
	_, _ = c.Write([]byte("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n"))
	rest, err := io.ReadAll(r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server neither answered nor closed a plain-text client: %q", rest)
	}
	return string(rest)
}
