// Package haproxy drives the traffic split of one service on a local HAProxy
// through its runtime API (admin socket).
package haproxy

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/internal/haproxyproc"
)

var (
	_ driver.Driver      = (*Driver)(nil)
	_ driver.StatsReader = (*Driver)(nil)
)

// DefaultTimeout bounds one runtime API command when Config.Timeout is 0.
const DefaultTimeout = 2 * time.Second

// MaxWeight is the largest server weight HAProxy accepts.
const MaxWeight = 256

// Server states accepted by SetState, as HAProxy's "set server ... state".
const (
	StateReady = "ready" // takes traffic by weight
	StateDrain = "drain" // finishes what it has, takes no new traffic
	StateMaint = "maint" // takes nothing; health checks stop
)

// Config says which HAProxy backend and servers carry one service.
type Config struct {
	// Socket is HAProxy's admin socket ("stats socket ... level admin").
	Socket string
	// Backend is the HAProxy backend name.
	Backend string
	// Servers maps backend names as in rollout specs ("blue", "green") to
	// HAProxy server names in Backend.
	Servers map[string]string
	// Timeout bounds each runtime API command; 0 means DefaultTimeout.
	Timeout time.Duration
}

// Driver sets weights on one HAProxy backend. It holds no connection:
// every command dials the socket, so it survives HAProxy restarts and may
// be created before HAProxy is up.
type Driver struct {
	cfg   Config
	api   runtimeAPI
	names []string // spec backend names, sorted, for deterministic order

	mu     sync.Mutex // one change at a time keeps the raise-then-lower order
	closed atomic.Bool
}

// New checks cfg and returns a driver. HAProxy need not be running yet.
func New(cfg Config) (*Driver, error) {
	if cfg.Socket == "" {
		return nil, errors.New("haproxy driver: Config.Socket is required (HAProxy's admin socket path)")
	}
	if err := haproxyproc.ValidName(cfg.Backend); err != nil {
		return nil, fmt.Errorf("haproxy driver: Config.Backend: %w", err)
	}
	if len(cfg.Servers) == 0 {
		return nil, errors.New("haproxy driver: Config.Servers is empty; map each spec backend (e.g. blue, green) to an HAProxy server")
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("haproxy driver: Config.Timeout %v is negative; use 0 for the default %v", cfg.Timeout, DefaultTimeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	servers := make(map[string]string, len(cfg.Servers))
	owner := make(map[string]string, len(cfg.Servers))
	names := make([]string, 0, len(cfg.Servers))
	for spec, srv := range cfg.Servers {
		if strings.TrimSpace(spec) == "" {
			return nil, fmt.Errorf("haproxy driver: Config.Servers has an empty backend name (for server %q)", srv)
		}
		if err := haproxyproc.ValidName(srv); err != nil {
			return nil, fmt.Errorf("haproxy driver: Config.Servers[%q]: %w", spec, err)
		}
		if other, dup := owner[srv]; dup {
			a, b := min(spec, other), max(spec, other)
			return nil, fmt.Errorf("haproxy driver: Config.Servers[%q] and Config.Servers[%q] are both server %q; each backend needs its own server", a, b, srv)
		}
		owner[srv] = spec
		servers[spec] = srv
		names = append(names, spec)
	}
	slices.Sort(names)
	cfg.Servers = servers // our own copy: the caller's map may change
	return &Driver{
		cfg:   cfg,
		api:   runtimeAPI{socket: cfg.Socket, timeout: cfg.Timeout},
		names: names,
	}, nil
}

var errClosed = fmt.Errorf("haproxy driver: %w", net.ErrClosed)

// server returns the HAProxy server behind a spec backend name.
func (d *Driver) server(spec string) (string, error) {
	srv, ok := d.cfg.Servers[spec]
	if !ok {
		return "", fmt.Errorf("haproxy driver: backend %q: %w (configured: %s)", spec, driver.ErrUnknownBackend, strings.Join(d.names, ", "))
	}
	return srv, nil
}

// change is one server's step in an Apply.
type change struct {
	spec, server string
	weight       uint32
	setWeight    bool // the runtime weight differs from the target
	ready        bool // forced maint/drain must be lifted for weight > 0
}

// Apply sets the weights of the named backends (0..MaxWeight; rollouts use
// 0..100). Servers that gain traffic are changed first, then those that
// lose it, so at no point do all servers have weight 0 (HAProxy answers
// 503 then: measured, lowering first drops requests during a switch). A
// weight above 0 also lifts forced maintenance or drain; weight 0 leaves
// the server up so in-flight requests finish. On error, the changes already
// made stay; Weights shows them.
func (d *Driver) Apply(ctx context.Context, weights map[string]uint32) error {
	if d.closed.Load() {
		return errClosed
	}
	// Check everything before touching HAProxy: a bad request changes nothing.
	for _, spec := range slices.Sorted(maps.Keys(weights)) {
		if _, err := d.server(spec); err != nil {
			return err
		}
		if w := weights[spec]; w > MaxWeight {
			return fmt.Errorf("haproxy driver: weight %d for backend %q is out of range: HAProxy accepts 0..%d", w, spec, MaxWeight)
		}
	}
	if len(weights) == 0 {
		return nil
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	state, err := d.serversState(ctx)
	if err != nil {
		return err
	}
	var raise, lower []change
	for _, spec := range slices.Sorted(maps.Keys(weights)) {
		srv := d.cfg.Servers[spec]
		cur, ok := state[srv]
		if !ok {
			return noServer(d, spec, srv, state)
		}
		w := weights[spec]
		c := change{
			spec: spec, server: srv, weight: w,
			setWeight: cur.Weight != w,
			ready:     w > 0 && cur.AdminState&adminClearable != 0,
		}
		if !c.setWeight && !c.ready {
			continue
		}
		// Classify by the traffic share the server competes for now, so a
		// drained server at weight 100 that is brought back counts as raised.
		if w < cur.effectiveWeight() {
			lower = append(lower, c)
		} else {
			raise = append(raise, c)
		}
	}
	for _, c := range append(raise, lower...) {
		if c.setWeight {
			cmd := fmt.Sprintf("set weight %s/%s %d", d.cfg.Backend, c.server, c.weight)
			if err := d.api.set(ctx, cmd); err != nil {
				return fmt.Errorf("haproxy driver: set weight of backend %q (server %s/%s) to %d: %w", c.spec, d.cfg.Backend, c.server, c.weight, err)
			}
		}
		// After the weight, so the server comes back with its new share
		// rather than briefly with the old one.
		if c.ready {
			if err := d.setState(ctx, c.spec, c.server, StateReady); err != nil {
				return err
			}
		}
	}
	return nil
}

// Weights reads the weight HAProxy has for each configured server, keyed by
// spec backend name. It is the runtime weight, whatever the server's state:
// after an HAProxy restart it is the config's weight again, which is how the
// agent notices drift.
func (d *Driver) Weights(ctx context.Context) (map[string]uint32, error) {
	if d.closed.Load() {
		return nil, errClosed
	}
	state, err := d.serversState(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint32, len(d.names))
	for _, spec := range d.names {
		srv := d.cfg.Servers[spec]
		st, ok := state[srv]
		if !ok {
			return nil, noServer(d, spec, srv, state)
		}
		out[spec] = st.Weight
	}
	return out, nil
}

// SetState puts a backend's server in "ready", "drain" or "maint" (chaos
// drills and operators use it; rollouts use weights).
func (d *Driver) SetState(ctx context.Context, backend, state string) error {
	if d.closed.Load() {
		return errClosed
	}
	srv, err := d.server(backend)
	if err != nil {
		return err
	}
	switch state {
	case StateReady, StateDrain, StateMaint:
	default:
		return fmt.Errorf("haproxy driver: state %q for backend %q: want %q, %q or %q", state, backend, StateReady, StateDrain, StateMaint)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.setState(ctx, backend, srv, state)
}

var _ driver.StateReader = (*Driver)(nil)

// ServerState reads the state "set server ... state" last put a backend's
// server in, from "show servers state": "maint" (set, or "disabled" in the
// config), "drain", or "ready".
func (d *Driver) ServerState(ctx context.Context, backend string) (string, error) {
	st, err := d.serverRow(ctx, backend)
	if err != nil {
		return "", err
	}
	switch {
	case st.AdminState&(adminForcedMaint|adminConfigMaint) != 0:
		return StateMaint, nil
	case st.AdminState&adminForcedDrain != 0:
		return StateDrain, nil
	}
	return StateReady, nil
}

// serverRow is the "show servers state" row of a backend's server.
func (d *Driver) serverRow(ctx context.Context, backend string) (serverState, error) {
	if d.closed.Load() {
		return serverState{}, errClosed
	}
	srv, err := d.server(backend)
	if err != nil {
		return serverState{}, err
	}
	states, err := d.serversState(ctx)
	if err != nil {
		return serverState{}, err
	}
	st, ok := states[srv]
	if !ok {
		return serverState{}, noServer(d, backend, srv, states)
	}
	return st, nil
}

func (d *Driver) setState(ctx context.Context, spec, srv, state string) error {
	cmd := fmt.Sprintf("set server %s/%s state %s", d.cfg.Backend, srv, state)
	if err := d.api.set(ctx, cmd); err != nil {
		return fmt.Errorf("haproxy driver: set backend %q (server %s/%s) %s: %w", spec, d.cfg.Backend, srv, state, err)
	}
	return nil
}

// Stats reads "show stat" for the configured servers, one ServerStat per
// spec backend, sorted by its name.
func (d *Driver) Stats(ctx context.Context) ([]ServerStat, error) {
	if d.closed.Load() {
		return nil, errClosed
	}
	// "<backend> 4 -1": servers of that backend only (type 4), so the answer
	// stays small however many proxies HAProxy has.
	ans, err := d.api.show(ctx, fmt.Sprintf("show stat %s 4 -1", d.cfg.Backend))
	if err != nil {
		return nil, d.backendError(err)
	}
	rows, err := parseStat(ans)
	if err != nil {
		return nil, fmt.Errorf("haproxy driver: %w", err)
	}
	byServer := make(map[string]ServerStat, len(rows))
	for _, r := range rows {
		if r.Proxy == d.cfg.Backend {
			byServer[r.Stat.Server] = r.Stat
		}
	}
	out := make([]ServerStat, 0, len(d.names))
	for _, spec := range d.names {
		srv := d.cfg.Servers[spec]
		st, ok := byServer[srv]
		if !ok {
			return nil, noServer(d, spec, srv, byServer)
		}
		st.Backend = spec
		out = append(out, st)
	}
	return out, nil
}

// Counters reads "show stat" as the driver-neutral counters the agent's
// telemetry uses, one per spec backend, sorted by its name.
func (d *Driver) Counters(ctx context.Context) ([]driver.BackendCounters, error) {
	stats, err := d.Stats(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]driver.BackendCounters, len(stats))
	for i, s := range stats {
		out[i] = s.Counters()
	}
	return out, nil
}

// Counters turns one server's "show stat" row into request and error
// counts. HAProxy counts, per server, the responses the server sent (by
// class), responses that failed (eresp: empty, truncated or invalid, for
// which HAProxy itself answers 502 without counting it under hrsp_5xx) and
// requests that could not connect (econ: counted once per request, after
// its retries; HAProxy's own 503 is not counted under hrsp_5xx either) and
// requests that could not connect and were sent to another server
// (wredis: with "option redispatch" and another server in rotation,
// HAProxy redispatches at the first failed connect and counts it nowhere
// else on this server, so a server refusing every connection would
// otherwise look idle). A response cut short after its headers counts both
// as a response and in eresp, so it adds one request too many; that is
// rare and errs towards lower error rates only slightly.
func (s ServerStat) Counters() driver.BackendCounters {
	responses := s.Hrsp1xx + s.Hrsp2xx + s.Hrsp3xx + s.Hrsp4xx + s.Hrsp5xx + s.HrspOther
	return driver.BackendCounters{
		Backend:      s.Backend,
		Requests:     responses + s.Eresp + s.Econ + s.Wredis,
		Errors:       s.Hrsp5xx + s.Eresp + s.Econ + s.Wredis,
		Redispatched: s.Wredis,
		Current:      clampUint32(s.Scur),
		Queued:       clampUint32(s.Qcur),
		Weight:       s.Weight,
		Down:         s.OperationallyDown(),
	}
}

// OperationallyDown is true when HAProxy itself holds the server out of
// rotation: its health checks (or agent checks) failed, status "DOWN",
// "DOWN 1/2" (rising, still down) or "DOWN (agent)". An admin state shows
// first ("MAINT", "DRAIN") and is not down: the agent or a drill set it.
// "UP 1/3" (failing, still up) and "no check" take traffic; "NOLB" is a
// server asking, through its check, for no new traffic (its own graceful
// stop), not a failing one.
func (s ServerStat) OperationallyDown() bool {
	return strings.HasPrefix(s.Status, "DOWN")
}

func clampUint32(v uint64) uint32 {
	return uint32(min(v, uint64(^uint32(0))))
}

// DroppedLogs reads how many log lines HAProxy failed to send since it
// started, to any log target ("DroppedLogs" of "show info"). A unix
// datagram log socket holds only net.unix.max_dgram_qlen lines and HAProxy
// drops, never waits, when it is full.
func (d *Driver) DroppedLogs(ctx context.Context) (uint64, error) {
	if d.closed.Load() {
		return 0, errClosed
	}
	ans, err := d.api.show(ctx, "show info")
	if err != nil {
		return 0, fmt.Errorf("haproxy driver: %w", err)
	}
	v, err := parseInfoCounter(ans, "DroppedLogs")
	if err != nil {
		return 0, fmt.Errorf("haproxy driver: %w", err)
	}
	return v, nil
}

// Close marks the driver closed; there is no connection to release.
func (d *Driver) Close() error {
	d.closed.Store(true)
	return nil
}

func (d *Driver) serversState(ctx context.Context) (map[string]serverState, error) {
	ans, err := d.api.show(ctx, "show servers state "+d.cfg.Backend)
	if err != nil {
		return nil, d.backendError(err)
	}
	st, err := parseServersState(ans, d.cfg.Backend)
	if err != nil {
		return nil, fmt.Errorf("haproxy driver: %w", err)
	}
	return st, nil
}

func (d *Driver) backendError(err error) error {
	if errors.Is(err, ErrNoSuchBackend) {
		return fmt.Errorf("haproxy driver: Config.Backend %q: %w", d.cfg.Backend, err)
	}
	return fmt.Errorf("haproxy driver: %w", err)
}

// noServer says that HAProxy lacks the server a spec backend is mapped to,
// naming the servers the backend has (from have's keys) and one that
// differs only in case: HAProxy's names are case-sensitive.
func noServer[V any](d *Driver, spec, srv string, have map[string]V) error {
	names := slices.Sorted(maps.Keys(have))
	hint := fmt.Sprintf(" (%s has %s)", d.cfg.Backend, strings.Join(names, ", "))
	if len(names) == 0 {
		hint = fmt.Sprintf(" (%s has no servers)", d.cfg.Backend)
	}
	for _, n := range names {
		if strings.EqualFold(n, srv) {
			hint += fmt.Sprintf("; did you mean %q? server names are case-sensitive", n)
			break
		}
	}
	return fmt.Errorf("haproxy driver: backend %q is server %s/%s: %w%s", spec, d.cfg.Backend, srv, ErrNoSuchServer, hint)
}
