package agent

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/names"
	"github.com/switchyard/switchyard/internal/strictyaml"
)

// maxHeartbeat is the longest heartbeat: half the coordinators' stale
// period, so that one status lost on the way does not make a node stale.
const maxHeartbeat = bus.StalePeriod / 2

// Defaults of the agent config (DESIGN.md, "Defaults").
const (
	DefaultHeartbeat         = 5 * time.Second
	DefaultResync            = 30 * time.Second
	DefaultNATS              = "nats://127.0.0.1:4222"
	DefaultTelemetryInterval = time.Second
	// DefaultObserveInterval is how often the agent reads its proxy back:
	// a restart, reload or hand edit is then noticed well within a second
	// even where the driver cannot watch its proxy's connection.
	DefaultObserveInterval = 250 * time.Millisecond
)

// Defaults of the local guard: conservative, so that it only acts on a new
// backend that is plainly broken while the coordinator cannot see it.
const (
	DefaultGuardAfterDisconnect = 30 * time.Second
	DefaultGuardWindow          = 10 * time.Second
	DefaultGuardMinRequests     = 50
	DefaultGuardMaxErrorRate    = 0.20
	DefaultGuardMaxP99          = 2 * time.Second
)

// Defaults of probes.
const (
	DefaultProbeTimeout      = 2 * time.Second
	DefaultProbeStatus       = 200
	DefaultSyntheticInterval = 10 * time.Second
)

// Defaults and bounds of hook commands.
const (
	DefaultHookTimeout = 30 * time.Second
	MaxHookTimeout     = time.Hour
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
	// NATSClient is this node's NATS credentials (from `switchyard auth
	// issue --role agent`) and the CA of the NATS servers; the command
	// line may override each file.
	NATSClient bus.Security `yaml:"natsClient"`
	// StateDir holds the agent's local database.
	StateDir string `yaml:"stateDir"`
	// HTTPAddr, when set, serves /metrics and /healthz.
	HTTPAddr string `yaml:"httpAddr"`
	// Heartbeat is how often the agent publishes its status when nothing
	// changed.
	Heartbeat time.Duration `yaml:"heartbeat"`
	// StatusWindow is how long a changed status waits, at most, before it
	// goes out (a random share of it, so a fleet's statuses spread), and
	// how often, at most, a changed status goes out; 0 (the default) sends
	// every changed status at once. See DefaultStatusWindow.
	StatusWindow time.Duration `yaml:"statusWindow"`
	// Resync is how often the agent reads every desired state from the
	// bucket, in case it missed a push.
	Resync time.Duration `yaml:"resync"`
	// TelemetryInterval is the length of one HealthReport window.
	TelemetryInterval time.Duration `yaml:"telemetryInterval"`
	// ObserveInterval is how often the agent reads each proxy back (its
	// weights, which backends it holds out, which process runs) and repairs
	// what does not match the applied state.
	ObserveInterval time.Duration `yaml:"observeInterval"`
	// LocalGuard lets the agent move its own node back to the old backend
	// when it is cut off from the bus and the new backend is failing.
	LocalGuard LocalGuardConfig `yaml:"localGuard"`
	// Services maps a service name to the local proxy that serves it.
	Services Services `yaml:"services"`
	// Processes names the backend processes chaos drills may pause or
	// kill: the bus names a process, never a command or a path.
	Processes map[string]ProcessConfig `yaml:"processes"`
	// Trust lists the coordinator keys whose documents the agent applies.
	Trust TrustConfig `yaml:"trust"`
	// Hooks names the commands rollouts may have this node run, by name:
	// the bus names a hook, never a command.
	Hooks map[string]HookConfig `yaml:"hooks"`
}

// TrustConfig is the set of coordinator public keys an agent trusts. During
// a key rotation it lists the old and the new key; once the coordinators
// sign with the new one, the old one is removed.
type TrustConfig struct {
	// Keys are public keys, each inline ("ed25519:<base64>", as `switchyard
	// keys generate` prints it) or the path of a file holding one.
	Keys []string `yaml:"keys"`
}

// HookConfig is one command a rollout's agent hooks may name.
type HookConfig struct {
	// Command is the program (absolute path, or found on PATH when the
	// config is loaded) and its arguments; no shell reads it.
	Command []string `yaml:"command"`
	// Timeout bounds one run; the command's process group is killed then.
	Timeout time.Duration `yaml:"timeout"`
}

// ProcessConfig is a process a drill's process fault may signal.
type ProcessConfig struct {
	// PIDFile is the absolute path of the file holding the process's pid,
	// read at the moment of the signal.
	PIDFile string `yaml:"pidFile"`
}

// LocalGuardConfig is the guardrail an agent applies on its own while it
// has lost the bus. Zero fields take the defaults, except the two that are
// pointers, whose 0 is a choice: nil (absent) takes their default.
type LocalGuardConfig struct {
	// Enabled turns the guard on; nil (absent) means on.
	Enabled *bool `yaml:"enabled"`
	// AfterDisconnect is how long the bus must have been lost before the
	// guard may act; until then the coordinator decides. 0 lets it act as
	// soon as the bus is lost; nil is DefaultGuardAfterDisconnect.
	AfterDisconnect *time.Duration `yaml:"afterDisconnect"`
	// Window is how far back the guard looks at the new backend's traffic.
	Window time.Duration `yaml:"window"`
	// MinRequests is the fewest requests in Window the guard decides on.
	MinRequests uint64 `yaml:"minRequests"`
	// MaxErrorRate is the error rate (0..1) above which the guard acts.
	MaxErrorRate float64 `yaml:"maxErrorRate"`
	// MaxP99 is the 99th percentile latency above which the guard acts;
	// it needs the service's logSocket. 0 checks no latency; nil is
	// DefaultGuardMaxP99.
	MaxP99 *time.Duration `yaml:"maxP99"`
}

// On reports whether the guard is enabled.
func (g LocalGuardConfig) On() bool { return g.Enabled == nil || *g.Enabled }

// afterDisconnect is AfterDisconnect, or its default when absent.
func (g LocalGuardConfig) afterDisconnect() time.Duration {
	if g.AfterDisconnect == nil {
		return DefaultGuardAfterDisconnect
	}
	return *g.AfterDisconnect
}

// maxP99 is MaxP99, or its default when absent; 0 checks no latency.
func (g LocalGuardConfig) maxP99() time.Duration {
	if g.MaxP99 == nil {
		return DefaultGuardMaxP99
	}
	return *g.MaxP99
}

// ServiceConfig names the proxy driving one service, and the agent's own
// probes of its backends. Exactly one driver section is set: its key names a
// registered driver ("haproxy", "envoy") and the driver decodes and checks
// what is under it, so one node may run services on different proxies.
type ServiceConfig struct {
	// Proxy is the service's driver section, decoded by the driver its key
	// names.
	Proxy driver.Section `yaml:"-"`
	// Probes are HTTP checks the agent makes to the backends directly.
	Probes *ProbesConfig `yaml:"probes"`
}

// Services maps a service name to its config. Decoded as a whole, each
// service's sections are named by their full path in errors
// (services.web.haproxy.timeout).
type Services map[string]ServiceConfig

// UnmarshalYAML decodes every service under its path.
func (s *Services) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: services is a mapping of service name to a driver section (%s) and optional probes", n.Line, strings.Join(driver.Names(), ", "))
	}
	out := Services{}
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if line, dup := first[k.Value]; dup {
			return strictyaml.Errors{{Path: "services." + k.Value, Problem: fmt.Sprintf("given twice in one mapping; first at line %d", line), Line: k.Line}}
		}
		first[k.Value] = k.Line
		var sc ServiceConfig
		if err := sc.decode(v, "services."+k.Value+"."); err != nil {
			return err
		}
		out[k.Value] = sc
	}
	*s = out
	return nil
}

// UnmarshalYAML decodes a service: "probes" and exactly one key naming a
// registered driver.
func (s *ServiceConfig) UnmarshalYAML(n *yaml.Node) error { return s.decode(n, "") }

// decode decodes a service; prefix is its path and a dot, "" when unknown,
// and names its sections in errors.
func (s *ServiceConfig) decode(n *yaml.Node, prefix string) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: a service is a mapping with a driver section (%s) and optional probes", n.Line, strings.Join(driver.Names(), ", "))
	}
	var out ServiceConfig
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Value == "probes" {
			var p ProbesConfig
			if err := driver.DecodeStrict(v, &p, prefix+"probes"); err != nil {
				return err
			}
			out.Probes = &p
			continue
		}
		kind, ok := driver.Lookup(k.Value)
		if !ok {
			return fmt.Errorf("line %d: unknown field %q in a service (want probes or a driver: %s)", k.Line, k.Value, strings.Join(driver.Names(), ", "))
		}
		if out.Proxy != nil {
			return fmt.Errorf("line %d: %s: a service has one driver section, it already has %s", k.Line, k.Value, out.Proxy.Kind())
		}
		sec := kind.NewSection()
		if err := driver.DecodeStrict(v, sec, prefix+k.Value); err != nil {
			return err
		}
		out.Proxy = sec
	}
	*s = out
	return nil
}

// ProbesConfig holds a service's preflights and synthetic transactions,
// each keyed by backend name as in rollout specs.
type ProbesConfig struct {
	// Preflight is checked before a backend's weight goes from 0 to more;
	// while it fails the agent keeps the old weights and retries.
	Preflight map[string]*HTTPCheck `yaml:"preflight"`
	// Synthetic is run periodically while a rollout is in progress.
	Synthetic *SyntheticConfig `yaml:"synthetic"`
}

// SyntheticConfig is a scripted sequence of requests per backend.
type SyntheticConfig struct {
	// Interval is the time between two runs of every sequence.
	Interval time.Duration `yaml:"interval"`
	// Transactions maps a backend name to its steps, run in order with one
	// cookie jar; a failing step ends the run.
	Transactions map[string][]*HTTPCheck `yaml:"transactions"`
}

// HTTPCheck is one HTTP request and what its answer must be.
type HTTPCheck struct {
	// Name identifies a synthetic step in reports ("preflight" for a
	// preflight); required for steps.
	Name string `yaml:"name"`
	// Method is the HTTP method; GET when empty.
	Method string `yaml:"method"`
	// URL is where the request goes, usually the backend itself rather
	// than the proxy. Required.
	URL string `yaml:"url"`
	// Headers are added to the request.
	Headers map[string]string `yaml:"headers"`
	// Body is sent as the request body.
	Body string `yaml:"body"`
	// ExpectStatus is the status the answer must have; 200 when zero.
	ExpectStatus int `yaml:"expectStatus"`
	// BodyContains, when set, must occur in the answer's body.
	BodyContains string `yaml:"bodyContains"`
	// MaxLatency, when set, is the longest the answer may take.
	MaxLatency time.Duration `yaml:"maxLatency"`
	// Timeout bounds the request; 2s when zero.
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
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, explainYAMLError(b, err))
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
var unknownFieldRE = regexp.MustCompile(`field (\S+) not found in type (?:agent|bus)\.(\w+)`)

// sections names, for operators, the part of the file each Go type decodes.
var sections = map[string]string{
	"Config":           "at the top level",
	"LocalGuardConfig": "in localGuard (want enabled, afterDisconnect, window, minRequests, maxErrorRate, maxP99)",
	"ProbesConfig":     "in probes (want preflight, synthetic)",
	"SyntheticConfig":  "in probes.synthetic (want interval, transactions)",
	"HTTPCheck":        "in a probe (want name, method, url, headers, body, expectStatus, bodyContains, maxLatency, timeout)",
	"ProcessConfig":    "in a process (want pidFile)",
	"TrustConfig":      "in trust (want keys)",
	"Security":         "in natsClient (want creds, ca, cert, key, jetstreamDomain)",
	"HookConfig":       "in hooks (want command, timeout)",
}

// explainYAMLError rewrites yaml's unknown-field and wrong-type errors in the
// config's own terms, naming the section or the field; each keeps its line
// number. b is the document.
func explainYAMLError(b []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	lines := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		if !unknownFieldRE.MatchString(e) {
			lines[i] = strictyaml.ExplainTypeError(b, &yaml.TypeError{Errors: []string{e}}, "").Error()
			continue
		}
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
	if c.TelemetryInterval == 0 {
		c.TelemetryInterval = DefaultTelemetryInterval
	}
	if c.ObserveInterval == 0 {
		c.ObserveInterval = DefaultObserveInterval
	}
	g := &c.LocalGuard
	if g.AfterDisconnect == nil {
		g.AfterDisconnect = new(DefaultGuardAfterDisconnect)
	}
	if g.Window == 0 {
		g.Window = DefaultGuardWindow
	}
	if g.MinRequests == 0 {
		g.MinRequests = DefaultGuardMinRequests
	}
	if g.MaxErrorRate == 0 {
		g.MaxErrorRate = DefaultGuardMaxErrorRate
	}
	if g.MaxP99 == nil {
		g.MaxP99 = new(DefaultGuardMaxP99)
	}
	for name, h := range c.Hooks {
		if h.Timeout == 0 {
			h.Timeout = DefaultHookTimeout
			c.Hooks[name] = h
		}
	}
	for _, svc := range c.Services {
		p := svc.Probes
		if p == nil {
			continue
		}
		for _, chk := range p.Preflight {
			if chk != nil {
				chk.setDefaults()
			}
		}
		if p.Synthetic != nil {
			if p.Synthetic.Interval == 0 {
				p.Synthetic.Interval = DefaultSyntheticInterval
			}
			for _, steps := range p.Synthetic.Transactions {
				for _, chk := range steps {
					if chk != nil {
						chk.setDefaults()
					}
				}
			}
		}
	}
}

func (h *HTTPCheck) setDefaults() {
	if h.Method == "" {
		h.Method = http.MethodGet
	}
	if h.ExpectStatus == 0 {
		h.ExpectStatus = DefaultProbeStatus
	}
	if h.Timeout == 0 {
		h.Timeout = DefaultProbeTimeout
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
		} else if c.Labels[k] == "" {
			// Selectors refuse empty values, so such a label would leave
			// the node out of every wave that names it, without a word.
			bad("labels."+k, "empty value; wave and drill selectors never match an empty value, so give one or remove the label")
		}
	}
	if c.NATS == "" {
		bad("nats", "required")
	}
	if _, err := c.NATSClient.Options("natsClient."); err != nil {
		bad("natsClient", "%v", err)
	} else if name, ok := credsName(c.NATSClient.Creds); ok && c.Node != "" && name != c.Node {
		// An agent's permissions are its creds' name's subjects: with
		// another node's creds it could publish nothing of its own.
		bad("natsClient.creds", "%s was issued to %q, but this node is %q", c.NATSClient.Creds, name, c.Node)
	}
	if c.StateDir == "" {
		bad("stateDir", "required")
	}
	if c.HTTPAddr != "" {
		if err := checkListenAddr(c.HTTPAddr); err != nil {
			bad("httpAddr", "%v", err)
		}
	}
	switch {
	case c.Heartbeat <= 0:
		bad("heartbeat", "%s: must be positive", c.Heartbeat)
	case c.Heartbeat > maxHeartbeat:
		// One heartbeat lost on the way would make a healthy node stale.
		bad("heartbeat", "%s: at most %s, half the %s the coordinators wait for a node's status before they count it stale", c.Heartbeat, maxHeartbeat, bus.StalePeriod)
	}
	switch {
	case c.StatusWindow < 0:
		bad("statusWindow", "%s: must not be negative (0 turns the window off)", c.StatusWindow)
	case c.Heartbeat > 0 && c.StatusWindow > c.Heartbeat:
		bad("statusWindow", "%s: must not exceed heartbeat (%s)", c.StatusWindow, c.Heartbeat)
	}
	if c.Resync <= 0 {
		bad("resync", "%s: must be positive", c.Resync)
	}
	if c.TelemetryInterval <= 0 {
		bad("telemetryInterval", "%s: must be positive", c.TelemetryInterval)
	}
	if _, err := c.Trust.keyring(); err != nil {
		probs = append(probs, err)
	}
	if c.ObserveInterval < 10*time.Millisecond {
		bad("observeInterval", "%s: must be at least 10ms", c.ObserveInterval)
	}
	probs = append(probs, c.LocalGuard.validate(c.TelemetryInterval)...)
	claims := map[string]string{} // claim -> service.key
	if len(c.Services) == 0 {
		bad("services", "required: at least one service")
	}
	for _, name := range slices.Sorted(maps.Keys(c.Services)) {
		field := "services." + name
		if err := names.Validate(name); err != nil {
			bad(field, "%v", err)
		}
		svc := c.Services[name]
		if svc.Proxy == nil {
			bad(field, "a proxy driver section is required (one of %s)", strings.Join(driver.Names(), ", "))
			continue
		}
		sec := field + "." + svc.Proxy.Kind()
		for _, err := range svc.Proxy.Validate() {
			probs = append(probs, fmt.Errorf("%s.%w", sec, err))
		}
		if cl, ok := svc.Proxy.(driver.Claimer); ok {
			m := cl.Claims()
			for _, key := range slices.Sorted(maps.Keys(m)) {
				at := sec + "." + key
				if other, dup := claims[m[key]]; dup {
					bad(at, "%s claims the same as %s; two services cannot share it", m[key], other)
				}
				claims[m[key]] = at
			}
		}
		if svc.Probes != nil {
			probs = append(probs, svc.Probes.validate(field+".probes", svc.Proxy.Backends())...)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Processes)) {
		field := "processes." + name
		if err := names.Validate(name); err != nil {
			bad(field, "%v", err)
		}
		switch pf := c.Processes[name].PIDFile; {
		case pf == "":
			bad(field+".pidFile", "required: the file holding the process's pid")
		case !filepath.IsAbs(pf):
			bad(field+".pidFile", "%q: want an absolute path", pf)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.Hooks)) {
		probs = append(probs, c.Hooks[name].validate("hooks."+name, name)...)
	}
	if len(probs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrInvalidConfig, errors.Join(probs...))
}

func (g LocalGuardConfig) validate(interval time.Duration) []error {
	var probs []error
	bad := func(sub, format string, args ...any) {
		probs = append(probs, fmt.Errorf("localGuard.%s: %s", sub, fmt.Sprintf(format, args...)))
	}
	if d := g.afterDisconnect(); d < 0 {
		bad("afterDisconnect", "%s: must not be negative (0 lets the guard act as soon as the bus is lost)", d)
	}
	if g.Window < interval {
		bad("window", "%s: must be at least telemetryInterval (%s)", g.Window, interval)
	}
	if g.MaxErrorRate <= 0 || g.MaxErrorRate > 1 || math.IsNaN(g.MaxErrorRate) {
		bad("maxErrorRate", "%v: want a fraction in (0, 1], e.g. 0.2 for 20%%", g.MaxErrorRate)
	}
	if d := g.maxP99(); d < 0 {
		bad("maxP99", "%s: must not be negative (0 checks no latency)", d)
	}
	return probs
}

func (p *ProbesConfig) validate(field string, backends []string) []error {
	var probs []error
	bad := func(sub, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	known := func(sub, backend string) bool {
		if !slices.Contains(backends, backend) {
			bad(sub, "backend %q is not one of the driver's backends (have %s)", backend, strings.Join(backends, ", "))
			return false
		}
		return true
	}
	for _, backend := range slices.Sorted(maps.Keys(p.Preflight)) {
		sub := "preflight." + backend
		if !known(sub, backend) {
			continue
		}
		chk := p.Preflight[backend]
		if chk == nil {
			bad(sub, "empty; want at least url")
			continue
		}
		probs = append(probs, chk.validate(field+"."+sub)...)
	}
	if s := p.Synthetic; s != nil {
		if s.Interval <= 0 {
			bad("synthetic.interval", "%s: must be positive", s.Interval)
		}
		if len(s.Transactions) == 0 {
			bad("synthetic.transactions", "required: map a backend to its steps")
		}
		for _, backend := range slices.Sorted(maps.Keys(s.Transactions)) {
			sub := "synthetic.transactions." + backend
			if !known(sub, backend) {
				continue
			}
			steps := s.Transactions[backend]
			if len(steps) == 0 {
				bad(sub, "required: at least one step")
			}
			seen := map[string]bool{}
			for i, chk := range steps {
				at := fmt.Sprintf("%s[%d]", sub, i)
				if chk == nil {
					bad(at, "empty step")
					continue
				}
				switch {
				case chk.Name == "":
					bad(at+".name", "required: steps are reported by name")
				case chk.Name == PreflightProbeName:
					bad(at+".name", "%q is reserved for preflights", chk.Name)
				case seen[chk.Name]:
					bad(at+".name", "%q is used twice", chk.Name)
				}
				seen[chk.Name] = true
				probs = append(probs, chk.validate(field+"."+at)...)
			}
		}
	}
	return probs
}

func (h *HTTPCheck) validate(field string) []error {
	var probs []error
	bad := func(sub, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	if h.URL == "" {
		bad("url", "required")
	} else if u, err := url.Parse(h.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("url", "%q: want an http:// or https:// URL with a host", h.URL)
	}
	if !validMethod(h.Method) {
		bad("method", "%q: want an HTTP method such as GET or POST", h.Method)
	}
	if h.ExpectStatus < 100 || h.ExpectStatus > 599 {
		bad("expectStatus", "%d: want an HTTP status 100..599", h.ExpectStatus)
	}
	if h.MaxLatency < 0 {
		bad("maxLatency", "%s: must not be negative", h.MaxLatency)
	}
	if h.Timeout <= 0 {
		bad("timeout", "%s: must be positive", h.Timeout)
	}
	for k := range h.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") {
			bad("headers", "%q is not a header name", k)
		}
	}
	return probs
}

// checkListenAddr accepts what net.Listen("tcp", addr) does, so that a
// mistyped address is refused with the config, not once the agent has
// started driving its proxies.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port, e.g. 127.0.0.1:9101 (or :9101 for every interface)", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("%q: want a port 0..65535 (0 picks a free one)", addr)
	}
	return nil
}

// validMethod accepts an HTTP token, which is all net/http asks of a method.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", r) {
			return false
		}
	}
	return true
}

// clone returns a deep copy, so that an agent does not share maps with its
// caller.
func (c *Config) clone() *Config {
	out := *c
	out.Labels = maps.Clone(c.Labels)
	out.Processes = maps.Clone(c.Processes)
	out.Trust.Keys = slices.Clone(c.Trust.Keys)
	out.Hooks = maps.Clone(c.Hooks) // Command slices are copied by hookTable
	if c.LocalGuard.Enabled != nil {
		out.LocalGuard.Enabled = new(*c.LocalGuard.Enabled)
	}
	if c.LocalGuard.AfterDisconnect != nil {
		out.LocalGuard.AfterDisconnect = new(*c.LocalGuard.AfterDisconnect)
	}
	if c.LocalGuard.MaxP99 != nil {
		out.LocalGuard.MaxP99 = new(*c.LocalGuard.MaxP99)
	}
	out.Services = make(map[string]ServiceConfig, len(c.Services))
	for name, svc := range c.Services {
		if c, ok := svc.Proxy.(interface{ Clone() driver.Section }); ok {
			svc.Proxy = c.Clone()
		}
		if svc.Probes != nil {
			svc.Probes = svc.Probes.clone()
		}
		out.Services[name] = svc
	}
	return &out
}

func (p *ProbesConfig) clone() *ProbesConfig {
	out := &ProbesConfig{}
	if p.Preflight != nil {
		out.Preflight = make(map[string]*HTTPCheck, len(p.Preflight))
		for b, chk := range p.Preflight {
			out.Preflight[b] = chk.clone()
		}
	}
	if p.Synthetic != nil {
		s := *p.Synthetic
		s.Transactions = make(map[string][]*HTTPCheck, len(p.Synthetic.Transactions))
		for b, steps := range p.Synthetic.Transactions {
			cp := make([]*HTTPCheck, len(steps))
			for i, chk := range steps {
				cp[i] = chk.clone()
			}
			s.Transactions[b] = cp
		}
		out.Synthetic = &s
	}
	return out
}

func (h *HTTPCheck) clone() *HTTPCheck {
	if h == nil {
		return nil
	}
	out := *h
	out.Headers = maps.Clone(h.Headers)
	return &out
}

// keyring loads the trusted keys.
func (t TrustConfig) keyring() (*bus.Keyring, error) {
	if len(t.Keys) == 0 {
		return nil, errors.New("trust.keys: required: at least one coordinator public key (printed by `switchyard keys generate`)")
	}
	keys := make([]ed25519.PublicKey, 0, len(t.Keys))
	for i, k := range t.Keys {
		pub, err := bus.LoadPublicKey(k)
		if err != nil {
			return nil, fmt.Errorf("trust.keys[%d]: %w", i, err)
		}
		keys = append(keys, pub)
	}
	ring, err := bus.NewKeyring(keys...)
	if err != nil {
		return nil, fmt.Errorf("trust.keys: %w", err)
	}
	return ring, nil
}

// credsName is the user name in a .creds file, if it can be read.
func credsName(path string) (string, bool) {
	if path == "" {
		return "", false
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	name, err := bus.CredsName(b)
	return name, err == nil
}
