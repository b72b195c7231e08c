package integration

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	"github.com/switchyard/switchyard/internal/certs"
)

// TestCluster_CoordinatorFromAnotherCACannotJoin starts a fourth
// coordinator process next to a running three-node cluster (Raft and the
// HTTP API on mutual TLS). It has valid NATS credentials, the right
// addresses and a certificate for 127.0.0.1, but from another CA: every
// attempt is refused and counted, and the cluster stays three.
func TestCluster_CoordinatorFromAnotherCACannotJoin(t *testing.T) {
	// Serial (no t.Parallel): the leader's term must not move while the
	// intruder knocks, and a test beside it can delay heartbeats into an
	// election.
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, _ := binaries(t)
	nb := harnesstest.StartNATS(t)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: nb})
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, err := c.Members(ctx, leader)
	if err != nil {
		t.Fatal(err)
	}
	rejected := func() float64 {
		sum := 0.0
		for i := range c.Coordinators {
			text, err := c.Metrics(ctx, i)
			if err != nil {
				continue
			}
			v, _ := harness.MetricValue(text, "switchyard_coordinator_cluster_peers_rejected_total", nil)
			sum += v
		}
		return sum
	}
	baseline := rejected()

	dir := harnesstest.Dir(t)
	other, err := certs.NewCA(filepath.Join(dir, "other-ca"), "another CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := other.Issue("c4", []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := nb.Security(bus.RoleCoordinator, "c4")
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for range 2 {
		p, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(p))
	}
	args := []string{"coordinator", "--node-id", "c4", "--data-dir", filepath.Join(dir, "c4"),
		"--raft-addr", addrs[0], "--http-addr", addrs[1], "--bootstrap-expect", "0",
		"--nats", nb.URL, "--nats-creds", sec.Creds, "--nats-ca", sec.CA,
		"--cluster-ca", cert.CA, "--cluster-cert", cert.Cert, "--cluster-key", cert.Key,
		// The cluster's own signing key: only the certificate is foreign.
		"--signing-key", c.TrustKeyPrivate()}
	for _, co := range c.Coordinators {
		args = append(args, "--retry-join", co.HTTPAddr)
	}
	intruder, err := harness.StartProcess(harness.ProcessSpec{Name: "c4", Path: sy, Args: args, LogDir: filepath.Join(dir, "logs")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := intruder.Stop(); err != nil {
			t.Errorf("intruder: %v", err)
		}
	})

	err = harness.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
		if !intruder.Running() {
			return harness.Permanent(fmt.Errorf("the intruder exited: %s", intruder.Tail(20)))
		}
		if got := rejected() - baseline; got < 3 {
			return fmt.Errorf("%v refused handshakes so far", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.Coordinators {
		m, err := c.Members(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if len(m.Members) != 3 {
			t.Fatalf("%s sees %d members: %+v", c.Coordinators[i].ID, len(m.Members), m.Members)
		}
		for _, mem := range m.Members {
			if mem.ID == "c4" {
				t.Fatalf("%s lists the intruder", c.Coordinators[i].ID)
			}
		}
		if m.Term != before.Term && i == leader {
			t.Errorf("the term moved from %d to %d while the intruder knocked", before.Term, m.Term)
		}
	}
	if now, err := c.WaitLeader(ctx); err != nil || now != leader {
		t.Fatalf("leader %d after the intruder, was %d: %v", now, leader, err)
	}
	t.Logf("refused TLS handshakes counted by the cluster: %v", rejected()-baseline)
}
