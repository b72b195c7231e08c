package driver

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/switchyard/switchyard/internal/sketch"
	"github.com/switchyard/switchyard/internal/strictyaml"
)

// Section is one service's configuration for one proxy: the value a
// service's driver key ("haproxy:", "envoy:") decodes into. Each driver
// package owns its section: its fields, its validation and how it opens.
type Section interface {
	// Kind is the name the driver is registered under, the section's key.
	Kind() string
	// Validate reports every problem of the section, each starting with the
	// key it names relative to the section ("socket: required").
	Validate() []error
	// Backends are the spec backend names the section maps ("blue",
	// "green"), sorted.
	Backends() []string
	// Open builds the service's driver and starts its telemetry source.
	Open(env Env) (Driver, error)
}

// Claimer is implemented by sections that hold a node-wide resource two
// services must not both hold the same way (one log socket and HAProxy
// backend). Claims maps a key of the section to an opaque claim; two
// services with an equal claim are refused.
type Claimer interface {
	Claims() map[string]string
}

// Env is what the agent hands a section's Open.
type Env struct {
	// Service is the service's name; Node the agent's node id.
	Service, Node string
	// StateDir is the agent's state directory; a driver keeps its own files
	// under StateDir/<driver>/.
	StateDir string
	// Logger logs for the service.
	Logger *slog.Logger
	// Registerer takes the driver's own metrics, already labelled with the
	// service; never nil.
	Registerer prometheus.Registerer
	// LogLines counts request-log lines by result (the agent's
	// switchyard_agent_log_lines_total); never nil.
	LogLines *prometheus.CounterVec
}

// Window is one backend's traffic over one telemetry window as a driver's
// per-request source saw it.
type Window struct {
	Requests, Errors uint64
	// Latency holds the latencies seen, in seconds; nil when the source
	// has no latency.
	Latency *sketch.Sketch
}

// WindowSource is implemented by drivers that see every request (HAProxy's
// request log, Envoy's load reports). TakeWindow returns each backend's
// traffic since the last call; ok is false when the source has nothing to
// say for the window (not configured, or no report arrived), which the
// agent reports as no data, never as a quiet backend.
type WindowSource interface {
	TakeWindow() (w map[string]Window, ok bool)
}

// Health is a driver's own view of whether its proxy takes its config.
type Health struct {
	// OK is false when the proxy refused the config or nothing consumes it.
	OK bool
	// Reason says why not, for status and logs.
	Reason string
}

// HealthReporter is implemented by drivers whose proxy can refuse or
// ignore a config the agent accepted (an xDS client's NACK, no client).
type HealthReporter interface {
	Health() Health
}

// Kind is one proxy driver, as registered.
type Kind struct {
	// Name is the service key that selects it ("haproxy").
	Name string
	// NewSection returns an empty section to decode into.
	NewSection func() Section
}

var (
	kindsMu sync.RWMutex
	kinds   = map[string]Kind{}
)

// Register makes a driver available to agent configs under k.Name. Driver
// packages call it from init; a name registered twice is a programming
// error and panics.
func Register(k Kind) {
	kindsMu.Lock()
	defer kindsMu.Unlock()
	if k.Name == "" || k.NewSection == nil {
		panic("driver: Register needs a name and NewSection")
	}
	if _, dup := kinds[k.Name]; dup {
		panic(fmt.Sprintf("driver: %q registered twice", k.Name))
	}
	kinds[k.Name] = k
}

// Lookup returns the driver registered under name.
func Lookup(name string) (Kind, bool) {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	k, ok := kinds[name]
	return k, ok
}

// Names lists the registered drivers, sorted.
func Names() []string {
	kindsMu.RLock()
	defer kindsMu.RUnlock()
	return slices.Sorted(maps.Keys(kinds))
}

// DecodeStrict decodes a YAML node into v refusing unknown fields, as the
// rest of the agent config is decoded; path names the node in errors.
func DecodeStrict(n *yaml.Node, v any, path string) error {
	return strictyaml.DecodeNode(n, v, path)
}
