package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// committer commits entries through the leader's Raft.
func committer(t *testing.T, leader *Server) func(fsm.MessageType, proto.Message) {
	return func(typ fsm.MessageType, m proto.Message) {
		t.Helper()
		if _, _, err := leader.raftApply(typ, m); err != nil {
			t.Fatal(err)
		}
	}
}

// finishRollouts commits, through the leader's Raft, n blue-green rollouts
// of service web that each promote and finish, named web-0 on.
func finishRollouts(t *testing.T, leader *Server, n int) {
	t.Helper()
	commit := committer(t, leader)
	for i := range n {
		name := fmt.Sprintf("web-%d", i)
		sp := &sv1.RolloutSpec{Name: name, Service: "web", From: "blue", To: "green",
			Strategy: &sv1.Strategy{Kind: &sv1.Strategy_BlueGreen{BlueGreen: &sv1.BlueGreen{}}}}
		if i%2 == 1 {
			sp.From, sp.To = sp.To, sp.From
		}
		now := timestamppb.Now()
		commit(fsm.IntentType, &sv1.IntentEntry{StampedAt: now, Rules: state.Rules, Intent: &sv1.Intent{Id: "apply-" + name, Operator: "ci",
			Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}})
		commit(fsm.RolloutAdvanceType, &sv1.RolloutAdvanceEntry{Rollout: name, Promote: true, StampedAt: now})
		commit(fsm.RolloutFinishType, &sv1.RolloutFinishEntry{Rollout: name, StampedAt: now})
	}
}

// endDrills commits, through the leader's Raft, n drills of service web
// that end aborted, named d-0 on; the first published ones have had a
// document (started on a node, then aborted).
func endDrills(t *testing.T, leader *Server, n, published int) {
	t.Helper()
	commit := committer(t, leader)
	for i := range n {
		name := fmt.Sprintf("d-%d", i)
		now := timestamppb.Now()
		// Due in an hour: the leader's drill routine leaves it to this.
		commit(fsm.IntentType, &sv1.IntentEntry{StampedAt: now, Rules: state.Rules, Intent: &sv1.Intent{Id: "run-" + name, Operator: "sre",
			Action: &sv1.Intent_RunDrill{RunDrill: &sv1.RunDrill{Spec: &sv1.DrillSpec{Name: name, Service: "web",
				MaxNodes: 1, MaxBasisPoints: 10000, StartAfter: durationpb.New(time.Hour), Duration: durationpb.New(time.Minute),
				Fault: &sv1.Fault{Kind: &sv1.Fault_CpuBurn{CpuBurn: &sv1.CPUBurnFault{Cores: 1}}}}}}}})
		if i < published {
			commit(fsm.DrillStartType, &sv1.DrillStartEntry{Drill: name, Targets: []string{"edge-1"}, StampedAt: now})
		}
		commit(fsm.DrillEndType, &sv1.DrillEndEntry{Drill: name, Aborted: true, Reason: "test", StampedAt: now})
	}
}

// The leader's retention forgets the finished rollouts older than
// --forget-finished-after beyond each service's newest 20, through one
// entry every replica applies alike, and only once every member said it
// applies such an entry (a member of an older release would stop at it; a
// member that does not answer might be one). A forgotten rollout's name
// stays taken, and a query for it says where it went.
func TestCluster_RetentionForgetsOldFinishedRolloutsOnEveryReplica(t *testing.T) {
	nc, url := startNATS(t)
	nodes := startCluster(t, url, 3, func(_ int, c *Config) { c.ForgetFinishedAfter = 2 * time.Second })
	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	waitFor(t, "three members", 10*time.Second, func() bool {
		m, err := leader.srv.MembersView()
		return err == nil && len(m.Members) == 3
	})
	var follower *clusterNode
	for _, n := range nodes {
		if n != leader {
			follower = n
		}
	}
	follower.stop()

	const extra = 3
	finishRollouts(t, leader.srv, state.KeepFinishedPerService+extra)
	endDrills(t, leader.srv, state.KeepFinishedPerService+extra, 2)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	drillDoc := func(name string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		kv, err := js.KeyValue(ctx, bus.DrillsBucket)
		if err != nil {
			return err
		}
		_, err = kv.Get(ctx, name)
		return err
	}
	waitFor(t, "the published drills' documents in the bucket", 10*time.Second, func() bool {
		return drillDoc("d-0") == nil && drillDoc("d-1") == nil
	})
	// Due once they are 2 s old; the leader looks every 200 ms. With a
	// member silent, it waits.
	time.Sleep(4 * time.Second)
	if _, forgotten := leader.srv.fsm.State().RolloutCounts(); forgotten != 0 {
		t.Fatalf("%d rollouts forgotten while a member could not say it applies that", forgotten)
	}

	follower.start(t)
	want := state.KeepFinishedPerService
	waitFor(t, "every replica to forget the oldest three rollouts and drills", 30*time.Second, func() bool {
		for _, n := range nodes {
			held, forgotten := n.srv.fsm.State().RolloutCounts()
			dheld, dforgotten := n.srv.fsm.State().DrillCounts()
			if held != want || forgotten != extra || dheld != want || dforgotten != extra {
				return false
			}
		}
		return true
	})
	waitFor(t, "the forgotten drills' documents purged from the bucket", 10*time.Second, func() bool {
		return errors.Is(drillDoc("d-0"), jetstream.ErrKeyNotFound) && errors.Is(drillDoc("d-1"), jetstream.ErrKeyNotFound)
	})
	if got := testutil.ToFloat64(leader.srv.metrics.drillsForgotten); got != extra {
		t.Errorf("switchyard_coordinator_drills_forgotten_total %v on the leader, want %d", got, extra)
	}
	var drills sv1.DrillsAnswer
	qctx, qcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer qcancel()
	if err := bus.Query(qctx, nc, bus.QueryDrills, &sv1.DrillsQuery{Drill: "d-2"}, &drills); err == nil || !strings.Contains(err.Error(), "forgotten") {
		t.Errorf("query for a forgotten drill: %v", err)
	}
	for i := range extra {
		if f := leader.srv.fsm.State().Forgotten(fmt.Sprintf("web-%d", i)); f.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED {
			t.Fatalf("web-%d: tombstone %v", i, f)
		}
	}
	if got := testutil.ToFloat64(leader.srv.metrics.rolloutsForgotten); got != extra {
		t.Errorf("switchyard_coordinator_rollouts_forgotten_total %v on the leader, want %d", got, extra)
	}
	waitFor(t, "every replica to hold the same state", 15*time.Second, func() bool {
		want := leader.srv.fsm.State().Snapshot()
		for _, n := range nodes {
			if !proto.Equal(n.srv.fsm.State().Snapshot(), want) {
				return false
			}
		}
		return true
	})

	// A query says where the rollout went; its name stays taken.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var ans sv1.RolloutsAnswer
	err = bus.Query(ctx, nc, bus.QueryRollouts, &sv1.RolloutsQuery{Rollout: "web-0"}, &ans)
	if err == nil || !strings.Contains(err.Error(), "forgotten") || !strings.Contains(err.Error(), "audit log --rollout") {
		t.Fatalf("query for a forgotten rollout: %v", err)
	}
	for svc, want := range map[string]uint32{"": extra, "web": extra, "api": 0} {
		var list sv1.RolloutsAnswer
		if err := bus.Query(ctx, nc, bus.QueryRollouts, &sv1.RolloutsQuery{Summary: true, Service: svc}, &list); err != nil {
			t.Fatal(err)
		}
		if list.GetForgotten() != want || (svc != "api" && len(list.GetRollouts()) != state.KeepFinishedPerService) {
			t.Errorf("list of %q: %d rollouts, %d forgotten; want %d forgotten", svc, len(list.GetRollouts()), list.GetForgotten(), want)
		}
	}
	if res := send(t, nc, applyIntent("i-again", "web-1")); res.GetAccepted() || res.GetCode() != state.CodeConflict {
		t.Fatalf("a forgotten name applied again: %v", res)
	}
}

// Every coordinator says on the bus which later kinds of entry it applies,
// so the leader hears each member wherever it was added from, without its
// HTTP address; a member it cannot hear is named, as is every member for a
// kind none of them applies.
func TestCluster_MembersSayOnTheBusWhatTheyApply(t *testing.T) {
	_, url := startNATS(t)
	nodes := startCluster(t, url, 3)
	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	waitFor(t, "three members", 10*time.Second, func() bool {
		m, err := leader.srv.MembersView()
		return err == nil && len(m.Members) == 3
	})
	var followers []string
	var follower *clusterNode
	for _, n := range nodes {
		if n != leader {
			followers = append(followers, n.cfg.NodeID)
			follower = n
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// No --retry-join address: the bus alone.
	if missing := leader.srv.membersApplyAt(ctx, appliesForget, nil); len(missing) != 0 {
		t.Fatalf("members not heard on the bus: %v", missing)
	}
	if missing := leader.srv.membersApplyAt(ctx, "a-later-kind", nil); !slices.Equal(missing, followers) {
		t.Fatalf("members that apply a kind none applies: %v, want %v", missing, followers)
	}
	follower.stop()
	if missing := leader.srv.membersApplyAt(ctx, appliesForget, nil); !slices.Equal(missing, []string{follower.cfg.NodeID}) {
		t.Fatalf("with %s stopped, members not heard: %v", follower.cfg.NodeID, missing)
	}
}
