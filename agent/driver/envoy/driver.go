package envoy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/internal/sketch"
)

var (
	_ driver.Driver         = (*Driver)(nil)
	_ driver.Observer       = (*Driver)(nil)
	_ driver.Watcher        = (*Driver)(nil)
	_ driver.HealthReporter = (*Driver)(nil)
	_ driver.WindowSource   = (*Driver)(nil)
)

// historyLen is how many past snapshots a driver remembers the routing of,
// to tell which weights a client that accepted an older version has.
const historyLen = 64

// Driver serves one service's routing over xDS and reads its clients'
// acceptance and load back.
type Driver struct {
	service, listener string
	res               *serviceResources
	srv               *server
	statePath         string // "" keeps nothing on disk
	log               *slog.Logger
	m                 *driverMetrics

	// changeMu makes each change (new routing, push, save) whole: the
	// desired-state worker and a drill change the routing concurrently,
	// and what is on disk must be what was served last.
	changeMu sync.Mutex

	mu      sync.Mutex
	state   *routing // what is served; nil before the first apply
	history []versioned
	closed  bool
	watch   chan struct{}

	loadMu   sync.Mutex
	load     map[string]*driver.Window // by backend
	loadSeen bool
	latency  map[string]*sketch.Sketch // by backend, from access logs

	// byAddr maps an endpoint ("127.0.0.1:9001") to its backend, to tell
	// which backend a proxyless client's access log entry went to.
	byAddr map[string]string
}

// Results of access log entries, the label of
// switchyard_agent_xds_access_log_entries_total.
const (
	resultTimed        = "timed"
	resultUnattributed = "unattributed"
	resultMalformed    = "malformed"
	resultUnknownLog   = "unknown_log"
)

type versioned struct {
	version uint64
	st      *routing
}

type driverMetrics struct {
	reg     prometheus.Registerer
	nacks   *prometheus.CounterVec
	clients prometheus.GaugeFunc
	healthy prometheus.GaugeFunc
	loads   prometheus.Counter
	// accessLogs counts access log entries by result.
	accessLogs *prometheus.CounterVec
}

// saved is the last routing applied, kept in the agent's state directory
// so a restarted agent serves it before it hears from the bus. It holds
// the weights only: a restarted agent reverts the faults it journaled and
// injects none again.
type saved struct {
	Service string   `json:"service"`
	Routing *routing `json:"routing"`
}

func open(s *Section, env driver.Env) (*Driver, error) {
	log := env.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	listenerName := s.Listener
	if listenerName == "" {
		listenerName = env.Service
	}
	res := &serviceResources{
		service:        env.Service,
		listener:       listenerName,
		backends:       sortedBackends(s.Endpoints),
		endpoints:      map[string][]hostPort{},
		reportInterval: s.LoadReportInterval,
	}
	if res.reportInterval == 0 {
		res.reportInterval = DefaultLoadReportInterval
	}
	if s.EnvoyListen != "" {
		hp, err := splitHostPort(s.EnvoyListen)
		if err != nil {
			return nil, fmt.Errorf("envoy driver: envoyListen: %w", err)
		}
		res.envoyListen = &hp
	}
	for b, eps := range s.Endpoints {
		for _, ep := range eps {
			hp, err := splitHostPort(ep)
			if err != nil {
				return nil, fmt.Errorf("envoy driver: endpoints.%s: %w", b, err)
			}
			res.endpoints[b] = append(res.endpoints[b], hp)
		}
	}
	d := &Driver{
		service:  env.Service,
		listener: listenerName,
		res:      res,
		log:      log,
		watch:    make(chan struct{}, 1),
		load:     map[string]*driver.Window{},
		latency:  map[string]*sketch.Sketch{},
		byAddr:   map[string]string{},
	}
	for b, eps := range res.endpoints {
		for _, ep := range eps {
			d.byAddr[ep.key()] = b
		}
	}
	if env.StateDir != "" {
		dir := filepath.Join(env.StateDir, Name)
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("envoy driver: state directory: %w", err)
		}
		d.statePath = filepath.Join(dir, env.Service+".json")
		d.state = d.loadSaved()
	}
	if d.state == nil && len(s.Weights) > 0 {
		d.state = &routing{Weights: maps.Clone(s.Weights)}
	}
	// The metrics exist before the server can call back into the driver
	// (a NACK is counted); they read the server only once it is set.
	if err := d.register(env.Registerer); err != nil {
		return nil, err
	}
	srv, err := acquire(s.XDS, log)
	if err != nil {
		d.unregister()
		return nil, fmt.Errorf("envoy driver: %w", err)
	}
	d.mu.Lock()
	d.srv = srv
	d.mu.Unlock()
	if err := srv.add(d); err != nil {
		srv.release(env.Service)
		d.unregister()
		return nil, fmt.Errorf("envoy driver: %w", err)
	}
	if d.state != nil {
		log.Info("serving xDS routing before any desired state arrives", "weights", d.state.Weights)
		if err := srv.push(); err != nil {
			d.Close()
			return nil, err
		}
	}
	return d, nil
}

func (d *Driver) register(reg prometheus.Registerer) error {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &driverMetrics{
		reg: reg,
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_xds_nacks_total",
			Help: "xDS configs a client of the service refused (NACK), by resource type.",
		}, []string{"type"}),
		clients: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchyard_agent_xds_clients",
			Help: "xDS clients connected that asked for the service's listener.",
		}, func() float64 {
			srv := d.server()
			if srv == nil {
				return 0
			}
			return float64(len(srv.clientsOf(d.listener, d.res.routeName())))
		}),
		healthy: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchyard_agent_xds_healthy",
			Help: "1 when at least one xDS client asked for the service and none refuses its config, else 0.",
		}, func() float64 {
			if d.Health().OK {
				return 1
			}
			return 0
		}),
		loads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchyard_agent_xds_load_reports_total",
			Help: "Per-cluster load reports received for the service's clusters.",
		}),
		accessLogs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchyard_agent_xds_access_log_entries_total",
			Help: "Access log entries received for the service, by result: timed (latency added to the window), unattributed (no backend of the service served it), malformed (no duration), unknown_log (a stream naming no service's listener, counted on every service of the xDS address).",
		}, []string{"result"}),
	}
	all := []prometheus.Collector{m.nacks, m.clients, m.healthy, m.loads, m.accessLogs}
	for _, c := range all {
		if err := reg.Register(c); err != nil {
			for _, done := range all {
				if done == c {
					break
				}
				reg.Unregister(done)
			}
			return fmt.Errorf("envoy driver: metrics: %w", err)
		}
	}
	for _, t := range []string{"listener", "route", "cluster", "endpoint"} {
		m.nacks.WithLabelValues(t)
	}
	for _, r := range []string{resultTimed, resultUnattributed, resultMalformed, resultUnknownLog} {
		m.accessLogs.WithLabelValues(r)
	}
	d.m = m
	return nil
}

func (d *Driver) unregister() {
	if d.m == nil {
		return
	}
	for _, c := range []prometheus.Collector{d.m.nacks, d.m.clients, d.m.healthy, d.m.loads, d.m.accessLogs} {
		d.m.reg.Unregister(c)
	}
}

func (d *Driver) loadSaved() *routing {
	b, err := os.ReadFile(d.statePath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var sv saved
	if err == nil {
		err = json.Unmarshal(b, &sv)
	}
	if err == nil && (sv.Service != d.service || sv.Routing == nil) {
		err = fmt.Errorf("it is for service %q", sv.Service)
	}
	if err == nil {
		for b := range sv.Routing.Weights {
			if !slices.Contains(d.res.backends, b) {
				err = fmt.Errorf("backend %q is not configured any more", b)
			}
		}
	}
	if err != nil {
		d.log.Warn("ignoring the saved xDS routing; serving nothing until the agent applies", "file", d.statePath, "err", err)
		return nil
	}
	// Files written before faults were left out may carry one.
	return &routing{Weights: sv.Routing.Weights}
}

func (d *Driver) save(st *routing) error {
	if d.statePath == "" {
		return nil
	}
	b, err := json.Marshal(saved{Service: d.service, Routing: &routing{Weights: st.Weights}})
	if err != nil {
		return err
	}
	tmp := d.statePath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, d.statePath)
}

func (d *Driver) clusterNames() []string {
	out := make([]string, len(d.res.backends))
	for i, b := range d.res.backends {
		out[i] = d.res.clusterName(b)
	}
	return out
}

// current is the routing to serve now; the server calls it while building
// a snapshot.
func (d *Driver) current() *routing {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == nil {
		return nil
	}
	return d.state.clone()
}

// remember records which routing a snapshot version carries.
func (d *Driver) remember(v uint64, st *routing) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.history = append(d.history, versioned{version: v, st: st})
	if len(d.history) > historyLen {
		d.history = slices.Delete(d.history, 0, len(d.history)-historyLen)
	}
}

// routingAt is the routing a client that accepted version v has.
func (d *Driver) routingAt(v uint64) (*routing, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.history) - 1; i >= 0; i-- {
		if d.history[i].version <= v {
			return d.history[i].st, true
		}
	}
	return nil, false
}

// change applies f to a copy of the routing and serves the result, unless
// it is what is served already.
func (d *Driver) change(f func(st *routing) error) error {
	d.changeMu.Lock()
	defer d.changeMu.Unlock()
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return fmt.Errorf("envoy driver: %w: closed", driver.ErrUnavailable)
	}
	next := &routing{Weights: map[string]uint32{}}
	if d.state != nil {
		next = d.state.clone()
	}
	if next.Weights == nil {
		next.Weights = map[string]uint32{}
	}
	if err := f(next); err != nil {
		d.mu.Unlock()
		return err
	}
	if d.state != nil && maps.Equal(d.state.Weights, next.Weights) && maps.Equal(d.state.Faults, next.Faults) {
		d.mu.Unlock()
		return nil
	}
	prev := d.state
	d.state = next
	d.mu.Unlock()
	if err := d.srv.push(); err != nil {
		d.mu.Lock()
		d.state = prev
		d.mu.Unlock()
		return err
	}
	if err := d.save(next); err != nil {
		d.log.Warn("keep the xDS routing on disk; a restart serves nothing until the agent applies", "err", err)
	}
	return nil
}

func (d *Driver) known(b string) error {
	if !slices.Contains(d.res.backends, b) {
		return fmt.Errorf("envoy driver: backend %q: %w (configured: %s)", b, driver.ErrUnknownBackend, strings.Join(d.res.backends, ", "))
	}
	return nil
}

// Apply implements driver.Driver: one new snapshot carries the whole
// split, so clients switch at once; nothing is half-applied.
func (d *Driver) Apply(_ context.Context, weights map[string]uint32) error {
	for b, w := range weights {
		if err := d.known(b); err != nil {
			return err
		}
		if w > 100 {
			return fmt.Errorf("envoy driver: backend %q: weight %d is over 100", b, w)
		}
	}
	return d.change(func(st *routing) error {
		maps.Copy(st.Weights, weights)
		return nil
	})
}

// Weights implements driver.Driver: the weights served now.
func (d *Driver) Weights(context.Context) (map[string]uint32, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, fmt.Errorf("envoy driver: %w: closed", driver.ErrUnavailable)
	}
	out := map[string]uint32{}
	if d.state != nil {
		maps.Copy(out, d.state.Weights)
	}
	return out, nil
}

// SetFault injects f into backend's requests through the fault filter, or
// removes its fault when f is nil.
func (d *Driver) SetFault(_ context.Context, backend string, f *Fault) error {
	if err := d.known(backend); err != nil {
		return err
	}
	return d.change(func(st *routing) error {
		if f == nil {
			delete(st.Faults, backend)
			if len(st.Faults) == 0 {
				st.Faults = nil
			}
			return nil
		}
		if st.Faults == nil {
			st.Faults = map[string]Fault{}
		}
		st.Faults[backend] = *f
		return nil
	})
}

// Faults returns the faults served now, by backend.
func (d *Driver) Faults() map[string]Fault {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state == nil {
		return nil
	}
	return maps.Clone(d.state.Faults)
}

// status is the clients' standing: the routing every client of the
// listener accepted, or why there is none.
func (d *Driver) status() (*routing, error) {
	clients := d.srv.clientsOf(d.listener, d.res.routeName())
	if len(clients) == 0 {
		return nil, fmt.Errorf("%w: no xDS client has asked for listener %q on %s", driver.ErrUnavailable, d.listener, d.srv.addr)
	}
	slices.SortFunc(clients, func(a, b clientView) int { return strings.Compare(a.node, b.node) })
	// Clients that disagree: the first that lags behind what is served
	// is the one reported, so the mismatch shows.
	var seen *routing
	for _, c := range clients {
		for _, t := range slices.Sorted(maps.Keys(c.nacked)) {
			return nil, fmt.Errorf("%w: xDS client %s refused the %s config: %s", driver.ErrUnavailable, c.node, t, c.nacked[t])
		}
		st, ok := d.routingAt(c.routesAcked)
		if !ok {
			return nil, fmt.Errorf("%w: xDS client %s has not accepted routes yet", driver.ErrUnavailable, c.node)
		}
		if seen == nil || (d.servedWeights(seen.Weights) && !d.servedWeights(st.Weights)) {
			seen = st
		}
	}
	return seen, nil
}

func (d *Driver) servedWeights(w map[string]uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state != nil && maps.Equal(d.state.Weights, w)
}

// Observe implements driver.Observer: the weights every xDS client of the
// service has accepted. No client, or one that refused the config, is an
// error: nothing is known to do what was applied.
func (d *Driver) Observe(context.Context) (driver.Observation, error) {
	st, err := d.status()
	if err != nil {
		return driver.Observation{}, err
	}
	return driver.Observation{Weights: maps.Clone(st.Weights)}, nil
}

func (d *Driver) server() *server {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.srv
}

// Health implements driver.HealthReporter.
func (d *Driver) Health() driver.Health {
	if d.server() == nil {
		return driver.Health{Reason: "not serving"}
	}
	if _, err := d.status(); err != nil {
		return driver.Health{Reason: err.Error()}
	}
	return driver.Health{OK: true}
}

// notify wakes Watch.
func (d *Driver) notify() {
	select {
	case d.watch <- struct{}{}:
	default:
	}
}

// Watch implements driver.Watcher: it reports at once when clients
// connect, accept, refuse or leave.
func (d *Driver) Watch(ctx context.Context, changed func(up bool)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-d.watch:
			changed(d.Health().OK)
		}
	}
}

// addLoad counts what one load report says a cluster served.
func (d *Driver) addLoad(cluster string, ok, failed uint64) {
	backend, found := strings.CutPrefix(cluster, d.service+"-")
	if !found {
		return
	}
	d.m.loads.Inc()
	d.loadMu.Lock()
	defer d.loadMu.Unlock()
	w := d.load[backend]
	if w == nil {
		w = &driver.Window{}
		d.load[backend] = w
	}
	w.Requests += ok + failed
	w.Errors += failed
	d.loadSeen = true
}

// addAccessLog adds one access log entry's duration to its backend's
// latency: the backend is the entry's upstream cluster (an Envoy's entry)
// or the endpoint that served it (a proxyless client's).
func (d *Driver) addAccessLog(e *alsdata.HTTPAccessLogEntry) {
	cp := e.GetCommonProperties()
	backend := ""
	if c := cp.GetUpstreamCluster(); c != "" {
		if b, ok := strings.CutPrefix(c, d.service+"-"); ok && slices.Contains(d.res.backends, b) {
			backend = b
		}
	} else if sa := cp.GetUpstreamRemoteAddress().GetSocketAddress(); sa != nil {
		if ip, err := netip.ParseAddr(sa.GetAddress()); err == nil {
			backend = d.byAddr[hostPort{host: ip.String(), port: sa.GetPortValue()}.key()]
		}
	}
	took := cp.GetDuration()
	if took == nil {
		took = cp.GetTimeToLastDownstreamTxByte()
	}
	switch {
	case backend == "":
		d.m.accessLogs.WithLabelValues(resultUnattributed).Inc()
		return
	case took == nil || took.CheckValid() != nil || took.AsDuration() < 0:
		d.m.accessLogs.WithLabelValues(resultMalformed).Inc()
		return
	}
	d.m.accessLogs.WithLabelValues(resultTimed).Inc()
	d.loadMu.Lock()
	defer d.loadMu.Unlock()
	sk := d.latency[backend]
	if sk == nil {
		sk = sketch.New()
		d.latency[backend] = sk
	}
	sk.Add(took.AsDuration().Seconds())
}

// TakeWindow implements driver.WindowSource: the requests and errors the
// clients reported since the last call, and the latencies their access
// logs gave. Without any load report in the window (no client, or none
// that reports load) it says so rather than zero. Without access log
// entries a backend's latency is nil: no data, never a fast backend.
func (d *Driver) TakeWindow() (map[string]driver.Window, bool) {
	d.loadMu.Lock()
	defer d.loadMu.Unlock()
	// Like the load, the latencies of a window without a report go into
	// the next window that has one, so both count the same requests.
	if !d.loadSeen {
		return nil, false
	}
	lat := d.latency
	d.latency = map[string]*sketch.Sketch{}
	out := make(map[string]driver.Window, len(d.res.backends))
	for _, b := range d.res.backends {
		w := driver.Window{Latency: lat[b]}
		if l := d.load[b]; l != nil {
			w.Requests, w.Errors = l.Requests, l.Errors
		}
		out[b] = w
	}
	clear(d.load)
	d.loadSeen = false
	return out, true
}

// Close stops serving the service; the last service of the address stops
// its server.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.mu.Unlock()
	if d.srv != nil {
		d.srv.release(d.service)
	}
	d.unregister()
	return nil
}

var _ driver.HTTPFaulter = (*Driver)(nil)

// SetHTTPFault implements driver.HTTPFaulter through the fault filter.
func (d *Driver) SetHTTPFault(ctx context.Context, backend string, f *driver.HTTPFault) error {
	if f == nil {
		return d.SetFault(ctx, backend, nil)
	}
	if f.ErrorPercent > 100 || f.DelayPercent > 100 {
		return fmt.Errorf("envoy driver: fault percentages %d, %d: want 0..100", f.ErrorPercent, f.DelayPercent)
	}
	return d.SetFault(ctx, backend, &Fault{
		AbortPercent: float64(f.ErrorPercent), AbortStatus: f.Status,
		DelayPercent: float64(f.DelayPercent), Delay: f.Delay,
	})
}
