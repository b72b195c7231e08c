package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/haproxyproc"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ProcessFleetOptions say what StartProcessFleet builds: many edge nodes as
// separate processes, each an agent with its own NATS identity and its own
// HAProxy, in front of one blue and one green backend they all share. It is
// the lean shape of a fleet for scale runs: per node two processes, not the
// four of StartFleet, and the coordinators and bus are the caller's.
type ProcessFleetOptions struct {
	// Dir holds every node's config, state and logs. Required.
	Dir string
	// Nodes is the number of edge nodes, named edge-00001…; 1 when zero.
	Nodes int
	// Service is the service every node fronts; "web" when empty.
	Service string
	// Switchyard and Backend are the binaries from BuildBinaries. Required.
	Switchyard, Backend string
	// NATS is the bus (URL required); each agent gets its own agent
	// identity from its auth directory and verifies its CA.
	NATS Bus
	// TrustKeys are the coordinator public keys the agents trust.
	TrustKeys []string
	// Heartbeat, Resync and TelemetryInterval go into every agent's
	// config; the agent's defaults when zero.
	Heartbeat, Resync, TelemetryInterval time.Duration
	// ObserveInterval goes into every agent's config; the agent's default
	// when zero.
	ObserveInterval time.Duration
	// Parallel is how many nodes start at once (each until its agent
	// reports a healthy driver); 8 when zero.
	Parallel int
	// Nice is added to the niceness of every agent and HAProxy, so that on
	// one machine the edge nodes take the CPU the bus and the coordinators
	// leave (in production each node is a host of its own); 0 leaves it.
	Nice int
	// Log receives what the harness is doing; nil drops it.
	Log io.Writer
}

// ProcessFleet is a running fleet started by StartProcessFleet. It watches
// every agent's status on the bus from before the first agent starts.
type ProcessFleet struct {
	opts        ProcessFleetOptions
	log         *slog.Logger
	Blue, Green *Process
	Nodes       []*ProcessNode
	// Applied records the status reports of every node.
	Applied *AppliedLog

	nc       *nats.Conn
	sockRoot string

	closeOnce sync.Once
	closeErr  error
}

// ProcessNode is one edge node of a ProcessFleet.
type ProcessNode struct {
	ID          string
	Dir         string
	AgentConfig string
	HAProxy     *haproxyproc.Process
	Agent       *Process
}

// StartProcessFleet starts the shared backends and every node, and waits
// until each agent has reported its proxy driver healthy. On error
// everything it started is stopped again.
func StartProcessFleet(ctx context.Context, o ProcessFleetOptions) (f *ProcessFleet, err error) {
	if o.Dir == "" || o.Switchyard == "" || o.Backend == "" || o.NATS.URL == "" {
		return nil, errors.New("process fleet: Dir, Switchyard, Backend and NATS.URL are required")
	}
	if o.Nodes <= 0 {
		o.Nodes = 1
	}
	if o.Service == "" {
		o.Service = "web"
	}
	if o.Parallel <= 0 {
		o.Parallel = 8
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	f = &ProcessFleet{opts: o, log: slog.New(slog.NewTextHandler(o.Log, nil)), Applied: newAppliedLog(o.Service)}
	defer func() {
		if err != nil {
			tails := f.logTails(2, 20)
			if cerr := f.Close(); cerr != nil {
				err = fmt.Errorf("%w\nshutdown after the failure: %v", err, cerr)
			}
			err = fmt.Errorf("%w\n%s", err, tails)
			f = nil
		}
	}()
	if f.nc, err = o.NATS.Connect(bus.RoleCoordinator, "process-fleet", nats.Name("process-fleet")); err != nil {
		return f, err
	}
	if _, err := f.nc.Subscribe(bus.StatusAll(), f.Applied.take); err != nil {
		return f, err
	}
	if err := f.nc.Flush(); err != nil {
		return f, err
	}
	if f.sockRoot, err = os.MkdirTemp("/tmp", "syp"); err != nil {
		return f, err
	}
	logDir := filepath.Join(o.Dir, "logs")
	var addrs [2]string
	for i, name := range []string{Blue, Green} {
		p, err := ports.free()
		if err != nil {
			return f, err
		}
		addrs[i] = "127.0.0.1:" + strconv.Itoa(p)
		proc, err := StartProcess(ProcessSpec{Name: name, Path: o.Backend, Args: []string{"--addr", addrs[i], "--name", name, "--node", "shared"}, LogDir: logDir})
		if err != nil {
			return f, err
		}
		if name == Blue {
			f.Blue = proc
		} else {
			f.Green = proc
		}
	}
	f.Nodes = make([]*ProcessNode, o.Nodes)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		next = make(chan int)
	)
	for range o.Parallel {
		wg.Go(func() {
			for i := range next {
				if err := f.startNode(ctx, i, addrs[0], addrs[1]); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for i := range o.Nodes {
		mu.Lock()
		failed := len(errs) > 0
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return f, err
	}
	if err := ctx.Err(); err != nil {
		return f, err
	}
	err = Poll(ctx, readyPoll, func(context.Context) error {
		ready := f.Applied.Healthy()
		for _, n := range f.Nodes {
			if !n.Agent.Running() {
				return Permanent(fmt.Errorf("%s exited: %v", n.Agent.Name(), n.Agent.Stop()))
			}
		}
		if ready < len(f.Nodes) {
			return fmt.Errorf("%d of %d agents reported a healthy driver", ready, len(f.Nodes))
		}
		return nil
	})
	if err != nil {
		return f, err
	}
	f.log.Info("process fleet ready", "nodes", len(f.Nodes))
	return f, nil
}

func (f *ProcessFleet) startNode(ctx context.Context, i int, blue, green string) error {
	id := fmt.Sprintf("edge-%05d", i+1)
	n := &ProcessNode{ID: id, Dir: filepath.Join(f.opts.Dir, id)}
	f.Nodes[i] = n
	var err error
	n.HAProxy, err = haproxyproc.Start(ctx, haproxyproc.Config{
		Dir:          filepath.Join(f.sockRoot, strconv.Itoa(i+1)),
		FrontendAddr: "127.0.0.1:0",
		Backend:      f.opts.Service,
		Servers:      []haproxyproc.Server{{Name: Blue, Addr: blue, Weight: 100}, {Name: Green, Addr: green, Weight: 0}},
	})
	if err != nil {
		return fmt.Errorf("%s: start haproxy: %w", id, err)
	}
	if err := Renice(n.HAProxy.Pid(), f.opts.Nice); err != nil {
		return fmt.Errorf("%s: haproxy: %w", id, err)
	}
	sec, err := f.opts.NATS.Security(bus.RoleAgent, id)
	if err != nil {
		return err
	}
	n.AgentConfig = filepath.Join(n.Dir, "agent.yaml")
	dur := func(d time.Duration) string {
		if d == 0 {
			return ""
		}
		return d.String()
	}
	if err := writeLeanAgentConfig(n.AgentConfig, leanAgentConfig{
		Node:              id,
		Labels:            map[string]string{"region": "eu"},
		NATS:              f.opts.NATS.URL,
		NATSClient:        agentNATSClient{Creds: sec.Creds, CA: sec.CA, JetStreamDomain: sec.JetStreamDomain},
		StateDir:          filepath.Join(n.Dir, "state"),
		Heartbeat:         dur(f.opts.Heartbeat),
		Resync:            dur(f.opts.Resync),
		TelemetryInterval: dur(f.opts.TelemetryInterval),
		ObserveInterval:   dur(f.opts.ObserveInterval),
		Trust:             agentTrust{Keys: f.opts.TrustKeys},
		Services: map[string]agentService{f.opts.Service: {HAProxy: &agentHAProxy{
			Socket:  n.HAProxy.SocketPath(),
			Backend: f.opts.Service,
			Servers: map[string]string{Blue: Blue, Green: Green},
		}}},
	}); err != nil {
		return err
	}
	path, args := f.opts.Switchyard, []string{"agent", "--config", n.AgentConfig}
	if f.opts.Nice != 0 {
		// nice(1) execs the agent: same pid, every thread of it niced.
		path, args = "nice", append([]string{"-n", strconv.Itoa(f.opts.Nice), path}, args...)
	}
	n.Agent, err = StartProcess(ProcessSpec{Name: id + "-agent", Path: path, Args: args, LogDir: filepath.Join(f.opts.Dir, "logs")})
	if err != nil {
		return err
	}
	// One node at a time per worker: hundreds of agents handshaking with
	// the bus at once would measure the stampede, not the fleet.
	return Poll(ctx, 20*time.Millisecond, func(context.Context) error {
		if f.Applied.healthyNode(id) {
			return nil
		}
		if !n.Agent.Running() {
			return Permanent(fmt.Errorf("%s exited: %v\n%s", n.Agent.Name(), n.Agent.Stop(), n.Agent.Tail(10)))
		}
		return fmt.Errorf("%s has not reported a healthy driver", id)
	})
}

// Renice adds inc to the niceness of every thread of process pid (Linux
// keeps niceness per thread; threads it starts later inherit theirs).
func Renice(pid, inc int) error {
	if inc == 0 {
		return nil
	}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid)
		if err != nil {
			return fmt.Errorf("getpriority of thread %d of %d: %w", tid, pid, err)
		}
		// The raw syscall answers 20 - nice.
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, min(20-prio+inc, 19)); err != nil {
			return fmt.Errorf("setpriority of thread %d of %d: %w", tid, pid, err)
		}
	}
	return nil
}

// leanAgentConfig is agentConfig without an HTTP listener (a scale run
// would spend a port per node on it) and with the telemetry interval.
type leanAgentConfig struct {
	Node              string                  `yaml:"node"`
	Labels            map[string]string       `yaml:"labels,omitempty"`
	NATS              string                  `yaml:"nats"`
	NATSClient        agentNATSClient         `yaml:"natsClient,omitempty"`
	StateDir          string                  `yaml:"stateDir"`
	Heartbeat         string                  `yaml:"heartbeat,omitempty"`
	Resync            string                  `yaml:"resync,omitempty"`
	TelemetryInterval string                  `yaml:"telemetryInterval,omitempty"`
	ObserveInterval   string                  `yaml:"observeInterval,omitempty"`
	Services          map[string]agentService `yaml:"services"`
	Trust             agentTrust              `yaml:"trust"`
}

func writeLeanAgentConfig(path string, c leanAgentConfig) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// AgentPids are the agents' process ids, by node.
func (f *ProcessFleet) AgentPids() []int {
	out := make([]int, len(f.Nodes))
	for i, n := range f.Nodes {
		out[i] = n.Agent.Pid()
	}
	return out
}

// HAProxyPids are the HAProxy process ids, by node.
func (f *ProcessFleet) HAProxyPids() []int {
	out := make([]int, len(f.Nodes))
	for i, n := range f.Nodes {
		out[i] = n.HAProxy.Pid()
	}
	return out
}

// logTails returns the last lines of the first k nodes' agent logs.
func (f *ProcessFleet) logTails(k, lines int) string {
	var out string
	for _, n := range f.Nodes {
		if k == 0 {
			break
		}
		if n != nil && n.Agent != nil {
			out += n.Agent.Tail(lines)
			k--
		}
	}
	return out
}

// Close stops every agent (Parallel at a time), then every HAProxy and the
// backends. It is safe to call more than once and returns the unclean
// exits it saw.
func (f *ProcessFleet) Close() error {
	f.closeOnce.Do(func() {
		var (
			mu   sync.Mutex
			errs []error
		)
		note := func(err error) {
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}
		stopAll := func(stops []func() error) {
			sem := make(chan struct{}, max(f.opts.Parallel, 8)*4)
			var wg sync.WaitGroup
			for _, stop := range stops {
				sem <- struct{}{}
				wg.Go(func() {
					defer func() { <-sem }()
					note(stop())
				})
			}
			wg.Wait()
		}
		var agents, proxies []func() error
		for _, n := range f.Nodes {
			if n == nil {
				continue
			}
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
		}
		stopAll(agents)
		for _, b := range []*Process{f.Blue, f.Green} {
			if b != nil {
				proxies = append(proxies, b.Stop)
			}
		}
		stopAll(proxies)
		if f.nc != nil {
			f.nc.Close()
		}
		if f.sockRoot != "" {
			note(os.RemoveAll(f.sockRoot))
		}
		f.closeErr = errors.Join(errs...)
	})
	return f.closeErr
}

// Applied is one node's first report of one generation as applied.
type Applied struct {
	Node       string
	Generation uint64
	// DeliveredAt, VerifiedAt and AppliedAt are the agent's own stamps of
	// the document's arrival, its signature checked and the apply (zero
	// when the status did not carry one); ReportedAt the status's stamp;
	// ReceivedAt when the status reached the harness's subscription (all
	// clocks of one machine).
	DeliveredAt, VerifiedAt, AppliedAt, ReportedAt, ReceivedAt time.Time
}

// AppliedLog records, from the agents' status reports, when each node
// applied each generation of one service, and how many distinct applies of
// the same generation the reports show (a node's applied_at changes only
// when it applies again).
type AppliedLog struct {
	service string

	mu      sync.Mutex
	healthy map[string]bool
	first   map[string]map[uint64]Applied
	stamps  map[string]map[uint64]map[time.Time]bool
	bad     int
}

func newAppliedLog(service string) *AppliedLog {
	return &AppliedLog{service: service, healthy: map[string]bool{}, first: map[string]map[uint64]Applied{}, stamps: map[string]map[uint64]map[time.Time]bool{}}
}

func (l *AppliedLog) take(m *nats.Msg) {
	received := time.Now()
	var st sv1.AgentStatus
	if err := proto.Unmarshal(m.Data, &st); err != nil {
		l.mu.Lock()
		l.bad++
		l.mu.Unlock()
		return
	}
	for _, s := range st.GetServices() {
		if s.GetService() != l.service {
			continue
		}
		node, gen := st.GetNode(), s.GetAppliedGeneration()
		l.mu.Lock()
		if s.GetDriver() == sv1.DriverHealth_DRIVER_HEALTH_OK {
			l.healthy[node] = true
		}
		tm := s.GetApplyTiming()
		if gen > 0 && tm.GetGeneration() == gen && tm.GetAppliedAt() != nil {
			if l.first[node] == nil {
				l.first[node] = map[uint64]Applied{}
				l.stamps[node] = map[uint64]map[time.Time]bool{}
			}
			if _, ok := l.first[node][gen]; !ok {
				l.first[node][gen] = Applied{Node: node, Generation: gen, AppliedAt: tm.GetAppliedAt().AsTime(),
					DeliveredAt: stamp(tm.GetDeliveredAt()), VerifiedAt: stamp(tm.GetVerifiedAt()),
					ReportedAt: st.GetAt().AsTime(), ReceivedAt: received}
				l.stamps[node][gen] = map[time.Time]bool{}
			}
			l.stamps[node][gen][tm.GetAppliedAt().AsTime()] = true
		}
		l.mu.Unlock()
	}
}

// stamp is ts as a time, zero when it is absent.
func stamp(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

func (l *AppliedLog) healthyNode(node string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.healthy[node]
}

// Healthy is how many nodes have reported a healthy proxy driver.
func (l *AppliedLog) Healthy() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.healthy)
}

// Undecodable is how many status messages did not decode.
func (l *AppliedLog) Undecodable() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bad
}

// Generation returns each node's first report of gen as applied, and the
// nodes that have not reported it yet.
func (l *AppliedLog) Generation(nodes []string, gen uint64) (got []Applied, missing []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range nodes {
		if a, ok := l.first[n][gen]; ok {
			got = append(got, a)
		} else {
			missing = append(missing, n)
		}
	}
	return got, missing
}

// Applies is how many distinct applies of gen node's reports show.
func (l *AppliedLog) Applies(node string, gen uint64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.stamps[node][gen])
}

// NodeIDs are the fleet's node ids, in order.
func (f *ProcessFleet) NodeIDs() []string {
	out := make([]string, len(f.Nodes))
	for i, n := range f.Nodes {
		out[i] = n.ID
	}
	return out
}
