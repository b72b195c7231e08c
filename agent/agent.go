// Package agent is Switchyard's edge agent: it follows the desired state of
// each configured service on the bus, applies this node's weights to the local
// proxy through a driver, remembers what it applied, and reports its status.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/hooks"
	"github.com/switchyard/switchyard/agent/state"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/clock"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Defaults of Options.
const (
	DefaultRetryMin     = 250 * time.Millisecond
	DefaultRetryMax     = 10 * time.Second
	DefaultApplyTimeout = 10 * time.Second
	// busTimeout bounds one read from the bus.
	busTimeout = 5 * time.Second
)

// DriverFactory builds the proxy driver of one configured service. The
// agent closes the driver when Run returns.
type DriverFactory func(service string, svc ServiceConfig) (driver.Driver, error)

// OpenDriver is the default DriverFactory: the service's driver section
// opens its own driver and telemetry source.
func (a *Agent) openDriver(service string, svc ServiceConfig) (driver.Driver, error) {
	return svc.Proxy.Open(driver.Env{
		Service:    service,
		Node:       a.cfg.Node,
		StateDir:   a.cfg.StateDir,
		Logger:     a.log.With("service", service),
		Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"service": service}, a.reg),
		LogLines:   a.m.logLines,
	})
}

// Options are what the caller injects into an Agent.
type Options struct {
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the agent's metrics; nil uses a private registry.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; when nil, Registerer is used if it is also a
	// Gatherer (a *prometheus.Registry is).
	Gatherer prometheus.Gatherer
	// DriverFactory builds each service's proxy driver; nil opens the
	// driver each service's config section names.
	DriverFactory DriverFactory
	// NATSURL overrides the config's nats URL when not empty.
	NATSURL string
	// Conn, when set, is a bus connection shared by several agents in one
	// process (fleet benchmarks and simulations). The agent neither closes
	// it nor sees its connection events, so it relies on its periodic resync
	// after a reconnect, and it refuses the bus-drop fault, which would cut
	// the other agents off too.
	Conn *nats.Conn
	// Keyring, when set, verifies documents in place of one built from the
	// config's trusted keys, which it must trust exactly. Agents sharing a
	// process (fleet benchmarks and simulations) may share one: a keyring
	// remembers the signatures it verified, so a push all of them receive
	// is verified once in the process instead of once per agent (on a real
	// fleet each node verifies it once, on its own CPU).
	Keyring *bus.Keyring
	// StateStore overrides the bbolt database in the config's stateDir. The
	// caller keeps ownership and closes it.
	StateStore StateStore
	// Clock stamps applied states and statuses; nil is the system clock.
	Clock clock.Clock
	// Version is reported in the agent's status.
	Version string
	// RetryMin and RetryMax bound the backoff between attempts of a failing
	// driver (DefaultRetryMin, DefaultRetryMax when zero).
	RetryMin, RetryMax time.Duration
	// ApplyTimeout bounds one driver call (DefaultApplyTimeout when zero).
	ApplyTimeout time.Duration
}

// Agent runs one edge node's side of Switchyard.
type Agent struct {
	cfg      *Config
	natsURL  string
	log      *slog.Logger
	m        *metrics
	gatherer prometheus.Gatherer
	factory  DriverFactory
	reg      prometheus.Registerer
	store    StateStore
	// sharedConn is Options.Conn; nil when the agent owns its connection.
	sharedConn *nats.Conn
	clock      clock.Clock
	version    string
	timing     timing
	names      []string // configured services, sorted
	// hookNames are the configured hooks, sorted, for the status.
	hookNames []string

	started       atomic.Bool
	ready         chan struct{}
	statusChanged chan struct{}

	// busDownSince is when the agent last lost the bus (its start, until
	// the first connect), in Unix nanoseconds of its clock; 0 while
	// connected.
	busDownSince atomic.Int64
	// lastBeacon is when the agent last heard the leader's beacon
	// (bus.BeaconSubject), likewise; 0 until it has heard one.
	lastBeacon atomic.Int64
	// beaconOverdueLogged is set while the agent has said that the
	// beacon is overdue.
	beaconOverdueLogged atomic.Bool

	mu       sync.Mutex
	services map[string]*sv1.ServiceStatus
	nc       *nats.Conn
	httpAddr string
	// drills follows chaos drills and keeps this node's faults; nil until
	// Run has opened the local state.
	drills *drillFollower
	// trust verifies every document from the bus.
	trust *bus.Keyring
	// memHooks is the hook journal when the state store keeps none.
	hookJournalOnce sync.Once
	memHooks        *hooks.MemJournal
}

// New checks cfg and opts and registers the agent's metrics. It does no I/O:
// Run opens the state, the drivers and the bus.
func New(cfg *Config, opts Options) (*Agent, error) {
	if cfg == nil {
		return nil, fmt.Errorf("%w: no config", ErrInvalidConfig)
	}
	cfg = cfg.clone()
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	trust, err := cfg.Trust.keyring()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if opts.Keyring != nil {
		if have, want := slices.Sorted(slices.Values(opts.Keyring.IDs())), slices.Sorted(slices.Values(trust.IDs())); !slices.Equal(have, want) {
			return nil, fmt.Errorf("%w: the shared keyring trusts %v, trust.keys %v", ErrInvalidConfig, have, want)
		}
		trust = opts.Keyring
	}
	a := &Agent{
		cfg:           cfg,
		natsURL:       cfg.NATS,
		log:           opts.Logger,
		gatherer:      opts.Gatherer,
		factory:       opts.DriverFactory,
		store:         opts.StateStore,
		sharedConn:    opts.Conn,
		clock:         opts.Clock,
		version:       opts.Version,
		names:         slices.Sorted(maps.Keys(cfg.Services)),
		hookNames:     slices.Sorted(maps.Keys(cfg.Hooks)),
		ready:         make(chan struct{}),
		statusChanged: make(chan struct{}, 1),
		services:      make(map[string]*sv1.ServiceStatus, len(cfg.Services)),
		trust:         trust,
		timing: timing{
			retryMin:     cmpOr(opts.RetryMin, DefaultRetryMin),
			retryMax:     cmpOr(opts.RetryMax, DefaultRetryMax),
			applyTimeout: cmpOr(opts.ApplyTimeout, DefaultApplyTimeout),
		},
	}
	if opts.NATSURL != "" {
		a.natsURL = opts.NATSURL
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.log = a.log.With("node", cfg.Node)
	if a.clock == nil {
		a.clock = clock.Real{}
	}
	reg := opts.Registerer
	if reg == nil {
		r := prometheus.NewRegistry()
		reg, a.gatherer = r, r
	}
	if a.gatherer == nil {
		a.gatherer, _ = reg.(prometheus.Gatherer)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	a.m = m
	a.reg = reg
	if a.factory == nil {
		a.factory = a.openDriver
	}
	for _, name := range a.names {
		m.initService(name)
		a.services[name] = &sv1.ServiceStatus{Service: name}
	}
	return a, nil
}

func cmpOr(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

// Ready is closed once Run has restored local state, started driving the
// proxies and subscribed to every service's desired state; when the bus was
// reachable at start it has also asked the bucket for each document once.
// An unreachable bus does not hold Ready back: the agent serves from its
// local state and catches up when the bus appears.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// BusDownFor reports how long the agent has been without the bus; ok is
// false while it is connected.
func (a *Agent) BusDownFor() (d time.Duration, ok bool) {
	since := a.busDownSince.Load()
	if since == 0 {
		return 0, false
	}
	return a.clock.Now().Sub(time.Unix(0, since)), true
}

// beaconOverdue is how long without the leader's beacon an agent that has
// heard it counts as cut off from the coordinators although its own NATS
// connection is up: three beacons missed.
const beaconOverdue = 3 * bus.BeaconInterval

// heardBeacon records the leader's beacon. It reports whether the beacon
// before it is beaconOverdue old or more: whatever the coordinators wrote
// meanwhile may not have reached this node (a PoP's leaf server cut off
// from the hub, this node's server cut off from its cluster, drops what it
// cannot forward; only the agent's own reconnect reads the documents
// again).
func (a *Agent) heardBeacon() (afterSilence bool) {
	now := a.clock.Now()
	prev := a.lastBeacon.Swap(now.UnixNano())
	if a.beaconOverdueLogged.CompareAndSwap(true, false) {
		a.log.Info("the leading coordinator is heard again")
	}
	return prev != 0 && now.Sub(time.Unix(0, prev)) >= beaconOverdue
}

// CutOffFor reports how long the agent has been cut off from the
// coordinators, and how it knows: its bus connection lost ("bus lost"), or,
// with the connection up, no beacon from a leader for beaconOverdue
// ("no coordinator heard") — a PoP's leaf server cut off from the hub, or
// no leader elected. An agent that has not heard a beacon since it started
// (coordinators of an older release, credentials without the beacon
// subject) goes by its connection alone. ok is false while it is not cut
// off.
func (a *Agent) CutOffFor() (d time.Duration, how string, ok bool) {
	d, ok = a.BusDownFor()
	last := a.lastBeacon.Load()
	if last == 0 {
		return d, "bus lost", ok
	}
	silent := a.clock.Now().Sub(time.Unix(0, last))
	if silent < beaconOverdue {
		return d, "bus lost", ok
	}
	if a.beaconOverdueLogged.CompareAndSwap(false, true) {
		a.log.Warn("no leading coordinator heard; the coordinators cannot see or steer this node (the local guard may act)",
			"last_heard", silent.Round(time.Second), "bus_connected", !ok)
	}
	if ok {
		// Off the bus: cut off since the last beacon heard.
		return max(d, silent), "bus lost", true
	}
	return silent, "no coordinator heard", true
}

// beaconQuiet is how long without the leader's beacon an agent asks its
// NATS server whether it still answers: two beacons missed.
// serverAnswerWait is how long the server has to answer (a ping); one
// that does not is left for another in the agent's URL list at once.
const (
	beaconQuiet      = 2 * bus.BeaconInterval
	serverAnswerWait = 2 * time.Second
)

// watchServer leaves a NATS server that stopped answering sooner than the
// connection's pings alone would (10–15 s, bus.PingInterval): when the
// leader's beacon, due every 2 s, has not come for beaconQuiet, the agent
// pings its server, and one that does not answer within serverAnswerWait
// (its process hung, its host cut off; the connection still open) is left
// for another server. A decision written meanwhile, a rollback included,
// reaches the node 4–8 s after its server went silent instead. A server
// that answers is kept: the silence is the coordinators' (an election, a
// PoP's leaf server cut off from the hub), not this connection's, and it is
// asked again only after another beaconQuiet. An agent that never heard a
// beacon (coordinators of an older release) goes by the pings alone.
func (a *Agent) watchServer(ctx context.Context, nc *nats.Conn) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var asked time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		last := a.lastBeacon.Load()
		now := a.clock.Now()
		if last == 0 || !nc.IsConnected() || now.Sub(time.Unix(0, last)) < beaconQuiet || now.Sub(asked) < beaconQuiet {
			continue
		}
		asked = now
		url := nc.ConnectedUrlRedacted()
		err := nc.FlushTimeout(serverAnswerWait)
		if err == nil || !errors.Is(err, nats.ErrTimeout) || !nc.IsConnected() || ctx.Err() != nil {
			continue
		}
		a.log.Warn("no leader's beacon, and the NATS server did not answer a ping; leaving it for another",
			"nats", url, "beacon_last_heard", now.Sub(time.Unix(0, last)).Round(time.Second), "waited", serverAnswerWait)
		a.m.silentServersLeft.Inc()
		if err := nc.ForceReconnect(); err != nil {
			a.log.Warn("leave the silent NATS server", "err", err)
		}
	}
}

// busLost records the moment the bus went away, keeping the earliest.
func (a *Agent) busLost() {
	a.busDownSince.CompareAndSwap(0, a.clock.Now().UnixNano())
	a.m.busConnected.Set(0)
}

// busFound records a (re)connect.
func (a *Agent) busFound() {
	a.busDownSince.Store(0)
	a.m.busConnected.Set(1)
}

// HTTPAddr is the address /metrics and /healthz are served on, once Ready;
// empty when the config has no httpAddr.
func (a *Agent) HTTPAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.httpAddr
}

// Applied returns the generation and weights this node has applied for
// service; 0 and nil before the first apply or for an unknown service.
func (a *Agent) Applied(service string) (generation uint64, weights map[string]uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.services[service]
	return st.GetAppliedGeneration(), maps.Clone(st.GetWeights())
}

// Status returns the status the agent would publish now; the caller owns
// it.
func (a *Agent) Status() *sv1.AgentStatus { return proto.CloneOf(a.status(false)) }

// Run starts the agent and blocks until ctx ends; then it stops, closes the
// bus connection, the drivers and the local state, and returns nil. It
// returns an error if it cannot start. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	// httpAddr is taken first: an agent that cannot serve it must stop
	// before it drives a proxy or reads the bus, not after.
	var ln net.Listener
	if a.cfg.HTTPAddr != "" {
		l, err := listen(a.cfg.HTTPAddr)
		if err != nil {
			return err
		}
		ln = l
		defer func() {
			if ln != nil { // not handed to the HTTP server
				ln.Close()
			}
		}()
	}
	res, err := a.open()
	if err != nil {
		return err
	}
	journal, ok := res.store.(FaultJournal)
	if !ok {
		a.log.Warn("the injected state store keeps no fault journal; a crash during a chaos fault leaves it to be reverted by hand")
		journal = newMemJournal()
	}
	drills := newDrillFollower(a, res, journal)
	a.mu.Lock()
	a.drills = drills
	a.mu.Unlock()

	ctx, cancel := context.WithCancel(ctx)
	var (
		wg  sync.WaitGroup
		nc  *nats.Conn
		srv *http.Server
	)
	defer func() {
		cancel()
		if srv != nil {
			sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := srv.Shutdown(sctx); err != nil {
				a.log.Warn("stop http server", "err", err)
			}
			scancel()
		}
		wg.Wait()
		if nc != nil && a.sharedConn == nil {
			nc.Close()
		}
		res.close(a.log)
		a.log.Info("agent stopped")
	}()

	// Services start before the bus: repairing the proxy from local state
	// needs no bus.
	for _, w := range res.workers {
		w.heldByDrill = func(backend string) bool { return drills.holdsBackend(w.name, backend) }
		w.proxyLost = func(why string) {
			// Before the agent's copy changes: the service's next status
			// must replace it even if it equals the last one sent.
			w.resend.Store(true)
			a.proxyLost(w.name, why)
			// /metrics says what the status says; the service's next
			// look sets it from what it reads.
			w.series.observedMatch.Set(0)
		}
		wg.Go(func() { w.run(ctx) })
		wg.Go(func() { w.observeLoop(ctx, a.cfg.ObserveInterval) })
	}
	// Faults a previous run left behind are reverted from the journal
	// first thing, bus or not.
	wg.Go(func() { drills.run(ctx) })

	// The agent has no bus until the first connect, however that goes.
	a.busLost()
	reconnected := make(chan struct{}, 1)
	resync := func() {
		select {
		case reconnected <- struct{}{}:
		default:
		}
		drills.requestPoll()
		// A status that changed while the bus was away goes out now.
		select {
		case a.statusChanged <- struct{}{}:
		default:
		}
	}
	// startPolled is set when Run itself reads the documents on the first
	// connection, so the connect handler need not read them again. The
	// handler decides and asks for its read under startMu, and Run sets
	// startPolled and takes back any read asked for before under it too:
	// otherwise a handler that looked before Run decided could ask after
	// Run took the asks back, and every document be read twice.
	var (
		startMu     sync.Mutex
		startPolled bool
	)
	// RetryOnFailedConnect: an edge node that boots while the bus is
	// unreachable (a WAN link down, NATS restarting) must still serve from
	// its local state; the connection keeps trying in the background and
	// the connect handler resyncs when it succeeds.
	var security []nats.Option
	if a.sharedConn == nil {
		if security, err = a.cfg.NATSClient.Options("natsClient."); err != nil {
			return err
		}
	}
	if a.sharedConn != nil {
		nc = a.sharedConn
	} else if nc, err = bus.Connect(a.natsURL, "switchyard-agent "+a.cfg.Node, a.log, append(security,
		nats.RetryOnFailedConnect(true),
		// A bus_drop fault refuses the dials until it ends.
		nats.SetCustomDialer(drills.gate),
		nats.ConnectHandler(func(c *nats.Conn) {
			a.busFound()
			startMu.Lock()
			defer startMu.Unlock()
			if startPolled {
				// Run read every document on this connection already.
				a.log.Info("nats connected", "url", c.ConnectedUrlRedacted())
				return
			}
			a.log.Info("nats connected; resyncing desired state", "url", c.ConnectedUrlRedacted())
			resync()
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			a.log.Info("nats reconnected; resyncing desired state", "url", c.ConnectedUrlRedacted())
			a.m.busReconnects.Inc()
			a.busFound()
			resync()
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			a.busLost()
			if err != nil {
				a.log.Warn("nats disconnected; serving from local state", "err", err)
			}
		}),
		nats.ErrorHandler(a.busRefusal))...); err != nil {
		return err
	}
	a.mu.Lock()
	a.nc = nc
	a.mu.Unlock()
	// Subscriptions made before the first connect are sent when it happens.
	// On the hub an agent follows the buckets' own subjects, which a KV put
	// publishes on as part of the write. Behind a leaf server (an agent that
	// names a JetStream domain) those never arrive, since NATS servers do
	// not carry $KV.… over a leaf connection: it follows the copies the
	// leader publishes once the write is acknowledged. Never both, which
	// would hand every document to a hub agent twice.
	desiredSubject, drillsSubject := bus.DesiredKeySubject, bus.DrillsAll()
	if a.cfg.NATSClient.JetStreamDomain != "" {
		desiredSubject, drillsSubject = bus.DesiredPushSubject, bus.DrillsPushAll()
	}
	for _, w := range res.workers {
		if _, err := nc.Subscribe(desiredSubject(w.name), w.onMsg); err != nil {
			return fmt.Errorf("subscribe to desired state of %s: %w", w.name, err)
		}
	}
	if _, err := nc.Subscribe(drillsSubject, drills.onMsg); err != nil {
		return fmt.Errorf("subscribe to drills: %w", err)
	}
	// What the coordinators say to every agent, on one subscription: a
	// coordinator that has just started asks for the status (answered
	// within the status window), so that it does not take the nodes it has
	// heard from for the fleet; the leader's beacon tells a node cut off
	// behind a connection that is still up (a PoP's leaf server without the
	// hub).
	if _, err := nc.Subscribe(bus.FleetAll(), func(m *nats.Msg) {
		if len(m.Data) > 0 {
			// The coordinators' carry no body; this is a JetStream API
			// answer someone named the subject for (docs/security.md).
			// Taken for a beacon it would hide a silent leader from the
			// local guard, and for an ask it would have every agent
			// publish its status.
			a.m.fleetIgnored.Inc()
			return
		}
		switch m.Subject {
		case bus.StatusAskSubject:
			a.statusDirty()
		case bus.BeaconSubject:
			if a.heardBeacon() {
				// The documents written while the coordinators could
				// not reach this node were pushed to no one here.
				a.log.Info("the leading coordinator is heard again after a silence; resyncing desired state")
				resync()
			}
		}
	}); err != nil {
		return fmt.Errorf("subscribe to the coordinators' word to the fleet: %w", err)
	}
	js, err := a.cfg.NATSClient.JetStream(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	wg.Go(func() { drills.pollLoop(ctx, js) })
	p := &desiredPoller{js: js, log: a.log, m: a.m}
	if nc.IsConnected() {
		a.busFound()
		startMu.Lock()
		startPolled = true
		// A connect handler that ran before asked for the read Run makes
		// now.
		select {
		case <-reconnected:
		default:
		}
		startMu.Unlock()
		if err := nc.FlushTimeout(busTimeout); err != nil {
			a.log.Warn("subscribe to desired state: flush; the next resync catches up", "err", err)
		}
		p.poll(ctx, res.workers)
		drills.requestPoll()
	} else {
		a.log.Warn("nats unreachable at start; serving from local state and retrying in the background", "url", a.natsURL)
	}

	for _, w := range res.workers {
		tl := a.telemetryLoop(w)
		wg.Go(func() { tl.run(ctx) })
		wg.Go(func() { w.prober.syntheticLoop(ctx, w.currentView) })
	}

	if ln != nil {
		srv = a.serveHTTP(ln)
		ln = nil
	}
	wg.Go(func() { a.statusLoop(ctx) })
	wg.Go(func() { a.resyncLoop(ctx, p, res.workers, reconnected) })
	if a.sharedConn == nil {
		wg.Go(func() { a.watchServer(ctx, nc) })
	}

	a.log.Info("agent running", "services", a.names, "nats", a.natsURL, "bus_connected", nc.IsConnected())
	close(a.ready)
	<-ctx.Done()
	return nil
}

// busRefusal counts and logs what the NATS server refused: a permission
// violation means this node runs with creds that do not fit it, an
// authorization error that its creds were refused or revoked.
func (a *Agent) busRefusal(_ *nats.Conn, sub *nats.Subscription, err error) {
	reason := "other"
	switch {
	case errors.Is(err, nats.ErrPermissionViolation):
		reason = "permission"
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAuthExpired):
		reason = "authorization"
	}
	a.m.busRefused.WithLabelValues(reason).Inc()
	if sub != nil {
		a.log.Warn("nats refused this node", "reason", reason, "subject", sub.Subject, "err", err)
		return
	}
	a.log.Warn("nats refused this node", "reason", reason, "err", err)
}

// telemetryLoop builds the telemetry of one service.
func (a *Agent) telemetryLoop(w *serviceWorker) *telemetryLoop {
	tl := &telemetryLoop{
		service:        w.name,
		node:           a.cfg.Node,
		subject:        bus.TelemetrySubject(w.name, a.cfg.Node),
		backends:       a.cfg.Services[w.name].Proxy.Backends(),
		interval:       a.cfg.TelemetryInterval,
		probes:         w.prober.buf,
		worker:         w,
		guardAfter:     a.cfg.LocalGuard.afterDisconnect(),
		cutOff:         a.CutOffFor,
		publish:        a.publish,
		drill:          a.drills.drillDuring,
		drillOnBackend: a.drills.drillOnBackend,
		clock:          a.clock,
		m:              a.m,
		log:            w.log,
		statTimeout:    min(a.timing.applyTimeout, a.cfg.TelemetryInterval),
	}
	if sr, ok := w.drv.(driver.StatsReader); ok {
		tl.stats = sr
	}
	if ws, ok := w.drv.(driver.WindowSource); ok {
		tl.logs = ws
	}
	if dr, ok := w.drv.(logDropReader); ok {
		tl.drops = dr
	}
	if a.cfg.LocalGuard.On() {
		tl.guard = &localGuard{cfg: a.cfg.LocalGuard}
	}
	return tl
}

// publish sends on the bus if it is connected. While it is not, nothing is
// queued: stale telemetry and statuses are worth less than none, and the
// connect handler publishes a fresh status.
func (a *Agent) publish(subject string, body []byte) (bool, error) {
	nc := a.conn()
	if nc == nil || !nc.IsConnected() {
		return false, nil
	}
	if err := nc.Publish(subject, body); err != nil {
		return false, err
	}
	return true, nil
}

// resources are what Run opens and must close.
type resources struct {
	store     StateStore
	ownsStore bool
	drivers   []driver.Driver
	workers   []*serviceWorker
}

func (r *resources) close(log *slog.Logger) {
	for i, d := range r.drivers {
		if err := d.Close(); err != nil {
			log.Warn("close proxy driver", "service", r.workers[i].name, "err", err)
		}
	}
	if r.ownsStore {
		if err := r.store.Close(); err != nil {
			log.Warn("close agent state", "err", err)
		}
	}
}

// open opens the local state and the drivers and restores each service's
// applied state.
func (a *Agent) open() (_ *resources, err error) {
	res := &resources{store: a.store}
	defer func() {
		if err != nil {
			res.close(a.log)
		}
	}()
	if res.store == nil {
		b, err := state.Open(a.cfg.StateDir, 0)
		if err != nil {
			return nil, err
		}
		res.store, res.ownsStore = b, true
	}
	for _, name := range a.names {
		d, err := a.factory(name, a.cfg.Services[name])
		if err != nil {
			return nil, fmt.Errorf("service %s: build proxy driver: %w", name, err)
		}
		log := a.log.With("service", name)
		applied, err := res.store.Load(name)
		if err != nil {
			// The bus has the current document; starting without local
			// state is better than not starting.
			log.Error("cannot read local applied state; starting without it", "err", err)
			applied = nil
		}
		if applied != nil {
			log.Info("restored applied state", "generation", applied.GetDesired().GetGeneration(),
				"rollout", applied.GetDesired().GetRolloutId(), "weights", applied.GetWeights())
		}
		aj, _ := res.store.(ApplyJournal)
		var applying *sv1.AppliedState
		if aj != nil {
			if applying, err = aj.LoadApplying(name); err != nil {
				log.Error("cannot read the state a previous run was applying; going by the applied state", "err", err)
				applying = nil
			}
		}
		res.drivers = append(res.drivers, d)
		w := &serviceWorker{
			name:       name,
			node:       a.cfg.Node,
			labels:     a.cfg.Labels,
			drv:        d,
			store:      res.store,
			log:        log,
			m:          a.m,
			series:     a.m.seriesOf(name),
			clock:      a.clock,
			timing:     a.timing,
			report:     func(st *sv1.ServiceStatus) { a.setServiceStatus(st) },
			inbox:      newInbox[delivery](inboxCap),
			trust:      a.trust,
			driftCheck: make(chan struct{}, 1),
			observeNow: make(chan struct{}, 1),
			guard:      make(chan localRollbackRequest, 1),
			applied:    applied,
			applyLog:   aj,
			applying:   applying,
			prober: &prober{
				service: name,
				cfg:     a.cfg.Services[name].Probes,
				buf:     &probeBuffer{},
				m:       a.m,
				clock:   a.clock,
				log:     log,
			},
		}
		w.hooks = a.hookRunner(res.store, log)
		// The status lists the current rollout's hook runs, after a
		// restart too (one the previous run was killed in as failed).
		w.hookRuns = w.hooks.Restore(name, applied.GetDesired().GetRolloutId())
		if h := applied.GetHookHold(); h != nil && !slices.ContainsFunc(w.hookRuns, func(r *sv1.HookRun) bool {
			return r.GetHook() == h.GetHook() && r.GetPoint() == h.GetPoint()
		}) {
			w.hookRuns = append(w.hookRuns, h)
		}
		w.publishView()
		res.workers = append(res.workers, w)
	}
	return res, nil
}

// desiredPoller reads desired states from the bucket. Only the goroutine
// that polls uses it.
type desiredPoller struct {
	js  jetstream.JetStream
	kv  jetstream.KeyValue
	log *slog.Logger
	m   *metrics
}

// poll reads every service's document and queues it for its service. A
// bucket that does not exist yet (no coordinator has run) is not an error
// worth more than a log line; the next poll tries again.
func (p *desiredPoller) poll(ctx context.Context, workers []*serviceWorker) {
	if p.kv == nil {
		gctx, cancel := context.WithTimeout(ctx, busTimeout)
		kv, err := bus.DesiredBucketHandle(gctx, p.js)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, jetstream.ErrBucketNotFound):
			p.log.Info("desired-state bucket does not exist yet; will look again at the next resync")
			return
		case err != nil:
			p.m.resyncErrors.Inc()
			p.log.Warn("open desired-state bucket; will retry at the next resync", "err", err)
			return
		}
		p.kv = kv
	}
	for _, w := range workers {
		gctx, cancel := context.WithTimeout(ctx, busTimeout)
		e, err := p.kv.Get(gctx, w.name)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, jetstream.ErrKeyNotFound):
			continue
		case err != nil:
			p.m.resyncErrors.Inc()
			w.log.Warn("read desired state; will retry at the next resync", "err", err)
			continue
		}
		w.inbox.put(delivery{raw: e.Value(), poll: true, at: w.clock.Now()})
	}
}

// resyncLoop reads the bucket again after every reconnect and every resync
// period, and has every service check its proxy for drift each period (the
// first period's tick at a random point of its second half: see
// newSpreadTimer).
func (a *Agent) resyncLoop(ctx context.Context, p *desiredPoller, workers []*serviceWorker, reconnected <-chan struct{}) {
	t := newSpreadTimer(a.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			p.poll(ctx, workers)
		case <-t.C:
			t.Reset(a.cfg.Resync)
			p.poll(ctx, workers)
			for _, w := range workers {
				w.requestDriftCheck()
			}
		}
	}
}

// setServiceStatus records a service's status and, if it changed, wakes
// the status loop.
// The service sends only statuses that changed (or that must replace one
// proxyLost marked), so no comparison is made here. A stored status is
// never changed in place: proxyLost replaces it with a changed copy.
func (a *Agent) setServiceStatus(st *sv1.ServiceStatus) {
	a.mu.Lock()
	a.services[st.GetService()] = st
	a.mu.Unlock()
	a.statusDirty()
}

// proxyLost marks a service's status as not doing what was applied, with
// nothing read back, until its service goroutine reports again.
func (a *Agent) proxyLost(service, why string) {
	a.mu.Lock()
	cur := a.services[service]
	if cur == nil || (!cur.GetObservedMatches() && len(cur.GetObservedWeights()) == 0) {
		a.mu.Unlock()
		return
	}
	st := proto.CloneOf(cur)
	st.ObservedMatches = false
	st.ObservedWeights = nil
	st.ObservedStates = nil
	st.Drift = why
	a.services[service] = st
	a.mu.Unlock()
	a.statusDirty()
}

// status assembles the agent's status from its services' latest reports.
// It shares the services' statuses, which are never changed once stored:
// read it, never change it.
func (a *Agent) status(heartbeat bool) *sv1.AgentStatus {
	st := &sv1.AgentStatus{
		Node:      a.cfg.Node,
		Labels:    a.cfg.Labels, // the config never changes once Run starts
		At:        timestamppb.New(a.clock.Now()),
		Version:   a.version,
		Heartbeat: heartbeat,
		Hooks:     a.hookNames,
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, name := range a.names {
		st.Services = append(st.Services, a.services[name])
	}
	if a.drills != nil {
		st.Faults = a.drills.activeFaults()
	}
	return st
}

// statusDirty wakes the status loop to publish a changed status.
func (a *Agent) statusDirty() {
	select {
	case a.statusChanged <- struct{}{}:
	default:
	}
}

// publishStatusNow publishes the status and waits for the server to have
// it, for the last word before the agent drops its own bus connection.
func (a *Agent) publishStatusNow() {
	if err := a.publishLast(false); err != nil {
		a.log.Warn("publish status before dropping the bus", "err", err)
	}
}

// publishLast publishes the status at once, marked stopping if asked, and
// waits up to a second for the server to have it.
func (a *Agent) publishLast(stopping bool) error {
	st := a.status(false)
	st.Stopping = stopping
	body, err := st.MarshalVT()
	if err == nil {
		_, err = a.publish(bus.StatusSubject(a.cfg.Node), body)
	}
	if nc := a.conn(); err == nil && nc != nil && nc.IsConnected() {
		err = nc.FlushTimeout(time.Second)
	}
	return err
}

// statusLoop publishes the status on every change and, when nothing changed
// for a heartbeat period, as a heartbeat.
func (a *Agent) statusLoop(ctx context.Context) {
	subject := bus.StatusSubject(a.cfg.Node)
	reported := map[string]*statusSeen{}
	pacer := newStatusPacer(a.cfg.Node, a.cfg.StatusWindow)
	// body is reused: the connection copies what it publishes.
	var body []byte
	var lastSent time.Time // by the wall clock, as the timers go
	publish := func(heartbeat bool) {
		st := a.status(heartbeat)
		pacer.sent(st.GetAt().AsTime())
		lastSent = time.Now()
		var err error
		body, err = appendEncoded(body[:0], st)
		sent := false
		if err == nil {
			sent, err = a.publish(subject, body)
		}
		if err != nil {
			a.log.Warn("publish status", "err", err)
		}
		if sent {
			a.m.statusStages(st, reported)
		}
	}
	publish(false)
	// The heartbeat keeps its own beat, started at a random point of the
	// first period's second half, whatever changed statuses go out between
	// two beats: a fleet that applies a decision together sends its changes
	// together, and a heartbeat timed from them would bring the whole fleet
	// back in one burst every period after. A beat within a quarter period
	// of the last status is left out (beatDue), so statuses are at most
	// 1.25 heartbeats apart.
	beat := newSpreadTimer(a.cfg.Heartbeat)
	defer beat.Stop()
	// paced fires when a changed status is due (see statusPacer); waiting
	// is true while it is armed.
	paced := time.NewTimer(time.Hour)
	paced.Stop()
	defer paced.Stop()
	waiting := false
	for {
		select {
		case <-ctx.Done():
			a.sayStopping()
			return
		case <-a.statusChanged:
			if !waiting {
				paced.Reset(pacer.delay(a.clock.Now()))
				waiting = true
			}
		case <-paced.C:
			waiting = false
			publish(false)
		case <-beat.C:
			beat.Reset(a.cfg.Heartbeat)
			if beatDue(time.Since(lastSent), a.cfg.Heartbeat, waiting) {
				publish(true)
			}
		}
	}
}

// sayStopping publishes the last status of an agent shutting down cleanly,
// so that the coordinators count the node stale (and show it stopped) at
// once rather than after the stale period. A killed agent says nothing: it
// goes stale.
func (a *Agent) sayStopping() {
	if err := a.publishLast(true); err != nil {
		a.log.Warn("could not tell the coordinators this agent is stopping; its node goes stale after the stale period", "err", err)
	}
}

// conn is the bus connection once Run has made it.
func (a *Agent) conn() *nats.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nc
}
