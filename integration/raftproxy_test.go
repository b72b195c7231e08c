package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// TestCluster_LeaderPartitionedBehindRaftProxies runs three coordinators
// whose Raft ports sit behind fault proxies (each started with
// --raft-advertise set to its proxy, mutual TLS verified end to end through
// it), partitions the leader over Raft while it keeps running, and checks
// that the other two elect a new leader, that the old one steps down, and
// that after the partition heals it follows the new leader with the same
// log.
func TestCluster_LeaderPartitionedBehindRaftProxies(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, _ := binaries(t)
	url := harnesstest.StartNATS(t)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url, RaftProxies: true})
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old := c.Coordinators[leader]

	// Every member is known by its advertised (proxy) address, and each
	// coordinator says where it listens and what it advertises.
	res, err := harness.RunCLI(ctx, sy, nil, "coordinator", "members", "--http", old.HTTPAddr, "-o", "json", "--cluster-ca", c.CA.CAPath())
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("coordinator members: %v %+v", err, res)
	}
	var m coordinator.Members
	if err := json.Unmarshal([]byte(res.Stdout), &m); err != nil {
		t.Fatalf("members -o json: %v\n%s", err, res.Stdout)
	}
	if m.RaftListen != old.RaftAddr || m.RaftAdvertise != old.RaftAdvertise {
		t.Errorf("members from %s: raft listen %q advertise %q, want %q and %q", old.ID, m.RaftListen, m.RaftAdvertise, old.RaftAddr, old.RaftAdvertise)
	}
	for _, mem := range m.Members {
		co := c.Coordinators[c.Index(mem.ID)]
		if mem.RaftAddr != co.RaftAdvertise || mem.RaftAddr == co.RaftAddr {
			t.Errorf("member %s at %s, want its proxy %s (it listens on %s)", mem.ID, mem.RaftAddr, co.RaftAdvertise, co.RaftAddr)
		}
	}
	res, err = harness.RunCLI(ctx, sy, nil, "coordinator", "members", "--http", old.HTTPAddr, "--cluster-ca", c.CA.CAPath())
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("coordinator members: %v %+v", err, res)
	}
	if want := fmt.Sprintf("listens on %s, advertised to peers as %s", old.RaftAddr, old.RaftAdvertise); !strings.Contains(res.Stdout, want) {
		t.Errorf("coordinator members does not say %q:\n%s", want, res.Stdout)
	}
	// Replication runs through the proxies: a commit reaches every replica.
	if err := c.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}

	if err := c.PartitionRaft(leader); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = c.HealRaft(leader)
		}
	}()
	others := []int{}
	for i := range c.Coordinators {
		if i != leader {
			others = append(others, i)
		}
	}
	var next int
	harnesstest.Eventually(t, ctx, "the two others to elect a new leader", func(ctx context.Context) error {
		next = -1
		for _, i := range others {
			m, err := c.Members(ctx, i)
			if err != nil {
				return err
			}
			if m.Leader == "" || m.Leader == old.ID {
				return fmt.Errorf("%s follows %q", c.Coordinators[i].ID, m.Leader)
			}
			next = c.Index(m.Leader)
		}
		return nil
	})
	harnesstest.Eventually(t, ctx, old.ID+" to step down while cut off", func(ctx context.Context) error {
		m, err := c.Members(ctx, leader)
		if err != nil {
			return err
		}
		if m.State == "Leader" {
			return fmt.Errorf("%s still leads (term %d)", old.ID, m.Term)
		}
		return nil
	})
	if !old.Running() {
		t.Fatalf("%s exited during the partition:\n%s", old.ID, old.Tail(20))
	}

	if err := c.HealRaft(leader); err != nil {
		t.Fatal(err)
	}
	healed = true
	for _, px := range c.RaftProxies() {
		if px.Faulty() {
			t.Errorf("raft proxy to %s still faulty after the heal", px.Target())
		}
	}
	got, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got == leader {
		t.Logf("%s won an election again after the heal", old.ID)
	} else if got != next {
		t.Logf("leader after the heal: %s (elected during the partition: %s)", c.Coordinators[got].ID, c.Coordinators[next].ID)
	}
	if err := c.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}
}
