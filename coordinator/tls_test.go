package coordinator

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/audit"
	"github.com/switchyard/switchyard/internal/certs"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// clusterCA makes a CA and a certificate per coordinator at run time.
func clusterCA(t *testing.T, name string, ids ...string) map[string]certs.Files {
	t.Helper()
	ca, err := certs.NewCA(filepath.Join(t.TempDir(), name), name)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]certs.Files{}
	for _, id := range ids {
		f, err := ca.Issue(id, []string{"127.0.0.1", "localhost"})
		if err != nil {
			t.Fatal(err)
		}
		out[id] = f
	}
	return out
}

func TestCluster_MutualTLSFailsOverAndRefusesAForeignCA(t *testing.T) {
	nc, url := startNATS(t)
	files := clusterCA(t, "cluster-ca", "c1", "c2", "c3")
	nodes := startCluster(t, url, 3, func(i int, c *Config) {
		c.ClusterTLS = files[fmt.Sprintf("c%d", i+1)]
	})
	client := &ClusterClient{}
	var err error
	if client.TLS, err = ClusterClientTLS(files["c1"]); err != nil {
		t.Fatal(err)
	}

	var leader *clusterNode
	waitFor(t, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	waitFor(t, "three members over https", 5*time.Second, func() bool {
		m, err := client.Members(context.Background(), leader.cfg.HTTPAddr)
		return err == nil && len(m.Members) == 3
	})
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the leader's intent stream", 10*time.Second, func() bool {
		_, err := js.Stream(context.Background(), bus.IntentStream)
		return err == nil
	})
	if _, err := ClusterMembers(context.Background(), leader.cfg.HTTPAddr); err == nil {
		t.Fatal("the HTTP API answered plain HTTP")
	}
	first := send(t, nc, applyIntent("i-1", "web-1"))
	if !first.GetAccepted() {
		t.Fatal(first)
	}

	// Failover over TLS: the leader goes, another takes over and commits.
	leader.stop()
	var next *clusterNode
	waitFor(t, "a new leader", 15*time.Second, func() bool { next = leaderOf(nodes); return next != nil })
	ab := send(t, nc, &sv1.Intent{Id: "i-2", Action: &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: "web-1"}}})
	if !ab.GetAccepted() || ab.GetIndex() <= first.GetIndex() {
		t.Fatalf("abort on the new leader: %v", ab)
	}
	leader.start(t)
	waitFor(t, "the old leader to catch up over TLS", 15*time.Second, func() bool {
		return leader.srv.raft.AppliedIndex() >= ab.GetIndex()
	})

	// A coordinator whose certificate another CA signed tries to join.
	foreign := clusterCA(t, "other-ca", "c4")["c4"]
	var addrs []string
	for _, n := range nodes {
		addrs = append(addrs, n.cfg.HTTPAddr)
	}
	intruder := &clusterNode{cfg: Config{
		NodeID: "c4", DataDir: filepath.Join(t.TempDir(), "c4"), RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t),
		NATSURL: url, BootstrapExpect: 0, RetryJoin: addrs, ClusterTLS: foreign, Signing: testSigning,
	}}
	intruder.start(t)
	defer intruder.stop()
	waitFor(t, "the intruder's join attempts to fail", 15*time.Second, func() bool {
		return testutil.ToFloat64(intruder.srv.metrics.joinFailures) >= 3
	})
	// Even with the address known, Raft itself refuses it: the leader's
	// handshake with it fails both ways and is counted.
	var lead *clusterNode
	waitFor(t, "a leader", 10*time.Second, func() bool { lead = leaderOf(nodes); return lead != nil })
	before := testutil.ToFloat64(lead.srv.metrics.peerRejected)
	stream, err := newRaftStreamLayer("127.0.0.1:0", "", mustMutual(t, foreign), func(net.Addr, error) {})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	if c, err := stream.Dial(raft.ServerAddress(lead.srv.RaftAddr()), 2*time.Second); err == nil {
		// TLS 1.3: the client finishes before the server has checked the
		// client certificate; the server's refusal arrives on first read.
		_, _ = c.Write([]byte{0})
		buf := make([]byte, 1)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err == nil {
			t.Fatal("the leader accepted a raft connection from a foreign certificate")
		}
		c.Close()
	} else if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("dial with a foreign certificate: %v", err)
	}
	waitFor(t, "the leader to count the refused peer", 5*time.Second, func() bool {
		return testutil.ToFloat64(lead.srv.metrics.peerRejected) > before
	})
	// A cluster change from a client without a certificate is refused too.
	plainCA, err := ClusterClientTLS(certs.Files{CA: files["c1"].CA})
	if err != nil {
		t.Fatal(err)
	}
	if err := (&ClusterClient{TLS: plainCA}).RemovePeer(context.Background(), addrs, "c2"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("remove-peer without a certificate: %v", err)
	}
	m, err := client.Members(context.Background(), lead.cfg.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Members) != 3 {
		t.Fatalf("members after the intruder: %+v", m.Members)
	}
	for _, mem := range m.Members {
		if mem.ID == "c4" {
			t.Fatal("the intruder joined")
		}
	}
	if _, l := intruder.srv.raft.LeaderWithID(); l != "" {
		t.Fatalf("the intruder follows leader %s", l)
	}

	// An epoch raise is recorded with who asked: the subject of the
	// cluster certificate the change was verified with.
	ch, err := client.RaiseEpoch(context.Background(), addrs, "recovery drill")
	if err != nil {
		t.Fatal(err)
	}
	rec := epochRecord(t, lead.srv, ch.To)
	if !strings.Contains(rec.GetActor(), "cluster certificate") || !strings.Contains(rec.GetActor(), "CN=c1") || rec.GetIndex() == 0 {
		t.Fatalf("epoch audit record: actor %q index %d; want the certificate's subject and the entry's index", rec.GetActor(), rec.GetIndex())
	}
}

// epochRecord waits for srv's audit chain to hold the record of the raise
// to epoch, and returns it.
func epochRecord(t *testing.T, srv *Server, epoch uint64) *sv1.AuditRecord {
	t.Helper()
	var found *sv1.AuditRecord
	waitFor(t, "the epoch raise's audit record", 10*time.Second, func() bool {
		for _, e := range srv.fsm.State().AuditEntries(0, 10000) {
			rec, err := audit.Open(e)
			if err != nil {
				t.Fatal(err)
			}
			if rec.GetKind() == "epoch" && strings.Contains(rec.GetMessage(), fmt.Sprintf("raised to %d ", epoch)) {
				found = rec
				return true
			}
		}
		return false
	})
	return found
}

func mustMutual(t *testing.T, f certs.Files) *tls.Config {
	t.Helper()
	c, err := f.Mutual()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// A coordinator with --raft-advertise gives its peers that address (it is
// its address in the Raft configuration) while it listens on --raft-addr.
func TestCoordinator_RaftAdvertiseIsTheAddressPeersAreGiven(t *testing.T) {
	_, url := startNATS(t)
	reg := prometheus.NewRegistry()
	const advertised = "127.0.0.1:7999"
	srv, err := New(Config{
		NodeID: "c1", DataDir: t.TempDir(), RaftAddr: "127.0.0.1:0", RaftAdvertise: advertised, HTTPAddr: "127.0.0.1:0",
		NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "leadership", 10*time.Second, srv.IsLeader)
	m, err := srv.MembersView()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Members) != 1 || m.Members[0].RaftAddr != advertised {
		t.Errorf("members %+v, want c1 at %s", m.Members, advertised)
	}
	if m.RaftAdvertise != advertised || m.RaftListen == "" || strings.HasSuffix(m.RaftListen, ":0") || m.RaftListen == advertised {
		t.Errorf("raft listen %q, advertise %q; want the bound address and %s", m.RaftListen, m.RaftAdvertise, advertised)
	}
	if p := srv.self(); p.RaftAddr != advertised {
		t.Errorf("/v1/cluster/self says raft_addr %q, want %s", p.RaftAddr, advertised)
	}
}

// The cluster client's HTTP/2 transport writes its protocols into its TLS
// config on first use; the config it was given also serves TLS handshakes
// (Raft's listener in the coordinator), so the client works on its own copy.
// Run with -race: a shared config is a data race here.
func TestClusterClient_LeavesItsTLSConfigToOtherUsers(t *testing.T) {
	files := clusterCA(t, "cluster-ca", "c1")
	cfg, err := ClusterClientTLS(files["c1"])
	if err != nil {
		t.Fatal(err)
	}
	protos := len(cfg.NextProtos)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = c.(*tls.Conn).Handshake(); c.Close() }()
		}
	}()
	client := &ClusterClient{TLS: cfg}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 5 {
			_, _ = client.Members(context.Background(), ln.Addr().String())
		}
	}()
	for range 5 {
		if c, err := tls.Dial("tcp", ln.Addr().String(), cfg); err == nil {
			c.Close()
		}
	}
	<-done
	if len(cfg.NextProtos) != protos {
		t.Errorf("the client changed the TLS config it was given: NextProtos %v", cfg.NextProtos)
	}
}
