package main

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// runNATS starts an embedded NATS server for the test and connects to it.
func runNATS(t *testing.T) (url string, nc *nats.Conn) {
	t.Helper()
	ns, nc := runNATSServer(t)
	return ns.ClientURL(), nc
}

// runNATSServer is runNATS with the server itself.
func runNATSServer(t *testing.T) (*server.Server, *nats.Conn) {
	t.Helper()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return ns, nc
}

// answerRollouts answers every rollouts query with ans, as a coordinator
// would.
func answerRollouts(t *testing.T, nc *nats.Conn, ans *sv1.RolloutsAnswer) {
	t.Helper()
	body, err := proto.Marshal(ans)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.Subscribe(bus.QuerySubject(bus.QueryRollouts), func(m *nats.Msg) { _ = m.Respond(body) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

// A rollout waits at an approval gate with its one live node converged and
// one stale node that will never report again: watch says what to approve
// and returns, as the coordinators count convergence over live nodes only.
func TestCLI_WatchStopsAtAnApprovalGateDespiteAStaleNode(t *testing.T) {
	url, nc := runNATS(t)
	sp := &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{}}}}}}}}
	answerRollouts(t, nc, &sv1.RolloutsAnswer{Rollouts: []*sv1.RolloutView{{
		Rollout: &sv1.Rollout{Id: "r", Spec: sp, Phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, Generation: 5},
		Nodes: []*sv1.NodeView{
			{Node: "edge-1", AppliedGeneration: 5, AppliedEpoch: 1},
			{Node: "edge-gone", Stale: true, AppliedGeneration: 3, AppliedEpoch: 1},
		},
		Converged: 1,
		Waiting:   "approval to continue",
	}}})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out, errb strings.Builder
	code := run(ctx, []string{"rollout", "watch", "r", "--nats", url, "--interval", "100ms"}, &out, &errb)
	if ctx.Err() != nil {
		t.Fatalf("watch ran until the test's deadline (exit %d); stdout:\n%s", code, out.String())
	}
	if code != exitOK || !strings.Contains(out.String(), "waiting for approval to continue: switchyard rollout approve r") {
		t.Errorf("exit %d, stderr %q; stdout lacks what to approve:\n%s", code, errb.String(), out.String())
	}
}

// Ctrl-C while watch waits for an answer ends it as Ctrl-C between two
// queries does: exit 0, no "context canceled" error.
func TestCLI_WatchEndsCleanlyWhenInterruptedMidQuery(t *testing.T) {
	url, nc := runNATS(t)
	asked := make(chan struct{}, 1)
	sub, err := nc.Subscribe(bus.QuerySubject(bus.QueryRollouts), func(*nats.Msg) {
		select { // never answers, as a coordinator cut off from the others
		case asked <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	go func() {
		select {
		case <-asked:
			interrupt()
		case <-time.After(10 * time.Second):
		}
	}()
	var out, errb strings.Builder
	code := run(ctx, []string{"rollout", "watch", "r", "--nats", url, "--timeout", "20s"}, &out, &errb)
	if code != exitOK || errb.Len() > 0 {
		t.Errorf("interrupted watch: exit %d, stderr %q; want exit 0 and nothing on stderr", code, errb.String())
	}
}

// The text view shows counts only, so each refresh asks for the summary,
// without the node list; the JSON lines are the whole view, nodes and all.
func TestCLI_WatchAsksForTheNodesOnlyForJSON(t *testing.T) {
	sp := &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green", Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}}}
	for _, c := range []struct {
		output  string
		summary bool
	}{{"table", true}, {"json", false}} {
		t.Run(c.output, func(t *testing.T) {
			url, nc := runNATS(t)
			asked := make(chan bool, 16)
			body, err := proto.Marshal(&sv1.RolloutsAnswer{Rollouts: []*sv1.RolloutView{{
				Rollout: &sv1.Rollout{Id: "r", Spec: sp, Phase: sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, Generation: 5}, Converged: 1, Live: 1}}})
			if err != nil {
				t.Fatal(err)
			}
			sub, err := nc.Subscribe(bus.QuerySubject(bus.QueryRollouts), func(m *nats.Msg) {
				var q sv1.RolloutsQuery
				if proto.Unmarshal(m.Data, &q) == nil {
					select {
					case asked <- q.GetSummary():
					default:
					}
				}
				_ = m.Respond(body)
			})
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Unsubscribe()
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var out, errb strings.Builder
			if code := run(ctx, []string{"rollout", "watch", "r", "-o", c.output, "--nats", url}, &out, &errb); code != exitOK {
				t.Fatalf("watch of a completed rollout: exit %d, stderr %q", code, errb.String())
			}
			if got := <-asked; got != c.summary {
				t.Fatalf("watch -o %s asked with summary=%v, want %v", c.output, got, c.summary)
			}
		})
	}
}

// rollout watch asks on one connection for as long as it watches: a
// refresh is a request on the bus, not a new TCP and TLS connection and a
// login to the NATS server every second.
func TestCLI_WatchAsksOnOneConnection(t *testing.T) {
	ns, nc := runNATSServer(t)
	sp := &sv1.RolloutSpec{Name: "r", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}}}
	const refreshes = 5
	var asked atomic.Int32
	sub, err := nc.Subscribe(bus.QuerySubject(bus.QueryRollouts), func(m *nats.Msg) {
		n := asked.Add(1)
		phase := sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING
		if n >= refreshes {
			phase = sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED
		}
		body, _ := proto.Marshal(&sv1.RolloutsAnswer{Rollouts: []*sv1.RolloutView{{
			Rollout: &sv1.Rollout{Id: "r", Spec: sp, Phase: phase, Generation: uint64(n)}}}})
		_ = m.Respond(body)
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	varz := func() uint64 {
		v, err := ns.Varz(nil)
		if err != nil {
			t.Fatal(err)
		}
		return v.TotalConnections
	}
	before := varz()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var out, errb strings.Builder
	if code := run(ctx, []string{"rollout", "watch", "r", "--nats", ns.ClientURL(), "--interval", "100ms"}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	if n := asked.Load(); n < refreshes {
		t.Fatalf("watch asked %d times, want %d", n, refreshes)
	}
	if got := varz() - before; got != 1 {
		t.Errorf("watch made %d connections over %d refreshes, want 1", got, asked.Load())
	}
}
