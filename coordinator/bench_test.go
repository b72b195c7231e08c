package coordinator

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/fsm"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// BenchmarkCluster_CommitLatency measures, on a 3-node coordinator cluster
// over real TCP with raft-boltdb on disk, how long the leader takes to
// commit one rollout step: a RolloutAdvanceEntry through raftApply that
// moves a canary between two weights, so the state machine derives a new
// desired state and the publisher writes it to NATS each time, as for a
// real step. Beside it, interleaved in the same loop so both see the same
// machine, a bare hashicorp/raft cluster of the same shape (3 nodes, TCP
// transport, raft-boltdb, the coordinator's timeouts) applies entries of the
// same bytes to a state machine that does nothing. The difference between
// the two is what Switchyard adds to a Raft commit.
//
// Reported: step-p50-ms, step-p99-ms (rollout step), raw-p50-ms, raw-p99-ms
// (bare Raft apply); ns/op is one of each.
func BenchmarkCluster_CommitLatency(b *testing.B) {
	nc, url := startNATS(b)
	nodes := benchCluster(b, url, 3)
	var leader *clusterNode
	waitFor(b, "a leader", 15*time.Second, func() bool { leader = leaderOf(nodes); return leader != nil })
	waitFor(b, "leadership established", 10*time.Second, func() bool { return testutil.ToFloat64(leader.srv.metrics.isLeader) == 1 })

	res := send(b, nc, &sv1.Intent{Id: "bench-apply", Operator: "bench", Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: &sv1.RolloutSpec{
		Name: "bench-1", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
			{Kind: &sv1.Step_SetWeight{SetWeight: 20}},
			{Kind: &sv1.Step_SetWeight{SetWeight: 50}},
			{Kind: &sv1.Step_Pause{Pause: &sv1.Pause{}}},
		}}}},
	}}}})
	if !res.GetAccepted() {
		b.Fatalf("apply: %v", res)
	}
	raw := startRawCluster(b, 3)

	step := func(from, to int32) *sv1.RolloutAdvanceEntry {
		return &sv1.RolloutAdvanceEntry{Rollout: "bench-1", FromStep: from, ToStep: to, Message: "bench", StampedAt: timestamppb.Now()}
	}
	payload, err := fsm.Encode(fsm.RolloutAdvanceType, step(0, 1))
	if err != nil {
		b.Fatal(err)
	}
	var stepLat, rawLat []time.Duration
	var at int32
	commitStep := func() {
		start := time.Now()
		if _, _, err := leader.srv.raftApply(fsm.RolloutAdvanceType, step(at, 1-at)); err != nil {
			b.Fatalf("rollout step: %v", err)
		}
		stepLat = append(stepLat, time.Since(start))
		at = 1 - at
	}
	applyRaw := func() {
		start := time.Now()
		if err := raw.Apply(payload, applyTimeout).Error(); err != nil {
			b.Fatalf("raw apply: %v", err)
		}
		rawLat = append(rawLat, time.Since(start))
	}
	// The order alternates, so neither side always runs while the other's
	// after-work (the publisher's write to NATS, a follower's fsync) is
	// still going on.
	for i := 0; b.Loop(); i++ {
		if i%2 == 0 {
			commitStep()
			applyRaw()
		} else {
			applyRaw()
			commitStep()
		}
	}
	b.StopTimer()
	if r := leader.srv.fsm.State().Rollout("bench-1"); r.GetStep() != at {
		b.Fatalf("rollout at step %d after the loop, want %d: the steps did not all apply", r.GetStep(), at)
	}
	reportLatency(b, "step", stepLat)
	reportLatency(b, "raw", rawLat)
}

// reportLatency reports the median and 99th percentile of d in
// milliseconds.
func reportLatency(b *testing.B, name string, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(p float64) float64 {
		return float64(s[min(len(s)-1, int(p*float64(len(s))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(q(0.50), name+"-p50-ms")
	b.ReportMetric(q(0.99), name+"-p99-ms")
}

// benchCluster is startCluster with quiet logs.
func benchCluster(b *testing.B, natsURL string, size int) []*clusterNode {
	b.Helper()
	dir := b.TempDir()
	var httpAddrs []string
	nodes := make([]*clusterNode, size)
	for range nodes {
		httpAddrs = append(httpAddrs, freeAddr(b))
	}
	quiet := slog.New(slog.DiscardHandler)
	for i := range nodes {
		nodes[i] = &clusterNode{cfg: Config{
			NodeID: fmt.Sprintf("c%d", i+1), DataDir: filepath.Join(dir, fmt.Sprintf("c%d", i+1)),
			RaftAddr: freeAddr(b), HTTPAddr: httpAddrs[i], NATSURL: natsURL,
			BootstrapExpect: size, RetryJoin: httpAddrs, TickInterval: 50 * time.Millisecond,
			Logger: quiet, Signing: testSigning,
		}}
		nodes[i].start(b)
	}
	b.Cleanup(func() {
		for _, n := range nodes {
			n.stop()
		}
	})
	return nodes
}

// rawFSM is a state machine that only counts.
type rawFSM struct{ applied uint64 }

func (f *rawFSM) Apply(*raft.Log) any                 { f.applied++; return nil }
func (f *rawFSM) Snapshot() (raft.FSMSnapshot, error) { return rawSnapshot{}, nil }
func (f *rawFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type rawSnapshot struct{}

func (rawSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (rawSnapshot) Release()                             {}

// startRawCluster starts size bare Raft nodes built as setupRaft builds a
// coordinator's (TCP transport, raft-boltdb, file snapshots, the same
// timeouts) and returns the leader once one is elected.
func startRawCluster(b *testing.B, size int) *raft.Raft {
	b.Helper()
	dir := b.TempDir()
	logger := hclog.New(&hclog.LoggerOptions{Name: "raw-raft", Level: hclog.Error, Output: io.Discard})
	var conf raft.Configuration
	type node struct {
		cfg   *raft.Config
		store *raftboltdb.BoltStore
		snaps raft.SnapshotStore
		trans *raft.NetworkTransport
	}
	nodes := make([]node, size)
	for i := range nodes {
		rc := raft.DefaultConfig()
		rc.LocalID = raft.ServerID(fmt.Sprintf("r%d", i+1))
		rc.HeartbeatTimeout = 300 * time.Millisecond
		rc.ElectionTimeout = 300 * time.Millisecond
		rc.LeaderLeaseTimeout = 200 * time.Millisecond
		rc.CommitTimeout = 20 * time.Millisecond
		rc.SnapshotThreshold = 1024
		rc.SnapshotInterval = 30 * time.Second
		rc.TrailingLogs = 1024
		rc.Logger = logger
		d := filepath.Join(dir, string(rc.LocalID))
		store, err := raftboltdb.New(raftboltdb.Options{Path: d + "-raft.db"})
		if err != nil {
			b.Fatal(err)
		}
		snaps, err := raft.NewFileSnapshotStoreWithLogger(d, 3, logger)
		if err != nil {
			b.Fatal(err)
		}
		trans, err := raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, 3, 10*time.Second, logger)
		if err != nil {
			b.Fatal(err)
		}
		nodes[i] = node{cfg: rc, store: store, snaps: snaps, trans: trans}
		conf.Servers = append(conf.Servers, raft.Server{ID: rc.LocalID, Address: trans.LocalAddr()})
	}
	rafts := make([]*raft.Raft, size)
	b.Cleanup(func() {
		for i, r := range rafts {
			if r != nil {
				_ = r.Shutdown().Error()
			}
			_ = nodes[i].trans.Close()
			_ = nodes[i].store.Close()
		}
	})
	for i, n := range nodes {
		r, err := raft.NewRaft(n.cfg, &rawFSM{}, n.store, n.store, n.snaps, n.trans)
		if err != nil {
			b.Fatal(err)
		}
		rafts[i] = r
		if err := r.BootstrapCluster(conf).Error(); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		for _, r := range rafts {
			if r.State() == raft.Leader {
				if err := r.Barrier(applyTimeout).Error(); err != nil {
					b.Fatal(err)
				}
				return r
			}
		}
		select {
		case <-ctx.Done():
			b.Fatal("raw raft cluster elected no leader")
		case <-time.After(20 * time.Millisecond):
		}
	}
}
