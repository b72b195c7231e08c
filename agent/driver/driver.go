// Package driver defines how an agent drives one local proxy: the small
// interface every proxy package (haproxy, envoy) implements, and the
// registry the agent finds them in.
//
// A proxy is one package: a Section type (its config key, fields,
// validation, and Open), a Driver (Apply, Weights, Close and the optional
// interfaces it can honour: Observer, Watcher, StatsReader, WindowSource,
// HealthReporter, StateSetter, ServerAddresser, HTTPFaulter), and an init
// that calls Register. The command makes it available with one blank
// import; the agent core never imports a driver package.
package driver

import (
	"context"
	"errors"
)

// ErrUnavailable wraps failures to reach the proxy at all (socket gone,
// process down); the agent reports itself degraded and retries.
var ErrUnavailable = errors.New("proxy unavailable")

// ErrUnknownBackend is returned for a backend name the driver was not
// configured with.
var ErrUnknownBackend = errors.New("unknown backend")

// Driver sets and reads the traffic split of one service on one local proxy.
// Backends are named as in rollout specs ("blue", "green"); the driver maps
// them to the proxy's own servers or clusters.
type Driver interface {
	// Apply sets the weights (0..100) of the named backends. A proxy that
	// applies weights one server at a time raises the incoming backends
	// before lowering the outgoing ones, so no request finds every server at
	// weight 0. Backends not named keep their weights.
	Apply(ctx context.Context, weights map[string]uint32) error
	// Weights reads back the weights the proxy has now, so the agent can
	// notice drift (a proxy restarted or reloaded under it).
	Weights(ctx context.Context) (map[string]uint32, error)
	// Close releases the driver's resources.
	Close() error
}

// BackendCounters are one backend's traffic counters on the proxy. Requests
// and Errors are cumulative since the proxy started, so they go down when it
// restarts; Current, Queued and Weight are the values now.
type BackendCounters struct {
	// Backend is the name as in rollout specs ("blue").
	Backend string
	// Requests counts requests the backend answered or failed to answer.
	Requests uint64
	// Errors counts 5xx answers and connection or response failures.
	Errors uint64
	// Redispatched counts the requests, among Requests and Errors, that
	// this backend failed to take (a refused or failed connection) and
	// the proxy sent to another backend, which answered them in its own
	// counts. A request log names only that other backend.
	Redispatched uint64
	// Current is the number of open sessions to the backend.
	Current uint32
	// Queued is the number of requests waiting for a connection slot.
	Queued uint32
	// Weight is the weight the proxy uses now.
	Weight uint32
	// Down is true when the proxy holds the backend out of rotation on its
	// own now, whatever its weight: its health checks fail (HAProxy's
	// DOWN). An admin state (drain, maint) is not down.
	Down bool
}

// StatsReader is implemented by drivers that can read their proxy's traffic
// counters; the agent turns them into per-window telemetry.
type StatsReader interface {
	Counters(ctx context.Context) ([]BackendCounters, error)
}

// Observation is what a proxy does now, read back from it rather than
// remembered from what the agent last wrote.
type Observation struct {
	// Weights are the weights the proxy has now, by backend name.
	Weights map[string]uint32
	// Held names the backends the proxy keeps out of rotation whatever
	// their weight, with why: "drain" or "maint".
	Held map[string]string
	// Instance identifies the running proxy process; it changes when the
	// proxy restarts or reloads. Empty when the driver cannot tell.
	Instance string
}

// Observer is implemented by drivers that can read more of their proxy's
// live state than its weights (which backends are held out of rotation,
// which process runs). Drivers without it are observed through Weights.
type Observer interface {
	Observe(ctx context.Context) (Observation, error)
}

// Watcher is implemented by drivers that hold a connection to their proxy
// and can tell at once when it drops or comes back (a proxy killed,
// restarted or reloaded), rather than at the agent's next look.
type Watcher interface {
	// Watch calls changed(false) as soon as the connection to the proxy
	// drops and changed(true) whenever it is made again, until ctx ends.
	// changed must not block.
	Watch(ctx context.Context, changed func(up bool))
}
