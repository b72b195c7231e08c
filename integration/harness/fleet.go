package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/freeport"
	"github.com/switchyard/switchyard/internal/haproxyproc"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// FleetOptions say what StartFleet builds.
type FleetOptions struct {
	// Dir holds every process's data and logs. Required.
	Dir string
	// Nodes is the number of edge nodes, named edge-1..edge-N; 1 when zero.
	Nodes int
	// Service is the service every node fronts; "web" when empty.
	Service string
	// Switchyard and Backend are the binaries from BuildBinaries. Required.
	Switchyard, Backend string
	// Log receives what the harness is doing, one line per step; nil drops it.
	Log io.Writer
	// Labels gives node i (0-based) its labels; nil gives every node
	// {region: eu}.
	Labels func(i int) map[string]string
	// Heartbeat is the agents' heartbeat; 1s when zero, so the coordinator
	// hears about restarted agents quickly in tests.
	Heartbeat time.Duration
	// Resync is the agents' full re-read period; 30s (the default of the
	// design) when zero.
	Resync time.Duration
	// HealthChecks turns on HAProxy's health checks of blue and green.
	HealthChecks bool
	// NATS, when its URL is set, is an existing bus with its own
	// coordinators (see StartCluster): the fleet starts no `switchyard
	// dev`, only the edge nodes, and CoordinatorHTTP stays empty. Agents
	// get credentials from its auth directory and verify its CA.
	NATS Bus
	// TrustKeys are the coordinator public keys (ed25519:... or .pub files)
	// the agents trust; with dev, the key dev prints is added.
	TrustKeys []string
	// Hooks gives node i (0-based) the hooks: section of its agent config;
	// nil gives none.
	Hooks func(i int) map[string]AgentHook
	// NodeNATS gives node i (0-based) the bus its agent connects to, e.g.
	// its PoP's leaf server (same CA and auth directory as NATS); nil gives
	// NATS.
	NodeNATS func(i int) Bus
	// Envoy says which nodes (0-based) run the service on the agent's Envoy
	// driver instead of HAProxy: their agent serves xDS, and a proxyless
	// gRPC client (XDSClient, the integration/xdsclient binary) is their
	// frontend. nil runs every node on HAProxy.
	Envoy func(i int) bool
	// XDSClient is the integration/xdsclient binary; required with Envoy.
	XDSClient string
	// LocalGuard is the localGuard: section of every agent's config, e.g.
	// {afterDisconnect: 1s, window: 2s}; nil leaves the defaults.
	LocalGuard map[string]string
	// DevArgs are more flags for `switchyard dev` (e.g.
	// --viewer-token-file, --notify URL).
	DevArgs []string
}

// AgentHook is one hook of an agent config.
type AgentHook struct {
	Command []string `yaml:"command"`
	Timeout string   `yaml:"timeout,omitempty"`
}

// Backend names every node has, as rollout specs name them.
const (
	Blue  = "blue"
	Green = "green"
)

// Fleet is a running Switchyard fleet: `switchyard dev` (embedded NATS and one
// coordinator), unless FleetOptions.NATSURL names a control plane of the
// caller's, and, per node, a blue and a green backend, a real HAProxy and an
// agent.
type Fleet struct {
	opts FleetOptions
	log  *slog.Logger
	// Dev is the `switchyard dev` process; nil with an external control
	// plane.
	Dev *Process
	// NATSURL is what dev printed as SWITCHYARD_NATS, or FleetOptions.NATS.URL.
	NATSURL string
	// Bus is the bus with its CA and auth directory: dev's (it runs with
	// authorization and TLS on) or FleetOptions.NATS.
	Bus Bus
	// CoordinatorHTTP is dev's coordinator /metrics and /healthz address;
	// empty with an external control plane.
	CoordinatorHTTP string
	Nodes           []*Node

	ports    *portSet
	sockRoot string // short directory for HAProxy sockets when Dir is too long
	client   *http.Client

	closeOnce sync.Once
	closeErr  error
}

// Node is one edge node of a Fleet.
type Node struct {
	ID           string
	Labels       map[string]string
	Dir          string
	FrontendAddr string
	AgentHTTP    string
	AgentConfig  string
	Blue, Green  *Process
	// BlueAddr and GreenAddr are the backends' addresses.
	BlueAddr, GreenAddr string
	HAProxy             *haproxyproc.Process
	Agent               *Process
	// XDSAddr is the agent's xDS server and XDSClient the gRPC client
	// resolving the service through it, on Envoy nodes only.
	XDSAddr   string
	XDSClient *Process
}

// readyPoll is how often the harness re-checks a condition it waits for.
const readyPoll = 100 * time.Millisecond

// StartFleet starts a fleet and waits until every agent is healthy and every
// HAProxy serves blue. On error everything it started is stopped again and
// the error carries the tails of the logs.
func StartFleet(ctx context.Context, o FleetOptions) (f *Fleet, err error) {
	if o.Dir == "" || o.Switchyard == "" || o.Backend == "" {
		return nil, errors.New("fleet: Dir, Switchyard and Backend are required")
	}
	if o.Nodes <= 0 {
		o.Nodes = 1
	}
	if o.Service == "" {
		o.Service = "web"
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Labels == nil {
		o.Labels = func(int) map[string]string { return map[string]string{"region": "eu"} }
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = time.Second
	}
	if o.Resync == 0 {
		o.Resync = 30 * time.Second
	}
	f = &Fleet{
		opts:  o,
		log:   slog.New(slog.NewTextHandler(o.Log, nil)),
		ports: ports,
		// No keep-alive: every sample is a new connection, so what it
		// measures is HAProxy's choice of server, not a reused session.
		client: &http.Client{
			Timeout:   5 * time.Second,
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
		},
	}
	defer func() {
		if err != nil {
			tails := f.LogTails(30)
			if cerr := f.Close(); cerr != nil {
				err = fmt.Errorf("%w\nshutdown after the failure: %v", err, cerr)
			}
			err = fmt.Errorf("%w\n%s", err, tails)
			f = nil
		}
	}()
	if o.NATS.URL != "" {
		f.NATSURL, f.Bus = o.NATS.URL, o.NATS
	} else if err := f.startDev(ctx); err != nil {
		return f, err
	}
	for i := range o.Nodes {
		n, err := f.startNode(ctx, i)
		if n != nil {
			f.Nodes = append(f.Nodes, n)
		}
		if err != nil {
			return f, err
		}
	}
	for i, n := range f.Nodes {
		if err := f.WaitAgentHealthy(ctx, i); err != nil {
			return f, err
		}
		if err := f.WaitServing(ctx, i, Blue, 5); err != nil {
			return f, fmt.Errorf("%s: %w", n.ID, err)
		}
	}
	f.log.Info("fleet ready", "nodes", len(f.Nodes), "nats", f.NATSURL, "coordinator", f.CoordinatorHTTP)
	return f, nil
}

func (f *Fleet) startDev(ctx context.Context) error {
	httpPort, err := f.ports.free()
	if err != nil {
		return err
	}
	raftPort, err := f.ports.free()
	if err != nil {
		return err
	}
	f.CoordinatorHTTP = "127.0.0.1:" + strconv.Itoa(httpPort)
	dataDir := filepath.Join(f.opts.Dir, "dev")
	f.Dev, err = StartProcess(ProcessSpec{
		Name: "dev",
		Path: f.opts.Switchyard,
		Args: append([]string{"dev",
			"--data-dir", dataDir,
			// dev listens on NATS's well-known 4222 by default; a test
			// fleet must never take a fixed port.
			"--nats-port", "0",
			"--http-addr", f.CoordinatorHTTP,
			"--raft-addr", "127.0.0.1:" + strconv.Itoa(raftPort),
		}, f.opts.DevArgs...),
		LogDir: filepath.Join(f.opts.Dir, "logs"),
	})
	if err != nil {
		return err
	}
	printed := map[string]string{}
	for _, key := range []string{"SWITCHYARD_NATS", "SWITCHYARD_NATS_CA", "SWITCHYARD_AUTH_DIR"} {
		line, err := f.Dev.WaitForStdoutLine(ctx, key+"=")
		if err != nil {
			return err
		}
		printed[key] = strings.TrimPrefix(line, key+"=")
	}
	f.NATSURL = printed["SWITCHYARD_NATS"]
	// dev runs with TLS and authorization on, always.
	if !strings.HasPrefix(f.NATSURL, "tls://127.0.0.1:") {
		return fmt.Errorf("dev printed SWITCHYARD_NATS=%s; want tls://127.0.0.1:PORT", f.NATSURL)
	}
	f.Bus = Bus{URL: f.NATSURL, CA: printed["SWITCHYARD_NATS_CA"], AuthDir: printed["SWITCHYARD_AUTH_DIR"]}
	line, err := f.Dev.WaitForStdoutLine(ctx, "SWITCHYARD_TRUST_KEY=")
	if err != nil {
		return err
	}
	f.opts.TrustKeys = append(f.opts.TrustKeys, strings.TrimPrefix(line, "SWITCHYARD_TRUST_KEY="))
	f.log.Info("dev started", "pid", f.Dev.Pid(), "nats", f.NATSURL)
	return f.waitHTTP200(ctx, "coordinator", "http://"+f.CoordinatorHTTP+"/healthz", f.Dev)
}

func (f *Fleet) startNode(ctx context.Context, i int) (*Node, error) {
	id := fmt.Sprintf("edge-%d", i+1)
	n := &Node{ID: id, Labels: f.opts.Labels(i), Dir: filepath.Join(f.opts.Dir, id)}
	logDir := filepath.Join(f.opts.Dir, "logs")
	addrs := make([]string, 3) // blue, green, agent HTTP
	for j := range addrs {
		p, err := f.ports.free()
		if err != nil {
			return n, err
		}
		addrs[j] = "127.0.0.1:" + strconv.Itoa(p)
	}
	blueAddr, greenAddr := addrs[0], addrs[1]
	n.BlueAddr, n.GreenAddr = blueAddr, greenAddr
	n.AgentHTTP = addrs[2]

	var err error
	for _, b := range []struct {
		name string
		addr string
		proc **Process
	}{{Blue, blueAddr, &n.Blue}, {Green, greenAddr, &n.Green}} {
		*b.proc, err = StartProcess(ProcessSpec{
			Name:   id + "-" + b.name,
			Path:   f.opts.Backend,
			Args:   []string{"--addr", b.addr, "--name", b.name, "--node", id},
			LogDir: logDir,
		})
		if err != nil {
			return n, err
		}
		if err := f.waitHTTP200(ctx, id+" "+b.name, "http://"+b.addr+"/healthz", *b.proc); err != nil {
			return n, err
		}
	}

	if f.opts.Envoy != nil && f.opts.Envoy(i) {
		return f.startEnvoyNode(ctx, i, n)
	}
	hapDir, err := f.haproxyDir(id)
	if err != nil {
		return n, err
	}
	// Port 0: HAProxy's start picks a free port and retries if another
	// test binary takes it in between.
	n.HAProxy, err = haproxyproc.Start(ctx, haproxyproc.Config{
		Dir:          hapDir,
		FrontendAddr: "127.0.0.1:0",
		Backend:      f.opts.Service,
		Servers: []haproxyproc.Server{
			{Name: Blue, Addr: blueAddr, Weight: 100},
			{Name: Green, Addr: greenAddr, Weight: 0},
		},
		HealthChecks: f.opts.HealthChecks,
	})
	if err != nil {
		return n, fmt.Errorf("%s: start haproxy: %w", id, err)
	}
	n.FrontendAddr = n.HAProxy.FrontendAddr()
	f.log.Info("haproxy started", "node", id, "pid", n.HAProxy.Pid(), "frontend", n.FrontendAddr, "socket", n.HAProxy.SocketPath())

	n.AgentConfig = filepath.Join(n.Dir, "agent.yaml")
	nodeBus := f.Bus
	if f.opts.NodeNATS != nil {
		nodeBus = f.opts.NodeNATS(i)
	}
	sec, err := nodeBus.Security(bus.RoleAgent, id)
	if err != nil {
		return n, err
	}
	if err := writeAgentConfig(n.AgentConfig, agentConfig{
		Node:       id,
		Labels:     n.Labels,
		NATS:       nodeBus.URL,
		NATSClient: agentNATSClient{Creds: sec.Creds, CA: sec.CA, JetStreamDomain: sec.JetStreamDomain},
		StateDir:   filepath.Join(n.Dir, "state"),
		HTTPAddr:   n.AgentHTTP,
		Heartbeat:  f.opts.Heartbeat.String(),
		Resync:     f.opts.Resync.String(),
		Trust:      agentTrust{Keys: f.opts.TrustKeys},
		Services: map[string]agentService{f.opts.Service: {HAProxy: &agentHAProxy{
			Socket:  n.HAProxy.SocketPath(),
			Backend: f.opts.Service,
			Servers: map[string]string{Blue: Blue, Green: Green},
		}}},
		Hooks:      hooksFor(f.opts.Hooks, i),
		LocalGuard: f.opts.LocalGuard,
	}); err != nil {
		return n, err
	}
	n.Agent, err = StartProcess(ProcessSpec{
		Name:   id + "-agent",
		Path:   f.opts.Switchyard,
		Args:   []string{"agent", "--config", n.AgentConfig},
		LogDir: logDir,
	})
	if err != nil {
		return n, err
	}
	f.log.Info("agent started", "node", id, "pid", n.Agent.Pid(), "http", n.AgentHTTP)
	return n, nil
}

func hooksFor(h func(int) map[string]AgentHook, i int) map[string]AgentHook {
	if h == nil {
		return nil
	}
	return h(i)
}

// haproxyDir returns a directory for a node's HAProxy whose admin socket path
// fits HAProxy's limit (97 bytes); a deep temp dir (long test names, a long
// TMPDIR) falls back to a short directory of its own, removed by Close.
func (f *Fleet) haproxyDir(id string) (string, error) {
	dir := filepath.Join(f.opts.Dir, id, "hap")
	if len(haproxyproc.Config{Dir: dir}.AdminSocket()) <= 90 {
		return dir, nil
	}
	if f.sockRoot == "" {
		root, err := os.MkdirTemp("/tmp", "sy")
		if err != nil {
			return "", err
		}
		f.sockRoot = root
	}
	return filepath.Join(f.sockRoot, id), nil
}

// agentConfig mirrors the agent's YAML config; marshalling it rather than
// printing text keeps quoting right for any path.
type agentConfig struct {
	Node       string                  `yaml:"node"`
	Labels     map[string]string       `yaml:"labels,omitempty"`
	NATS       string                  `yaml:"nats"`
	NATSClient agentNATSClient         `yaml:"natsClient,omitempty"`
	StateDir   string                  `yaml:"stateDir"`
	HTTPAddr   string                  `yaml:"httpAddr"`
	Heartbeat  string                  `yaml:"heartbeat"`
	Resync     string                  `yaml:"resync"`
	Services   map[string]agentService `yaml:"services"`
	Trust      agentTrust              `yaml:"trust"`
	Hooks      map[string]AgentHook    `yaml:"hooks,omitempty"`
	LocalGuard map[string]string       `yaml:"localGuard,omitempty"`
}

type agentNATSClient struct {
	Creds           string `yaml:"creds,omitempty"`
	CA              string `yaml:"ca,omitempty"`
	JetStreamDomain string `yaml:"jetstreamDomain,omitempty"`
}

type agentTrust struct {
	Keys []string `yaml:"keys"`
}

type agentService struct {
	HAProxy *agentHAProxy `yaml:"haproxy,omitempty"`
	Envoy   *agentEnvoy   `yaml:"envoy,omitempty"`
}

type agentHAProxy struct {
	Socket  string            `yaml:"socket"`
	Backend string            `yaml:"backend"`
	Servers map[string]string `yaml:"servers"`
}

func writeAgentConfig(path string, c agentConfig) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// waitHTTP200 polls url until it answers 200, failing early if proc exits.
func (f *Fleet) waitHTTP200(ctx context.Context, what, url string, proc *Process) error {
	err := Poll(ctx, readyPoll, func(ctx context.Context) error {
		if proc != nil && !proc.Running() {
			if err := proc.Stop(); err != nil {
				return Permanent(err)
			}
			return Permanent(fmt.Errorf("%s exited with status 0", proc.Name()))
		}
		code, body, err := f.httpGet(ctx, url)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %s", url, code, strings.TrimSpace(body))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s not healthy: %w", what, err)
	}
	return nil
}

func (f *Fleet) httpGet(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b), err
}

// WaitAgentHealthy polls node i's agent /healthz until it answers 200.
func (f *Fleet) WaitAgentHealthy(ctx context.Context, i int) error {
	n := f.Nodes[i]
	return f.waitHTTP200(ctx, n.ID+" agent", "http://"+n.AgentHTTP+"/healthz", n.Agent)
}

// Get sends one real HTTP request through node i's HAProxy and returns the
// backend that answered. Anything but a 200 from that node's own blue or
// green is an error.
func (f *Fleet) Get(ctx context.Context, i int) (string, error) {
	n := f.Nodes[i]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.FrontendAddr+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s: %w", n.ID, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	backend := resp.Header.Get("X-Backend")
	if resp.StatusCode != http.StatusOK {
		return backend, fmt.Errorf("%s: GET / answered %s by %q: %s", n.ID, resp.Status, backend, strings.TrimSpace(string(body)))
	}
	if node := resp.Header.Get("X-Node"); node != n.ID {
		return backend, fmt.Errorf("%s: answer came from node %q's backend", n.ID, node)
	}
	return backend, nil
}

// SampleError is the key Sample counts failed requests under.
const SampleError = "error"

// Sample sends n requests through node i's HAProxy and counts the answers by
// backend name; failed requests count under SampleError.
func (f *Fleet) Sample(ctx context.Context, i, n int) map[string]int {
	counts := map[string]int{}
	for range n {
		b, err := f.Get(ctx, i)
		if err != nil {
			b = SampleError
		}
		counts[b]++
	}
	return counts
}

// WaitServing polls until n requests in a row through node i's HAProxy are
// all answered by backend.
func (f *Fleet) WaitServing(ctx context.Context, i int, backend string, n int) error {
	return Poll(ctx, readyPoll, func(ctx context.Context) error {
		got := f.Sample(ctx, i, n)
		if got[backend] != n {
			return fmt.Errorf("%s: %d requests answered %v, want all %s", f.Nodes[i].ID, n, got, backend)
		}
		return nil
	})
}

// WaitAllServing is WaitServing on every node.
func (f *Fleet) WaitAllServing(ctx context.Context, backend string, n int) error {
	for i := range f.Nodes {
		if err := f.WaitServing(ctx, i, backend, n); err != nil {
			return err
		}
	}
	return nil
}

// Run runs a switchyard client verb against the fleet's NATS; a non-zero
// exit is a result (see RunCLI).
func (f *Fleet) Run(ctx context.Context, args ...string) (*CLIResult, error) {
	env, err := f.Bus.CLIEnv()
	if err != nil {
		return nil, err
	}
	return RunCLI(ctx, f.opts.Switchyard, env, append(args, "--nats", f.NATSURL)...)
}

// Connect opens a connection to the fleet's bus for a test to watch and
// poke at it, with a coordinator's rights (the most an identity on the bus
// has).
func (f *Fleet) Connect(opts ...nats.Option) (*nats.Conn, error) {
	return f.Bus.Connect(bus.RoleCoordinator, "integration-test", opts...)
}

func (f *Fleet) runOK(ctx context.Context, args ...string) (*CLIResult, error) {
	res, err := f.Run(ctx, args...)
	if err != nil {
		return res, err
	}
	if res.ExitCode != 0 {
		return res, &CLIError{Result: res}
	}
	return res, nil
}

// Apply runs `switchyard rollout apply -f specPath`; a refusal is a
// *CLIError.
func (f *Fleet) Apply(ctx context.Context, specPath string) (*CLIResult, error) {
	return f.runOK(ctx, "rollout", "apply", "-f", specPath, "--timeout", "30s")
}

// Abort runs `switchyard rollout abort name --reason reason`.
func (f *Fleet) Abort(ctx context.Context, name, reason string) (*CLIResult, error) {
	args := []string{"rollout", "abort", name}
	if reason != "" {
		args = append(args, "--reason", reason)
	}
	return f.runOK(ctx, args...)
}

// Status runs `switchyard rollout status [name] -o json` and decodes it;
// name "" asks for every rollout.
func (f *Fleet) Status(ctx context.Context, name string) (*sv1.RolloutsAnswer, error) {
	args := []string{"rollout", "status"}
	if name != "" {
		args = append(args, name)
	}
	res, err := f.runOK(ctx, append(args, "-o", "json")...)
	if err != nil {
		return nil, err
	}
	var ans sv1.RolloutsAnswer
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(res.Stdout), &ans); err != nil {
		return nil, fmt.Errorf("decode `switchyard %s` output as RolloutsAnswer: %w\n%s", strings.Join(res.Args, " "), err, res.Stdout)
	}
	return &ans, nil
}

// WaitRollout polls `rollout status name` until cond accepts the rollout's
// view; cond's error says what is still missing.
func (f *Fleet) WaitRollout(ctx context.Context, name string, cond func(*sv1.RolloutView) error) (*sv1.RolloutView, error) {
	var view *sv1.RolloutView
	err := Poll(ctx, readyPoll*3, func(ctx context.Context) error {
		ans, err := f.Status(ctx, name)
		if err != nil {
			return err
		}
		for _, v := range ans.GetRollouts() {
			if v.GetRollout().GetId() == name {
				view = v
				return cond(v)
			}
		}
		return fmt.Errorf("rollout %q not in status (got %d rollouts)", name, len(ans.GetRollouts()))
	})
	return view, err
}

// Converged is a WaitRollout condition: the rollout is in one of phases and
// every node of the fleet reports its generation.
func (f *Fleet) Converged(phases ...sv1.RolloutPhase) func(*sv1.RolloutView) error {
	return func(v *sv1.RolloutView) error {
		r := v.GetRollout()
		if !slices.Contains(phases, r.GetPhase()) {
			return fmt.Errorf("rollout %s in phase %s, want one of %v", r.GetId(), r.GetPhase(), phases)
		}
		if int(v.GetConverged()) != len(f.Nodes) {
			return fmt.Errorf("rollout %s generation %d: %d/%d nodes converged (%s)", r.GetId(), r.GetGeneration(), v.GetConverged(), len(f.Nodes), NodeSummary(v))
		}
		return nil
	}
}

// NodeSummary renders the nodes of a rollout view in one line, for messages.
func NodeSummary(v *sv1.RolloutView) string {
	var parts []string
	for _, n := range v.GetNodes() {
		parts = append(parts, fmt.Sprintf("%s gen=%d weights=%s driver=%s stale=%v seen=%.1fs ago %s", n.GetNode(), n.GetAppliedGeneration(), Weights(n), n.GetDriver(), n.GetStale(), n.GetSecondsSinceSeen(), n.GetMessage()))
	}
	return strings.Join(parts, "; ")
}

// SigningKey is the private key file `switchyard dev` signs with; empty
// with an external control plane.
func (f *Fleet) SigningKey() string {
	if f.Dev == nil {
		return ""
	}
	return filepath.Join(f.opts.Dir, "dev", "keys", "coordinator.key")
}

// CoordinatorMetrics fetches the coordinator's /metrics text.
func (f *Fleet) CoordinatorMetrics(ctx context.Context) (string, error) {
	if f.CoordinatorHTTP == "" {
		return "", errors.New("fleet runs against an external control plane; ask its coordinators")
	}
	return f.metrics(ctx, f.CoordinatorHTTP)
}

// AgentMetrics fetches node i's agent /metrics text.
func (f *Fleet) AgentMetrics(ctx context.Context, i int) (string, error) {
	return f.metrics(ctx, f.Nodes[i].AgentHTTP)
}

func (f *Fleet) metrics(ctx context.Context, addr string) (string, error) {
	code, body, err := f.httpGet(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("GET http://%s/metrics: %d", addr, code)
	}
	return body, nil
}

// SetTrustKeys rewrites node i's agent config to trust keys; the agent
// reads it on its next start (StopAgent, StartAgent).
func (f *Fleet) SetTrustKeys(i int, keys []string) error {
	n := f.Nodes[i]
	b, err := os.ReadFile(n.AgentConfig)
	if err != nil {
		return err
	}
	var c agentConfig
	if err := yaml.Unmarshal(b, &c); err != nil {
		return err
	}
	c.Trust.Keys = slices.Clone(keys)
	f.log.Info("agent config now trusts other keys", "node", n.ID, "keys", keys)
	return writeAgentConfig(n.AgentConfig, c)
}

// StopAgent stops node i's agent with SIGTERM, as a restart by its
// supervisor would.
func (f *Fleet) StopAgent(i int) error {
	f.log.Info("stopping agent", "node", f.Nodes[i].ID, "pid", f.Nodes[i].Agent.Pid())
	return f.Nodes[i].Agent.Stop()
}

// KillAgent SIGKILLs node i's agent: a crash, no chance to clean up.
func (f *Fleet) KillAgent(i int) error {
	f.log.Info("killing agent", "node", f.Nodes[i].ID, "pid", f.Nodes[i].Agent.Pid())
	return f.Nodes[i].Agent.Kill()
}

// StartAgent starts node i's agent again with the same config after it
// exited, and waits until it is healthy.
func (f *Fleet) StartAgent(ctx context.Context, i int) error {
	n := f.Nodes[i]
	if err := n.Agent.Start(); err != nil {
		return err
	}
	f.log.Info("agent started again", "node", n.ID, "pid", n.Agent.Pid())
	return f.WaitAgentHealthy(ctx, i)
}

// Processes lists every process the harness supervises, dev first. HAProxy
// is not among them: haproxyproc supervises it.
func (f *Fleet) Processes() []*Process {
	var ps []*Process
	if f.Dev != nil {
		ps = append(ps, f.Dev)
	}
	for _, n := range f.Nodes {
		for _, p := range []*Process{n.Agent, n.XDSClient, n.Blue, n.Green} {
			if p != nil {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// LogTails returns the last n lines of every process's logs.
func (f *Fleet) LogTails(n int) string {
	var b strings.Builder
	for _, p := range f.Processes() {
		b.WriteString(p.Tail(n))
	}
	for _, nd := range f.Nodes {
		if nd.HAProxy == nil {
			continue
		}
		if lines := strings.Split(strings.TrimSpace(nd.HAProxy.Stderr()), "\n"); len(lines) > 0 && lines[0] != "" {
			if len(lines) > n {
				lines = lines[len(lines)-n:]
			}
			fmt.Fprintf(&b, "==> %s haproxy stderr (last %d lines) <==\n%s\n", nd.ID, len(lines), strings.Join(lines, "\n"))
		}
	}
	return b.String()
}

// RaceReports collects data race reports from race-built children.
func (f *Fleet) RaceReports() []string {
	var out []string
	for _, p := range f.Processes() {
		out = append(out, p.RaceReports()...)
	}
	return out
}

// Close stops every process, agents first (so none of them sees its proxy
// vanish and starts reporting it), then proxies and backends, then the
// coordinator. It is safe to call more than once and returns the same
// result: the unclean exits it saw.
func (f *Fleet) Close() error {
	f.closeOnce.Do(func() {
		var errs []error
		stopAll := func(stops []func() error) {
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, stop := range stops {
				wg.Go(func() {
					if err := stop(); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
		}
		var agents, proxies []func() error
		for _, n := range f.Nodes {
			if n.Agent != nil {
				agents = append(agents, n.Agent.Stop)
			}
			if n.HAProxy != nil {
				id, hp := n.ID, n.HAProxy
				proxies = append(proxies, func() error {
					if err := hp.Stop(); err != nil {
						return fmt.Errorf("%s haproxy: %w", id, err)
					}
					return nil
				})
			}
			for _, b := range []*Process{n.XDSClient, n.Blue, n.Green} {
				if b != nil {
					proxies = append(proxies, b.Stop)
				}
			}
		}
		stopAll(agents)
		stopAll(proxies)
		if f.Dev != nil {
			stopAll([]func() error{f.Dev.Stop})
		}
		if f.sockRoot != "" {
			errs = append(errs, os.RemoveAll(f.sockRoot))
		}
		f.closeErr = errors.Join(errs...)
		f.log.Info("fleet stopped", "err", f.closeErr)
	})
	return f.closeErr
}

// ports hands out the ports of every fleet and cluster of this process, so
// a fleet and the cluster it runs against never get the same one.
var ports = &portSet{seen: map[int]bool{}}

// portSet hands out free 127.0.0.1 ports, never the same one twice: the
// kernel may offer a port again right after we closed the probe listener,
// before the process meant to bind it has started. The ports come from
// below the kernel's ephemeral range (see internal/freeport), where no
// outgoing connection takes them between the probe and the child's bind.
type portSet struct {
	mu   sync.Mutex
	seen map[int]bool
}

func (s *portSet) free() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range 50 {
		p, err := freeport.Pick()
		if err != nil {
			return 0, err
		}
		if !s.seen[p] {
			s.seen[p] = true
			return p, nil
		}
	}
	return 0, errors.New("no unused free port after 50 tries")
}

// Weights renders a node's reported weights sorted by backend, for messages.
func Weights(v *sv1.NodeView) string {
	keys := slices.Sorted(maps.Keys(v.GetWeights()))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, v.GetWeights()[k])
	}
	return strings.Join(parts, ",")
}

// FreePort returns a free 127.0.0.1 port no fleet or cluster of this
// process has been given, for a process a test starts itself.
func FreePort() (int, error) { return ports.free() }
