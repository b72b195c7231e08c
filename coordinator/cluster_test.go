package coordinator

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/internal/freeport"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// freeAddr is an address on 127.0.0.1 for a coordinator to bind a moment
// later: picked below the kernel's ephemeral range, where the port 0
// listeners of the tests running beside this one (one took a picked
// port once in six whole-package runs) and outgoing connections do not land.
func freeAddr(t testing.TB) string {
	t.Helper()
	p, err := freeport.Pick()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

type clusterNode struct {
	cfg Config
	*testCoordinator
}

func (n *clusterNode) start(t testing.TB) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := n.cfg
	cfg.Registerer, cfg.Gatherer = reg, reg
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &testCoordinator{srv: srv, reg: reg, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_ = srv.Run(ctx)
	}()
	n.testCoordinator = c
}

func (n *clusterNode) stop() {
	if n.testCoordinator != nil {
		n.testCoordinator.stop()
		n.testCoordinator = nil
	}
}

func startCluster(t *testing.T, natsURL string, size int, tune ...func(i int, c *Config)) []*clusterNode {
	t.Helper()
	dir := t.TempDir()
	var httpAddrs []string
	nodes := make([]*clusterNode, size)
	for range nodes {
		httpAddrs = append(httpAddrs, freeAddr(t))
	}
	for i := range nodes {
		nodes[i] = &clusterNode{cfg: Config{
			NodeID: fmt.Sprintf("c%d", i+1), DataDir: filepath.Join(dir, fmt.Sprintf("c%d", i+1)),
			RaftAddr: freeAddr(t), HTTPAddr: httpAddrs[i], NATSURL: natsURL,
			BootstrapExpect: size, RetryJoin: httpAddrs, TickInterval: 50 * time.Millisecond,
			Signing: testSigning,
		}}
		for _, f := range tune {
			f(i, &nodes[i].cfg)
		}
		nodes[i].start(t)
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.stop()
		}
	})
	return nodes
}

func leaderOf(nodes []*clusterNode) *clusterNode {
	for _, n := range nodes {
		if n.testCoordinator != nil && n.srv.IsLeader() {
			return n
		}
	}
	return nil
}

func TestCluster_FormsFailsOverAndRestartsWithSameState(t *testing.T) {
	nc, url := startNATS(t)
	nodes := startCluster(t, url, 3)

	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	waitFor(t, "three members", 5*time.Second, func() bool {
		m, err := ClusterMembers(context.Background(), leader.cfg.HTTPAddr)
		return err == nil && len(m.Members) == 3 && m.Leader == leader.cfg.NodeID
	})

	first := send(t, nc, applyIntent("i-1", "web-1"))
	if !first.GetAccepted() {
		t.Fatal(first)
	}

	// The leader goes away; another takes over and handles the next intent.
	leader.stop()
	var next *clusterNode
	waitFor(t, "a new leader", 15*time.Second, func() bool { next = leaderOf(nodes); return next != nil })
	ab := send(t, nc, &sv1.Intent{Id: "i-2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}})
	if !ab.GetAccepted() || ab.GetIndex() <= first.GetIndex() {
		t.Fatalf("abort on the new leader: %v", ab)
	}
	waitFor(t, "the new leader's desired state", 5*time.Second, func() bool {
		return desiredInBucket(t, nc, "web").GetGeneration() == ab.GetIndex()
	})

	// The old leader comes back from its data directory and catches up.
	leader.start(t)
	waitFor(t, "every replica to hold the same state", 15*time.Second, func() bool {
		want := next.srv.fsm.State().Snapshot()
		for _, n := range nodes {
			if !proto.Equal(n.srv.fsm.State().Snapshot(), want) {
				return false
			}
		}
		return true
	})

	// All three stop and start again: the state is intact and the cluster
	// carries on.
	want := next.srv.fsm.State().Snapshot()
	for _, n := range nodes {
		n.stop()
	}
	for _, n := range nodes {
		n.start(t)
	}
	waitFor(t, "a leader after a full restart", 15*time.Second, func() bool { return leaderOf(nodes) != nil })
	for _, n := range nodes {
		waitFor(t, n.cfg.NodeID+" to restore its state", 10*time.Second, func() bool {
			return proto.Equal(n.srv.fsm.State().Snapshot(), want)
		})
	}
	// web-1 is rolling back with no live node to wait for: the leader
	// confirms that once it has waited for the fleet's statuses after its
	// start, which on a loaded machine may come before the next intent.
	// A second rollout is refused while web-1 rolls back, and accepted only
	// after the rollback was confirmed.
	res := send(t, nc, applyIntent("i-3", "web-2"))
	var confirmed uint64
	var now *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { now = leaderOf(nodes); return now != nil })
	for _, e := range now.srv.fsm.State().Rollout("web-1").GetHistory() {
		if e.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK {
			confirmed = e.GetIndex()
		}
	}
	switch {
	case res.GetAccepted() && (confirmed == 0 || confirmed > res.GetIndex()):
		t.Fatalf("second rollout accepted while web-1 is still rolling back: %v (rollback confirmed at index %d)", res, confirmed)
	case !res.GetAccepted() && !strings.Contains(res.GetError(), "web-1"):
		t.Fatalf("second rollout refused for another reason than web-1: %v", res)
	}
}

func TestCluster_RemovePeer(t *testing.T) {
	_, url := startNATS(t)
	nodes := startCluster(t, url, 3)
	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	var victim *clusterNode
	for _, n := range nodes {
		if n != leader {
			victim = n
			break
		}
	}
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.cfg.HTTPAddr)
	}
	victim.stop()
	if err := RemovePeer(context.Background(), addrs, victim.cfg.NodeID); err != nil {
		t.Fatal(err)
	}
	m, err := ClusterMembers(context.Background(), leader.cfg.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Members) != 2 {
		t.Fatalf("members after removal: %+v", m.Members)
	}
}

// Removing a live coordinator while another is down would leave a
// configuration whose quorum cannot be reached: the leader refuses, names
// the peer that does not answer, and the cluster keeps committing.
func TestCluster_RemovePeerThatWouldLoseQuorumIsRefused(t *testing.T) {
	nc, url := startNATS(t)
	nodes := startCluster(t, url, 3)
	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	var followers []*clusterNode
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.cfg.HTTPAddr)
		if n != leader {
			followers = append(followers, n)
		}
	}
	dead, live := followers[0], followers[1]
	dead.stop()
	waitFor(t, "the leader to notice "+dead.cfg.NodeID+" is down", 10*time.Second, func() bool {
		return leader.srv.peerFailures.unreachable(raft.ServerID(dead.cfg.NodeID))
	})

	err := RemovePeer(context.Background(), addrs, live.cfg.NodeID)
	if err == nil || !strings.Contains(err.Error(), "quorum") || !strings.Contains(err.Error(), dead.cfg.NodeID) {
		t.Fatalf("removing %s while %s is down: %v; want a refusal naming quorum and %s", live.cfg.NodeID, dead.cfg.NodeID, err, dead.cfg.NodeID)
	}
	if res := send(t, nc, applyIntent("i-1", "web-1")); !res.GetAccepted() {
		t.Fatalf("the cluster does not commit after the refused removal: %v", res)
	}
	m, err := ClusterMembers(context.Background(), leader.cfg.HTTPAddr)
	if err != nil || len(m.Members) != 3 {
		t.Fatalf("members after the refused removal: %+v, %v", m, err)
	}

	// Removing the dead one leaves two live voters: allowed.
	if err := RemovePeer(context.Background(), addrs, dead.cfg.NodeID); err != nil {
		t.Fatalf("removing the dead %s: %v", dead.cfg.NodeID, err)
	}
}

// `coordinator members` is what an operator reads when coordinators die:
// the leader says which members it cannot reach, a coordinator without a
// leader says it is a candidate, and one that does not lead does not claim
// to know that the others follow.
func TestCluster_MembersSayWhichCoordinatorsAreGone(t *testing.T) {
	_, url := startNATS(t)
	nodes := startCluster(t, url, 3)
	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	var followers []*clusterNode
	for _, n := range nodes {
		if n != leader {
			followers = append(followers, n)
		}
	}
	roles := func(n *clusterNode) map[string]string {
		m, err := ClusterMembers(context.Background(), n.cfg.HTTPAddr)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, mem := range m.Members {
			out[mem.ID] = mem.Role
		}
		return out
	}
	want := map[string]string{leader.cfg.NodeID: "leader", followers[0].cfg.NodeID: "follower", followers[1].cfg.NodeID: "follower"}
	waitFor(t, "every member following the leader", 10*time.Second, func() bool { return fmt.Sprint(roles(leader)) == fmt.Sprint(want) })

	dead, live := followers[0], followers[1]
	dead.stop()
	want[dead.cfg.NodeID] = "unreachable"
	waitFor(t, "the leader to say "+dead.cfg.NodeID+" is unreachable", 10*time.Second, func() bool {
		return fmt.Sprint(roles(leader)) == fmt.Sprint(want)
	})
	// A follower knows the leader and itself, not whether the others answer.
	if got, want := fmt.Sprint(roles(live)), fmt.Sprint(map[string]string{
		leader.cfg.NodeID: "leader", live.cfg.NodeID: "follower", dead.cfg.NodeID: "unknown",
	}); got != want {
		t.Errorf("members from the follower %s: %s, want %s", live.cfg.NodeID, got, want)
	}

	// The leader dies too: the last one has no leader and says so.
	leader.stop()
	waitFor(t, live.cfg.NodeID+" to campaign", 10*time.Second, func() bool {
		return fmt.Sprint(roles(live)) == fmt.Sprint(map[string]string{
			leader.cfg.NodeID: "unknown", live.cfg.NodeID: "candidate", dead.cfg.NodeID: "unknown",
		})
	})
}

// A join naming its coordinator by an id no node id may have, or a Raft
// address other coordinators cannot dial, is refused with 400 naming the
// field, before the leader commits a configuration holding it: a member at
// "c9-host" would count toward quorum and never answer.
func TestCluster_JoinRefusesAMalformedIDOrRaftAddr(t *testing.T) {
	_, url := startNATS(t)
	nodes := startCluster(t, url, 3)
	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	cases := []struct{ name, body, want string }{
		{"no id", `{"raft_addr": "127.0.0.1:7001"}`, "id: required"},
		{"blank id", `{"id": "  ", "raft_addr": "127.0.0.1:7001"}`, `id: invalid name: "  ": want 1-63 letters`},
		{"id with a dot", `{"id": "c9.eu", "raft_addr": "127.0.0.1:7001"}`, `id: invalid name: "c9.eu"`},
		{"no raft_addr", `{"id": "c9"}`, "raft_addr: required"},
		{"raft_addr without a port", `{"id": "c9", "raft_addr": "c9-host"}`, `raft_addr "c9-host": want host:port`},
		{"raft_addr without a host", `{"id": "c9", "raft_addr": ":7001"}`, `raft_addr ":7001": the host is missing`},
		{"raft_addr port out of range", `{"id": "c9", "raft_addr": "c9-host:99999"}`, `raft_addr "c9-host:99999": port "99999": want 1..65535`},
		{"raft_addr unspecified", `{"id": "c9", "raft_addr": "0.0.0.0:7001"}`, `raft_addr "0.0.0.0:7001": give an address other coordinators can reach`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, err := http.Post("http://"+leader.cfg.HTTPAddr+"/v1/cluster/join", "application/json", strings.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), c.want) {
				t.Errorf("join %s: %d %q, want 400 saying %q", c.body, resp.StatusCode, body, c.want)
			}
		})
	}
	m, err := ClusterMembers(context.Background(), leader.cfg.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Members) != 3 {
		t.Fatalf("members after the refused joins: %+v, want the 3 coordinators only", m.Members)
	}
}
