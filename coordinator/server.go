// Package coordinator is the replicated Switchyard coordinator: a Raft node
// whose leader turns intents into committed decisions and publishes desired
// state, while every node tracks the fleet and answers reads.
package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/analysis"
	"github.com/switchyard/switchyard/coordinator/audit"
	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/notify"
	"github.com/switchyard/switchyard/internal/boltcheck"
	"github.com/switchyard/switchyard/internal/certs"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/names"
)

// Config configures one coordinator.
type Config struct {
	// NodeID names this coordinator in the Raft cluster. Required.
	NodeID string
	// DataDir holds the Raft log, stable store and snapshots. Required.
	DataDir string
	// RaftAddr is the TCP address Raft listens on, e.g. 127.0.0.1:7000.
	RaftAddr string
	// RaftAdvertise is the address the other coordinators dial to reach
	// this one's Raft (a NAT, a load balancer or a TCP proxy in front of
	// RaftAddr); RaftAddr when empty. With mutual TLS the certificate must
	// name its host.
	RaftAdvertise string
	// HTTPAddr serves /metrics, /healthz and the read API; empty disables.
	HTTPAddr string
	// PprofAddr serves Go's profiling endpoints (/debug/pprof/) on a
	// listener of their own; it must be a loopback address. Empty (the
	// default) serves none.
	PprofAddr string
	// NATSURL is the bus; ignored when Conn is set.
	NATSURL string
	// NATS is this coordinator's NATS identity and the CA of the NATS
	// servers; ignored when Conn is set.
	NATS bus.Security
	// ClusterTLS is the cluster CA and this coordinator's certificate:
	// when set, Raft and the HTTP API speak mutual TLS and only
	// coordinators with a certificate from that CA can join.
	ClusterTLS certs.Files
	// Conn is an existing bus connection (switchyard dev); optional.
	Conn *nats.Conn
	// BootstrapExpect is the number of coordinators to bootstrap the
	// cluster with, once they have found each other through RetryJoin. 1
	// bootstraps a single-node cluster; 0 only joins an existing cluster.
	// Ignored when the data directory holds Raft state already.
	BootstrapExpect int
	// RetryJoin lists other coordinators' HTTP addresses, tried until this
	// node is part of a cluster.
	RetryJoin []string
	// Replicas is the replica count of the intent stream and the buckets;
	// 0 chooses what the NATS cluster can hold (3 on 3 or more servers,
	// else 1). A stream that already has more keeps them.
	Replicas int
	// SnapshotThreshold is how many log entries trigger a snapshot.
	SnapshotThreshold uint64
	// TrailingLogs is how many log entries a snapshot leaves behind for
	// followers to catch up from; one further behind is sent the snapshot.
	// 1024 when zero.
	TrailingLogs uint64
	// StaleAfter is how long a node may be silent before it counts as gone.
	StaleAfter time.Duration
	// ForgetAfter is how long a node may be silent before the fleet view
	// forgets it, so that a node that left for good is no longer counted
	// stale; DefaultForgetAfter when zero.
	ForgetAfter time.Duration
	// ForgetFinishedAfter is how long a finished rollout or ended drill
	// stays in the replicated state with its spec and history; after that
	// the leader forgets it (a tombstone keeps its name taken), except the
	// newest state.KeepFinishedPerService of each service.
	// DefaultForgetFinishedAfter when zero; KeepFinished (negative) keeps
	// everything.
	ForgetFinishedAfter time.Duration
	// TickInterval is how often the leader's rollout controller looks at
	// every live rollout.
	TickInterval time.Duration
	// Logger; slog.Default when nil.
	Logger *slog.Logger
	// Registerer receives the coordinator's metrics; Gatherer serves them.
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	// Clock stamps log entries; the real clock when nil.
	Clock clock.Clock
	// Signing signs published documents; its key is required.
	Signing Signing
	// ViewerTokenFile holds a token the read API and the dashboard then
	// require (or a client certificate from the cluster CA); empty leaves
	// reads open to anyone who reaches HTTPAddr.
	ViewerTokenFile string
	// AclBootstrap is the first admin of a new cluster; optional.
	AclBootstrap AclBootstrap
	// WebhookNetworks, when set, are the only networks the leader's
	// rollout webhook calls may connect to; empty allows any address but
	// link-local ones (cloud instance metadata) and a few no webhook has
	// (see hooks.Destinations). A rollout naming a webhook by a refused
	// address is refused when it is applied.
	WebhookNetworks []netip.Prefix
	// Notify are the receivers the leader tells of phase changes,
	// rollbacks and drill reports (see coordinator/notify).
	Notify []notify.Target
	// StopTimeout bounds stopping once Run's context ends: leader work,
	// the snapshot on the way out, Raft and the bus connection. A step
	// still stuck then is logged with every goroutine's stack and Run
	// returns without it (what Raft acknowledged is on disk already).
	// DefaultStopTimeout when zero.
	StopTimeout time.Duration
}

// DefaultStopTimeout leaves a supervisor's usual grace period (ten seconds
// and up between SIGTERM and SIGKILL) for the process to exit on its own.
const DefaultStopTimeout = 8 * time.Second

func (c *Config) setDefaults() error {
	for i := range c.Notify {
		if err := c.Notify[i].Validate(fmt.Sprintf("notifications[%d]", i)); err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
	}
	if c.NodeID == "" {
		return errors.New("coordinator: --node-id is required")
	}
	if err := names.Validate(c.NodeID); err != nil {
		return fmt.Errorf("coordinator: --node-id: %w", err)
	}
	if c.DataDir == "" {
		return errors.New("coordinator: --data-dir is required")
	}
	if c.RaftAddr == "" {
		c.RaftAddr = "127.0.0.1:7000"
	}
	if _, err := checkRaftAdvertise(c.RaftAdvertise); err != nil {
		return err
	}
	if err := checkPprofAddr(c.PprofAddr); err != nil {
		return err
	}
	if c.BootstrapExpect < 0 {
		return fmt.Errorf("coordinator: --bootstrap-expect: %d is negative", c.BootstrapExpect)
	}
	if c.BootstrapExpect > 1 && len(c.RetryJoin) == 0 {
		return fmt.Errorf("coordinator: --bootstrap-expect %d needs --retry-join addresses of the other coordinators", c.BootstrapExpect)
	}
	if c.BootstrapExpect == 0 && len(c.RetryJoin) == 0 {
		return errors.New("coordinator: --bootstrap-expect 0 joins an existing cluster and needs --retry-join")
	}
	if err := c.AclBootstrap.check(); err != nil {
		return err
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		return fmt.Errorf("coordinator: --replicas: %d, want 1..5, or 0 to match the NATS cluster", c.Replicas)
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 1024
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 1024
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = bus.StalePeriod
	}
	if c.ForgetAfter < 0 {
		return fmt.Errorf("coordinator: --forget-nodes-after: %s is negative; want a duration such as 24h (the default)", c.ForgetAfter)
	}
	if c.ForgetAfter == 0 {
		c.ForgetAfter = DefaultForgetAfter
	}
	if c.ForgetAfter < c.StaleAfter {
		return fmt.Errorf("coordinator: --forget-nodes-after: %s is shorter than the stale period %s; a node is forgotten only after it went stale", c.ForgetAfter, c.StaleAfter)
	}
	if c.TickInterval == 0 {
		c.TickInterval = 250 * time.Millisecond
	}
	if c.ForgetFinishedAfter == 0 {
		c.ForgetFinishedAfter = DefaultForgetFinishedAfter
	}
	if c.StopTimeout < 0 {
		return fmt.Errorf("coordinator: stop timeout %s is negative", c.StopTimeout)
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registerer == nil {
		reg := prometheus.NewRegistry()
		c.Registerer, c.Gatherer = reg, reg
	}
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	return nil
}

// Server is one running coordinator.
type Server struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics
	// refusals decides which refusals before commit are recorded one by
	// one (refusals.go).
	refusals *refusalBudget

	fsm       *fsm.FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	// raftListen is the address Raft listens on; the transport's own
	// address is the advertised one.
	raftListen string
	store      *raftStore
	// peerFailures is, on the leader, the peers whose heartbeats fail
	// (cluster.go); membership changes that would leave no reachable
	// quorum are refused with it.
	peerFailures peerFailures
	nc           *nats.Conn
	ownsNC       bool

	clusterTLS *tls.Config
	cluster    *ClusterClient
	js         jetstream.JetStream
	// replicas is what the leader creates streams and buckets with.
	replicas bus.Replicas

	fleet    *fleet
	analysis *analysis.Store
	// stages times the decision path.
	stages *stageClock
	// reported wakes the leader's rollout controller when a health report
	// arrives, so a sequential alarm does not wait for the next tick.
	reported chan struct{}
	// intake decodes and merges health reports (intake.go).
	intake       *intake
	telemetrySub *nats.Subscription
	series       *seriesBook
	// viewerToken, when set, is required by reads (viewer.go).
	viewerToken string
	// closing ends live streams on shutdown.
	closing   chan struct{}
	closeOnce sync.Once
	// lastEvent is the live streams' shared overview (api.go).
	eventMu   sync.Mutex
	lastEvent *liveEvent
	publisher *publisher
	docs      *bus.Publisher

	auditMetrics *audit.Metrics
	auditWake    chan struct{}

	httpSrv  *http.Server
	httpAddr net.Addr
	// pprofSrv serves the profiling endpoints (nil when off).
	pprofSrv  *http.Server
	pprofAddr net.Addr

	hasState bool
	leaderCh chan bool
	// established is true while this node leads and has applied every
	// entry of earlier terms: its replica is current for reads.
	established atomic.Bool
	wg          sync.WaitGroup
}

// New opens the coordinator's stores and joins or bootstraps Raft. It does
// not start serving until Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		log:       cfg.Logger.With("coordinator", cfg.NodeID),
		metrics:   newMetrics(cfg.Registerer),
		refusals:  newRefusalBudget(),
		leaderCh:  make(chan bool, 16),
		series:    newSeriesBook(),
		closing:   make(chan struct{}),
		auditWake: make(chan struct{}, 1),
	}
	var err error
	if s.viewerToken, err = loadViewerToken(cfg.ViewerTokenFile); err != nil {
		return nil, err
	}
	if s.auditMetrics, err = audit.NewMetrics(cfg.Registerer); err != nil {
		return nil, fmt.Errorf("register audit metrics: %w", err)
	}
	if s.clusterTLS, err = cfg.clusterTLS(); err != nil {
		return nil, err
	}
	s.cluster = &ClusterClient{TLS: s.clusterTLS}
	docs, err := newDocumentPublisher(cfg.Signing)
	if err != nil {
		return nil, err
	}
	s.docs = docs
	s.log.Info("signing documents", "key_id", docs.Signer.KeyID(), "validity", docs.Signer.Validity(), "trusted_keys", docs.Trusted.IDs())
	s.publisher = newPublisher(s)
	s.fleet = newFleet(cfg.StaleAfter, s.metrics, s.log)
	s.fleet.forgetAfter = cfg.ForgetAfter
	s.stages = newStageClock(s.metrics.decisionStages)
	s.fleet.stages = s.stages
	if err := cfg.Registerer.Register(fleetCollector{s.fleet}); err != nil {
		return nil, fmt.Errorf("register fleet metrics: %w", err)
	}
	s.analysis = analysis.NewStore()
	s.reported = make(chan struct{}, 1)
	if err := cfg.Registerer.Register(sequentialCollector{s.analysis}); err != nil {
		return nil, fmt.Errorf("register sequential judge metrics: %w", err)
	}
	if err := cfg.Registerer.Register(rolloutsCollector{s}); err != nil {
		return nil, fmt.Errorf("register rollouts metrics: %w", err)
	}
	if err := cfg.Registerer.Register(storeCollector{s.analysis}); err != nil {
		return nil, fmt.Errorf("register analysis store metrics: %w", err)
	}
	im, err := newIntakeMetrics(cfg.Registerer, s.metrics, func() *intake { return s.intake })
	if err != nil {
		return nil, fmt.Errorf("register telemetry intake metrics: %w", err)
	}
	s.intake = newIntake(s.analysis, im, s.reported, s.log, cfg.Clock.Now)
	s.fsm = fsm.New(fsm.Hooks{Desired: s.publisher.mark, Drills: s.publisher.markDrills})
	s.fleet.current = func(service string) (bus.Fence, bool) {
		epoch, gen, ok := s.fsm.State().DesiredFence(service)
		return bus.Fence{Epoch: epoch, Generation: gen}, ok
	}
	s.fleet.epoch = func() uint64 { return s.fsm.State().Epoch() }
	s.fleet.drillTarget = func(drill, node string) (time.Time, bool) { return s.fsm.State().DrillTarget(drill, node) }
	s.intake.drillUnjudged = func(drill, node, rollout string) bool { return s.fsm.State().DrillUnjudged(drill, node, rollout) }

	if err := s.setupRaft(); err != nil {
		s.closeStores()
		return nil, err
	}
	if err := s.setupBus(); err != nil {
		s.shutdownRaft()
		return nil, err
	}
	if err := s.startHTTP(); err != nil {
		s.shutdown()
		return nil, err
	}
	if err := s.startPprof(); err != nil {
		s.shutdown()
		return nil, err
	}
	return s, nil
}

func (s *Server) setupRaft() error {
	if err := os.MkdirAll(s.cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("coordinator: data dir: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.cfg.NodeID)
	// Tuned for a LAN: the library defaults (1 s) take about 2 s to elect a
	// new leader; a coordinator cluster sits in one site.
	rc.HeartbeatTimeout = 300 * time.Millisecond
	rc.ElectionTimeout = 300 * time.Millisecond
	rc.LeaderLeaseTimeout = 200 * time.Millisecond
	rc.CommitTimeout = 20 * time.Millisecond
	rc.SnapshotThreshold = s.cfg.SnapshotThreshold
	rc.SnapshotInterval = 30 * time.Second
	rc.TrailingLogs = s.cfg.TrailingLogs
	rc.NotifyCh = s.leaderCh
	rc.Logger = raftLogger(s.log)

	dbPath := filepath.Join(s.cfg.DataDir, raftDBFile)
	// bbolt faults or panics deep inside on a truncated or bit-flipped
	// file; look at it first and refuse to start, naming it and the way
	// back, rather than crash with a stack trace or serve from it.
	// One it cannot read (its owner, its mode) is not damaged: moving the
	// data directory away would be wrong advice.
	if err := boltcheck.Check(dbPath); err != nil && !errors.Is(err, boltcheck.ErrDamaged) {
		return fmt.Errorf("coordinator: open raft store: %w (the coordinator needs to read and write it; check its owner and mode)", err)
	} else if err != nil {
		return &DamagedStoreError{Path: dbPath, DataDir: s.cfg.DataDir, NodeID: s.cfg.NodeID, RetryJoin: s.cfg.RetryJoin, Err: err}
	}
	// Raft writes the log, its term and its vote to raft.db before any
	// snapshot exists: snapshots beside a missing or empty one are a
	// directory restored in part, not a new coordinator. Starting would
	// drop the entries after the newest snapshot and the vote, and bbolt
	// would write a fresh file over the evidence.
	if err := checkStoreBesideSnapshots(s.cfg.DataDir, dbPath); err != nil {
		return &DamagedStoreError{Path: dbPath, DataDir: s.cfg.DataDir, NodeID: s.cfg.NodeID, RetryJoin: s.cfg.RetryJoin, Err: err}
	}
	db, err := raftboltdb.New(raftboltdb.Options{Path: dbPath})
	if err != nil {
		return fmt.Errorf("coordinator: open raft store %s: %w", dbPath, err)
	}
	store := &raftStore{db: db}
	s.store = store
	snaps, err := raft.NewFileSnapshotStoreWithLogger(s.cfg.DataDir, 3, rc.Logger)
	if err != nil {
		return fmt.Errorf("coordinator: snapshot store: %w", err)
	}
	// With no advertise address the transport advertises what it bound,
	// which also resolves port 0.
	advertise, err := checkRaftAdvertise(s.cfg.RaftAdvertise)
	if err != nil {
		return err
	}
	// One stream layer for both: mutual TLS when the cluster CA is set,
	// plain TCP otherwise.
	stream, err := newRaftStreamLayer(s.cfg.RaftAddr, advertise, s.clusterTLS, func(peer net.Addr, err error) {
		s.metrics.peerRejected.Inc()
		s.log.Warn("refused a raft connection: TLS handshake failed", "from", peer.String(), "err", err)
	})
	if err != nil {
		return fmt.Errorf("coordinator: listen for raft on %s: %w", s.cfg.RaftAddr, err)
	}
	s.raftListen = stream.ln.Addr().String()
	// No pipelined replication (MaxRPCsInFlight 1): in the library's
	// pipeline a follower's refused append ends the response reader while
	// the sender can still park on a full hand-off, and neither is ever
	// woken. Replication to that follower then stops for good while its
	// heartbeats go on (so no election heals it), and Raft's Shutdown
	// waits forever. Seen in the fault lab after a partition of the
	// leader healed. One append in flight per follower costs nothing at a
	// coordinator's rate of writes.
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 3, Timeout: 10 * time.Second, Logger: rc.Logger,
		MaxRPCsInFlight: 1,
	})
	s.transport = trans

	hasState, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("coordinator: inspect raft state: %w", err)
	}
	// A log compacted behind snapshots that no longer read cannot rebuild
	// the state; refuse as for a damaged raft.db.
	if err := checkSnapshots(snaps, store); err != nil {
		dir := filepath.Join(s.cfg.DataDir, snapshotsDir)
		return &DamagedStoreError{Path: dir, DataDir: s.cfg.DataDir, NodeID: s.cfg.NodeID, RetryJoin: s.cfg.RetryJoin, Err: err}
	}
	r, err := raft.NewRaft(rc, s.fsm, store, store, snaps, trans)
	if err != nil {
		return fmt.Errorf("coordinator: start raft: %w", err)
	}
	s.raft = r
	s.hasState = hasState
	r.RegisterObserver(raft.NewObserver(nil, false, s.peerFailures.observe))
	if !hasState && s.cfg.BootstrapExpect == 1 {
		f := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{
			ID: rc.LocalID, Address: trans.LocalAddr(),
		}}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("coordinator: bootstrap: %w", err)
		}
	}
	return nil
}

func (s *Server) setupBus() error {
	s.nc = s.cfg.Conn
	if s.nc == nil {
		sec, err := s.cfg.NATS.Options("--nats-")
		if err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		nc, err := bus.Connect(s.cfg.NATSURL, "switchyard-coordinator-"+s.cfg.NodeID, s.log,
			append(sec, nats.PingInterval(bus.CoordinatorPingInterval))...)
		if err != nil {
			return fmt.Errorf("coordinator: %w", err)
		}
		s.nc, s.ownsNC = nc, true
	}
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("coordinator: jetstream: %w", err)
	}
	s.js = js
	s.replicas = bus.ChooseReplicas(s.nc, s.cfg.Replicas)
	how := "configured"
	if s.cfg.Replicas == 0 {
		how = fmt.Sprintf("chosen for %d known NATS servers", len(s.nc.Servers()))
	}
	s.log.Info("bus replication", "replicas", int(s.replicas), "how", how,
		"note", "streams and buckets that already have more replicas keep them")
	return nil
}

// RaftAddr is the address other coordinators reach Raft at: the advertise
// address when one is set, else the one Raft listens on (useful with port
// 0).
func (s *Server) RaftAddr() string { return string(s.transport.LocalAddr()) }

// RaftListenAddr is the address Raft listens on.
func (s *Server) RaftListenAddr() string { return s.raftListen }

// HTTPAddr is the address the HTTP server listens on; empty when disabled.
func (s *Server) HTTPAddr() string {
	if s.httpAddr == nil {
		return ""
	}
	return s.httpAddr.String()
}

// IsLeader reports whether this coordinator leads.
func (s *Server) IsLeader() bool { return s.raft.State() == raft.Leader }

// Run serves until ctx ends, then shuts down: leader work stops, Raft shuts
// down, and the stores close.
func (s *Server) Run(ctx context.Context) error {
	subs, err := s.subscribe()
	if err != nil {
		s.shutdown()
		return err
	}
	s.log.Info("coordinator running", "raft", s.RaftAddr(), "raft_listen", s.RaftListenAddr(), "http", s.HTTPAddr(),
		"nats", s.nc.ConnectedUrlRedacted())

	runCtx, cancel := context.WithCancel(ctx)
	s.wg.Add(5)
	go func() {
		defer s.wg.Done()
		s.monitorLeadership(runCtx)
	}()
	go func() {
		defer s.wg.Done()
		s.runAnalysisWarm(runCtx)
	}()
	go func() {
		defer s.wg.Done()
		s.intake.run(runCtx, s.telemetrySub)
	}()
	go func() {
		defer s.wg.Done()
		s.runSeries(runCtx)
	}()
	go func() {
		defer s.wg.Done()
		s.formCluster(runCtx, s.hasState)
	}()
	<-ctx.Done()
	cancel()
	if !s.stopWithin(s.cfg.StopTimeout, func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		s.wg.Wait()
		s.shutdown()
	}) {
		return fmt.Errorf("coordinator: stopping took longer than %s; stopped without waiting for the rest", s.cfg.StopTimeout)
	}
	s.log.Info("coordinator stopped")
	return nil
}

// stopWithin runs stop and waits at most timeout for it. A stop that
// hangs (a state machine or a transport call that never returns) must not
// keep the process from exiting: it is reported once, with every
// goroutine's stack so the next person can see where it waits, and left
// behind.
func (s *Server) stopWithin(timeout time.Duration, stop func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		stop()
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
	}
	var stacks strings.Builder
	_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
	s.log.Error("coordinator did not stop in time; exiting without waiting for the rest",
		"timeout", timeout, "goroutines", stacks.String())
	return false
}

// askStatus asks every agent for its status once the status subscription
// is in place at the server, so that the fleet view is whole within
// statusAskGrace. If the ask cannot go out, the view settles after the
// stale period, by heartbeats.
func (s *Server) askStatus() {
	err := s.nc.FlushTimeout(5 * time.Second)
	if err == nil {
		err = s.nc.Publish(bus.StatusAskSubject, nil)
	}
	if err == nil {
		err = s.nc.FlushTimeout(5 * time.Second)
	}
	if err != nil {
		s.log.Warn("could not ask the agents for their status; the fleet view settles by heartbeats",
			"settles_in", s.cfg.StaleAfter, "err", err)
		return
	}
	s.fleet.asked()
}

// subscribe starts the work every coordinator does, leader or not: tracking
// the fleet's status and answering reads.
func (s *Server) subscribe() ([]*nats.Subscription, error) {
	status, err := s.nc.Subscribe(bus.StatusAll(), s.fleet.handleStatus)
	if err != nil {
		return nil, fmt.Errorf("coordinator: subscribe to agent status: %w", err)
	}
	s.fleet.listening()
	s.askStatus()
	// Off the bus, it hears no report: the windows of that time are
	// missing data, never a pass. A link that died silently is noticed
	// late, so the span begins at the last report heard.
	prevLost := s.nc.DisconnectErrHandler()
	s.nc.SetDisconnectErrHandler(func(c *nats.Conn, err error) {
		if prevLost != nil {
			prevLost(c, err)
		}
		now := s.cfg.Clock.Now()
		from := now
		if heard, ok := s.intake.lastHeard(); ok && heard.Before(now) {
			from = heard
			if oldest := now.Add(-analysis.Retention); from.Before(oldest) {
				from = oldest
			}
		}
		s.analysis.Deaf(from)
	})
	// Back on the bus after losing it, the coordinator hears the fleet
	// again as at start: a leader cut off for the stale period would
	// otherwise take the first nodes it hears for the fleet, and count a
	// step converged on them.
	prev := s.nc.ReconnectHandler()
	s.nc.SetReconnectHandler(func(c *nats.Conn) {
		if prev != nil {
			prev(c)
		}
		s.analysis.Heard(s.cfg.Clock.Now())
		s.fleet.relisten()
		go s.askStatus()
	})
	telemetry, err := s.nc.Subscribe(bus.TelemetryAll(), s.intake.handle)
	if err != nil {
		_ = status.Unsubscribe()
		return nil, fmt.Errorf("coordinator: subscribe to telemetry: %w", err)
	}
	s.telemetrySub = telemetry
	subs := []*nats.Subscription{status, telemetry}
	for name, h := range map[string]nats.MsgHandler{
		bus.QueryRollouts:    serveFleetQuery(s, s.Rollouts),
		bus.QueryIntent:      serveQuery(s, s.IntentResult),
		bus.QueryFleet:       serveFleetQuery(s, s.Fleet),
		bus.QueryDrills:      serveQuery(s, s.Drills),
		bus.QueryFleetStatus: serveFleetQuery(s, s.FleetStatus),
		bus.QuerySeries:      serveQuery(s, s.Series),
		bus.QueryAudit:       serveQuery(s, s.Audit),
		bus.QueryAcl:         serveQuery(s, s.Acl),
	} {
		sub, err := s.nc.QueueSubscribe(bus.QuerySubject(name), bus.QueryQueue, h)
		if err != nil {
			for _, sub := range subs {
				_ = sub.Unsubscribe()
			}
			return nil, fmt.Errorf("coordinator: subscribe to %s queries: %w", name, err)
		}
		subs = append(subs, sub)
	}
	// Asked of every coordinator at once: no queue group.
	self, err := s.nc.Subscribe(bus.QuerySubject(bus.QueryCoordinators), serveRead(s, func() error { return nil }, s.answerCoordinators))
	if err != nil {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		return nil, fmt.Errorf("coordinator: subscribe to %s queries: %w", bus.QueryCoordinators, err)
	}
	return append(subs, self), nil
}

func (s *Server) shutdown() {
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = s.httpSrv.Shutdown(ctx)
		cancel()
	}
	if s.pprofSrv != nil {
		_ = s.pprofSrv.Close()
	}
	s.shutdownRaft()
	if s.ownsNC {
		_ = s.nc.Drain()
	}
}

func (s *Server) shutdownRaft() {
	if s.raft != nil {
		// A snapshot on the way out makes the next start replay fewer entries.
		if err := s.raft.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
			s.log.Debug("snapshot on shutdown", "err", err)
		}
		if err := s.raft.Shutdown().Error(); err != nil {
			s.log.Warn("raft shutdown", "err", err)
		}
		s.raft = nil
	}
	if s.transport != nil {
		_ = s.transport.Close()
	}
	s.closeStores()
}

func (s *Server) closeStores() {
	if s.store != nil {
		_ = s.store.Close()
		s.store = nil
	}
}
