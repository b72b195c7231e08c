package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/switchyard/switchyard/internal/names"
)

// Defaults of the agent config (DESIGN.md, "Defaults").
const (
	DefaultHeartbeat = 5 * time.Second
	DefaultResync    = 30 * time.Second
	DefaultNATS      = "nats://127.0.0.1:4222"
)

// ErrInvalidConfig wraps every problem Validate finds.
var ErrInvalidConfig = errors.New("invalid agent config")

// Config is an agent's YAML configuration file.
type Config struct {
	// Node is this node's id on the bus and in wave membership.
	Node string `yaml:"node"`
	// Labels are matched against wave selectors.
	Labels map[string]string `yaml:"labels"`
	// NATS is the bus URL (comma-separated for a cluster); the command line
	// may override it.
	NATS string `yaml:"nats"`
	// StateDir holds the agent's local database.
	StateDir string `yaml:"stateDir"`
	// HTTPAddr, when set, serves /metrics and /healthz.
	HTTPAddr string `yaml:"httpAddr"`
	// Heartbeat is how often the agent publishes its status when nothing
	// changed.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// Resync is how often the agent reads every desired state from the
	// bucket, in case it missed a push.
	Resync time.Duration `yaml:"resync"`
	// Services maps a service name to the local proxy that serves it.
	Services map[string]ServiceConfig `yaml:"services"`
}

// ServiceConfig names the proxy driving one service. Exactly one driver
// section is set.
type ServiceConfig struct {
	HAProxy *HAProxyConfig `yaml:"haproxy"`
}

// HAProxyConfig drives a service through HAProxy's runtime API.
type HAProxyConfig struct {
	// Socket is the path of HAProxy's admin socket.
	Socket string `yaml:"socket"`
	// Backend is the HAProxy backend holding the service's servers.
	Backend string `yaml:"backend"`
	// Servers maps a backend name of the rollout spec ("blue", "green") to
	// an HAProxy server of Backend.
	Servers map[string]string `yaml:"servers"`
	// Timeout bounds one runtime API command; zero leaves the driver's
	// default.
	Timeout time.Duration `yaml:"timeout"`
}

// LoadConfig reads, defaults and validates the config file at path. Unknown
// fields are errors, reported with their line.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read agent config: %w", err)
	}
	cfg, err := ParseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("agent config %s: %w", path, err)
	}
	return cfg, nil
}

// ParseConfig decodes, defaults and validates a config document.
func ParseConfig(b []byte) (*Config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var cfg Config
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: the document is empty", ErrInvalidConfig)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, explainYAMLError(err))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: want one YAML document, found more", ErrInvalidConfig)
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// unknownFieldRE matches yaml's report of a field KnownFields refused.
var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type agent\.(\w+)`)

// sections names, for operators, the part of the file each Go type decodes.
var sections = map[string]string{
	"Config":        "at the top level",
	"ServiceConfig": "in a service (want haproxy)",
	"HAProxyConfig": "in a haproxy section (want socket, backend, servers, timeout)",
}

// explainYAMLError rewrites yaml's unknown-field errors in the config's own
// terms; each keeps its line number.
func explainYAMLError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	lines := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		lines[i] = unknownFieldRE.ReplaceAllStringFunc(e, func(m string) string {
			sub := unknownFieldRE.FindStringSubmatch(m)
			where, ok := sections[sub[2]]
			if !ok {
				where = "in " + sub[2]
			}
			return fmt.Sprintf("unknown field %q %s", sub[1], where)
		})
	}
	return errors.New(strings.Join(lines, "; "))
}

// setDefaults fills the optional fields left empty.
func (c *Config) setDefaults() {
	if c.NATS == "" {
		c.NATS = DefaultNATS
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Resync == 0 {
		c.Resync = DefaultResync
	}
}

// Validate reports every problem of the config at once, each naming its
// field. Call it after defaults are applied (LoadConfig does both).
func (c *Config) Validate() error {
	var probs []error
	bad := func(field, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}

	if c.Node == "" {
		bad("node", "required")
	} else if err := names.Validate(c.Node); err != nil {
		bad("node", "%v", err)
	}
	for _, k := range slices.Sorted(maps.Keys(c.Labels)) {
		if k == "" {
			bad("labels", "empty label name")
		}
	}
	if c.NATS == "" {
		bad("nats", "required")
	}
	if c.StateDir == "" {
		bad("stateDir", "required")
	}
	if c.Heartbeat <= 0 {
		bad("heartbeat", "%s: must be positive", c.Heartbeat)
	}
	if c.Resync <= 0 {
		bad("resync", "%s: must be positive", c.Resync)
	}
	if len(c.Services) == 0 {
		bad("services", "required: at least one service")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Services)) {
		field := "services." + name
		if err := names.Validate(name); err != nil {
			bad(field, "%v", err)
		}
		svc := c.Services[name]
		if svc.HAProxy == nil {
			bad(field, "a proxy driver is required (haproxy)")
			continue
		}
		probs = append(probs, svc.HAProxy.validate(field+".haproxy")...)
	}
	if len(probs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(probs...))
}

func (h *HAProxyConfig) validate(field string) []error {
	var probs []error
	bad := func(sub, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	if h.Socket == "" {
		bad("socket", "required")
	}
	if h.Backend == "" {
		bad("backend", "required")
	}
	if len(h.Servers) == 0 {
		bad("servers", "required: map each spec backend (blue, green) to an HAProxy server")
	}
	for _, backend := range slices.Sorted(maps.Keys(h.Servers)) {
		if err := names.Validate(backend); err != nil {
			bad("servers", "%v", err)
		}
		if h.Servers[backend] == "" {
			bad("servers."+backend, "required: the HAProxy server name")
		}
	}
	if h.Timeout < 0 {
		bad("timeout", "%s: must not be negative", h.Timeout)
	}
	return probs
}

// clone returns a deep copy, so that an agent does not share maps with its
// caller.
func (c *Config) clone() *Config {
	out := *c
	out.Labels = maps.Clone(c.Labels)
	out.Services = make(map[string]ServiceConfig, len(c.Services))
	for name, svc := range c.Services {
		if svc.HAProxy != nil {
			h := *svc.HAProxy
			h.Servers = maps.Clone(h.Servers)
			svc.HAProxy = &h
		}
		out.Services[name] = svc
	}
	return &out
}
