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

// Options are what the caller injects into an Agent.
type Options struct {
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the agent's metrics; nil uses a private registry.
	Registerer prometheus.Registerer
	// Gatherer serves /metrics; when nil, Registerer is used if it is also a
	// Gatherer (a *prometheus.Registry is).
	Gatherer prometheus.Gatherer
	// DriverFactory builds each service's proxy driver. Required.
	DriverFactory DriverFactory
	// NATSURL overrides the config's nats URL when not empty.
	NATSURL string
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
	store    StateStore
	clock    clock.Clock
	version  string
	timing   timing
	names    []string // configured services, sorted

	started       atomic.Bool
	ready         chan struct{}
	statusChanged chan struct{}

	mu       sync.Mutex
	services map[string]*sv1.ServiceStatus
	nc       *nats.Conn
	httpAddr string
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
	if opts.DriverFactory == nil {
		return nil, errors.New("agent: a DriverFactory is required")
	}
	a := &Agent{
		cfg:           cfg,
		natsURL:       cfg.NATS,
		log:           opts.Logger,
		gatherer:      opts.Gatherer,
		factory:       opts.DriverFactory,
		store:         opts.StateStore,
		clock:         opts.Clock,
		version:       opts.Version,
		names:         slices.Sorted(maps.Keys(cfg.Services)),
		ready:         make(chan struct{}),
		statusChanged: make(chan struct{}, 1),
		services:      make(map[string]*sv1.ServiceStatus, len(cfg.Services)),
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

// Ready is closed once Run has restored local state, subscribed to every
// service's desired state and asked the bucket for it once.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

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

// Status returns the status the agent would publish now.
func (a *Agent) Status() *sv1.AgentStatus { return a.status(false) }

// Run starts the agent and blocks until ctx ends; then it stops, closes the
// bus connection, the drivers and the local state, and returns nil. It
// returns an error if it cannot start. Run may be called once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	res, err := a.open()
	if err != nil {
		return err
	}

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
		if nc != nil {
			nc.Close()
		}
		res.close(a.log)
		a.log.Info("agent stopped")
	}()

	// Services start before the bus: repairing the proxy from local state
	// needs no bus.
	for _, w := range res.workers {
		wg.Go(func() { w.run(ctx) })
	}

	reconnected := make(chan struct{}, 1)
	nc, err = bus.Connect(a.natsURL, "switchyard-agent "+a.cfg.Node, a.log,
		nats.ReconnectHandler(func(c *nats.Conn) {
			a.log.Info("nats reconnected; resyncing desired state", "url", c.ConnectedUrlRedacted())
			a.m.busReconnects.Inc()
			select {
			case reconnected <- struct{}{}:
			default:
			}
		}))
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.nc = nc
	a.mu.Unlock()
	for _, w := range res.workers {
		if _, err := nc.Subscribe(bus.DesiredKeySubject(w.name), w.onMsg); err != nil {
			return fmt.Errorf("subscribe to desired state of %s: %w", w.name, err)
		}
	}
	if err := nc.FlushTimeout(busTimeout); err != nil {
		return fmt.Errorf("subscribe to desired state: %w", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	p := &desiredPoller{js: js, log: a.log, m: a.m}
	p.poll(ctx, res.workers)

	if a.cfg.HTTPAddr != "" {
		if srv, err = a.serveHTTP(); err != nil {
			return err
		}
	}
	wg.Go(func() { a.statusLoop(ctx, nc) })
	wg.Go(func() { a.resyncLoop(ctx, p, res.workers, reconnected) })

	a.log.Info("agent running", "services", a.names, "nats", nc.ConnectedUrlRedacted())
	close(a.ready)
	<-ctx.Done()
	return nil
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
		res.drivers = append(res.drivers, d)
		res.workers = append(res.workers, &serviceWorker{
			name:       name,
			node:       a.cfg.Node,
			labels:     a.cfg.Labels,
			drv:        d,
			store:      res.store,
			log:        log,
			m:          a.m,
			clock:      a.clock,
			timing:     a.timing,
			report:     func(st *sv1.ServiceStatus) { a.setServiceStatus(st) },
			inbox:      newInbox(),
			driftCheck: make(chan struct{}, 1),
			applied:    applied,
		})
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
		w.inbox.put(delivery{raw: e.Value(), poll: true})
	}
}

// resyncLoop reads the bucket again after every reconnect and every resync
// period, and has every service check its proxy for drift each period.
func (a *Agent) resyncLoop(ctx context.Context, p *desiredPoller, workers []*serviceWorker, reconnected <-chan struct{}) {
	t := time.NewTicker(a.cfg.Resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-reconnected:
			p.poll(ctx, workers)
		case <-t.C:
			p.poll(ctx, workers)
			for _, w := range workers {
				w.requestDriftCheck()
			}
		}
	}
}

// setServiceStatus records a service's new status and wakes the status loop.
func (a *Agent) setServiceStatus(st *sv1.ServiceStatus) {
	a.mu.Lock()
	a.services[st.GetService()] = st
	a.mu.Unlock()
	select {
	case a.statusChanged <- struct{}{}:
	default:
	}
}

// status assembles the agent's status from its services' latest reports.
func (a *Agent) status(heartbeat bool) *sv1.AgentStatus {
	st := &sv1.AgentStatus{
		Node:      a.cfg.Node,
		Labels:    maps.Clone(a.cfg.Labels),
		At:        timestamppb.New(a.clock.Now()),
		Version:   a.version,
		Heartbeat: heartbeat,
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, name := range a.names {
		st.Services = append(st.Services, proto.CloneOf(a.services[name]))
	}
	return st
}

// statusLoop publishes the status on every change and, when nothing changed
// for a heartbeat period, as a heartbeat.
func (a *Agent) statusLoop(ctx context.Context, nc *nats.Conn) {
	subject := bus.StatusSubject(a.cfg.Node)
	publish := func(heartbeat bool) {
		body, err := proto.Marshal(a.status(heartbeat))
		if err == nil {
			err = nc.Publish(subject, body)
		}
		if err != nil {
			a.log.Warn("publish status", "err", err)
		}
	}
	publish(false)
	t := time.NewTicker(a.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.statusChanged:
			publish(false)
			t.Reset(a.cfg.Heartbeat)
		case <-t.C:
			publish(true)
		}
	}
}

// conn is the bus connection once Run has made it.
func (a *Agent) conn() *nats.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.nc
}
