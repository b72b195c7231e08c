package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/faultproxy"
	"github.com/switchyard/switchyard/internal/certs"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// ClusterOptions say what StartCluster builds.
type ClusterOptions struct {
	// Dir holds every coordinator's data directory and logs. Required.
	Dir string
	// Size is the number of coordinators, named c1..cN; 3 when zero.
	Size int
	// Switchyard is the binary from BuildBinaries. Required.
	Switchyard string
	// NATS is the bus every coordinator connects to (URL required); each
	// coordinator gets its own credentials from its auth directory.
	NATS Bus
	// PlainCluster turns mutual TLS between the coordinators off; by
	// default the harness makes a cluster CA and a certificate each.
	PlainCluster bool
	// Log receives what the harness is doing, one line per step; nil drops it.
	Log io.Writer
	// LogLevel is the coordinators' --log-level; info when empty.
	LogLevel string
	// SigningKey is the coordinators' --signing-key; when empty a new key is
	// made in Dir/keys (see Cluster.TrustKey).
	SigningKey string
	// SigningValidity is the coordinators' --signing-validity; the default
	// when zero.
	SigningValidity time.Duration
	// RaftProxies puts a fault proxy (integration/faultproxy) in front of
	// each coordinator's Raft port and starts the coordinator with
	// --raft-advertise set to it, so every Raft connection between peers
	// goes through a proxy (TCP passthrough: mutual TLS still runs end to
	// end) and tests can partition a coordinator (PartitionRaft).
	RaftProxies bool
	// Pprof starts every coordinator with --pprof-addr on a loopback port
	// of its own (Coordinator.PprofAddr).
	Pprof bool
}

// Coordinator is one `switchyard coordinator` process of a Cluster. Its
// addresses and data directory stay the same across restarts, as they
// would under systemd.
type Coordinator struct {
	*Process
	ID       string
	RaftAddr string
	// RaftAdvertise is the address its peers dial: its Raft proxy's with
	// ClusterOptions.RaftProxies, else RaftAddr.
	RaftAdvertise string
	HTTPAddr      string
	DataDir       string
	// RaftProxy is the proxy in front of RaftAddr; nil without
	// ClusterOptions.RaftProxies.
	RaftProxy *faultproxy.Proxy
	// PprofAddr serves the coordinator's /debug/pprof/ with
	// ClusterOptions.Pprof; empty without.
	PprofAddr string
}

// Cluster is a Raft cluster of `switchyard coordinator` processes formed with
// --bootstrap-expect and --retry-join, on a bus the caller runs.
type Cluster struct {
	opts         ClusterOptions
	log          *slog.Logger
	Coordinators []*Coordinator
	client       *http.Client
	// API talks to the coordinators' HTTP API, over mutual TLS unless
	// PlainCluster.
	API *coordinator.ClusterClient
	// CA is the cluster CA's directory; empty with PlainCluster.
	CA     *certs.CA
	scheme string

	// procMu guards the first assignment of each Coordinator.Process,
	// which the Raft proxies read as connections arrive.
	procMu sync.Mutex

	closeOnce sync.Once
	closeErr  error
}

// membersTimeout bounds one ask for the members: a coordinator frozen by a
// test must not stall a poll for long.
const membersTimeout = 2 * time.Second

// StartCluster starts the coordinators and waits until they have elected a
// leader and every one of them sees all of them as members. On error
// everything it started is stopped again and the error carries the tails of
// the logs.
func StartCluster(ctx context.Context, o ClusterOptions) (c *Cluster, err error) {
	if o.Dir == "" || o.Switchyard == "" || o.NATS.URL == "" {
		return nil, errors.New("cluster: Dir, Switchyard and NATS.URL are required")
	}
	if o.Size <= 0 {
		o.Size = 3
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	c = &Cluster{
		opts:   o,
		log:    slog.New(slog.NewTextHandler(o.Log, nil)),
		API:    &coordinator.ClusterClient{},
		scheme: "http://",
	}
	transport := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	if !o.PlainCluster {
		if c.CA, err = certs.NewCA(filepath.Join(o.Dir, "cluster-tls"), "Switchyard cluster test CA"); err != nil {
			return nil, err
		}
		// The harness acts as an administrator with a certificate of
		// its own from the cluster CA.
		admin, err := c.CA.Issue("admin", []string{"127.0.0.1"})
		if err != nil {
			return nil, err
		}
		if c.API.TLS, err = coordinator.ClusterClientTLS(admin); err != nil {
			return nil, err
		}
		transport.TLSClientConfig = c.API.TLS
		c.scheme = "https://"
	}
	c.client = &http.Client{Timeout: 5 * time.Second, Transport: transport}
	defer func() {
		if err != nil {
			tails := c.LogTails(30)
			if cerr := c.Close(); cerr != nil {
				err = fmt.Errorf("%w\nshutdown after the failure: %v", err, cerr)
			}
			err = fmt.Errorf("%w\n%s", err, tails)
			c = nil
		}
	}()
	if o.SigningKey == "" {
		o.SigningKey = filepath.Join(o.Dir, "keys", "coordinator.key")
		if _, err := bus.GenerateSigningKey(o.SigningKey); err != nil {
			return c, err
		}
		c.opts.SigningKey = o.SigningKey
	}
	for i := range o.Size {
		co := &Coordinator{ID: fmt.Sprintf("c%d", i+1)}
		co.DataDir = filepath.Join(o.Dir, co.ID)
		for _, addr := range []*string{&co.RaftAddr, &co.HTTPAddr} {
			p, err := ports.free()
			if err != nil {
				return c, err
			}
			*addr = "127.0.0.1:" + strconv.Itoa(p)
		}
		co.RaftAdvertise = co.RaftAddr
		if o.Pprof {
			p, err := ports.free()
			if err != nil {
				return c, err
			}
			co.PprofAddr = "127.0.0.1:" + strconv.Itoa(p)
		}
		if o.RaftProxies {
			px, err := faultproxy.NewWith(co.RaftAddr, faultproxy.Options{Source: faultproxy.Owner(c.pids)})
			if err != nil {
				return c, err
			}
			co.RaftProxy, co.RaftAdvertise = px, px.Addr()
		}
		c.Coordinators = append(c.Coordinators, co)
	}
	for _, co := range c.Coordinators {
		args := []string{"coordinator",
			"--node-id", co.ID,
			"--data-dir", co.DataDir,
			"--raft-addr", co.RaftAddr,
			"--raft-advertise", co.RaftAdvertise,
			"--http-addr", co.HTTPAddr,
			"--nats", o.NATS.URL,
			"--bootstrap-expect", strconv.Itoa(o.Size),
			"--log-level", o.LogLevel,
			"--signing-key", o.SigningKey,
		}
		if o.SigningValidity > 0 {
			args = append(args, "--signing-validity", o.SigningValidity.String())
		}
		if co.PprofAddr != "" {
			args = append(args, "--pprof-addr", co.PprofAddr)
		}
		sec, err := o.NATS.Security(bus.RoleCoordinator, co.ID)
		if err != nil {
			return c, err
		}
		if sec.Creds != "" {
			args = append(args, "--nats-creds", sec.Creds)
		}
		if sec.CA != "" {
			args = append(args, "--nats-ca", sec.CA)
		}
		// The operator identity the harness's CLI runs with is the
		// cluster's first admin, so it may do everything.
		if admin, err := o.NATS.Creds(bus.RoleOperator, "operator"); err != nil {
			return c, err
		} else if admin != "" {
			args = append(args, "--acl-bootstrap-admin", admin, "--acl-bootstrap-name", "operator")
		}
		if c.CA != nil {
			f, err := c.CA.Issue(co.ID, []string{"127.0.0.1"})
			if err != nil {
				return c, err
			}
			args = append(args, "--cluster-ca", f.CA, "--cluster-cert", f.Cert, "--cluster-key", f.Key)
		}
		for _, other := range c.Coordinators {
			args = append(args, "--retry-join", other.HTTPAddr)
		}
		p, err := StartProcess(ProcessSpec{
			Name: co.ID, Path: o.Switchyard, Args: args, LogDir: filepath.Join(o.Dir, "logs"),
		})
		if err != nil {
			return c, err
		}
		c.procMu.Lock()
		co.Process = p
		c.procMu.Unlock()
		c.log.Info("coordinator started", "id", co.ID, "pid", co.Pid(), "raft", co.RaftAddr, "raft_advertise", co.RaftAdvertise, "http", co.HTTPAddr)
	}
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return c, err
	}
	err = Poll(ctx, readyPoll, func(ctx context.Context) error {
		for i := range c.Coordinators {
			m, err := c.Members(ctx, i)
			if err != nil {
				return err
			}
			if len(m.Members) != o.Size {
				return fmt.Errorf("%s sees %d members, want %d", m.AnsweredBy, len(m.Members), o.Size)
			}
		}
		return nil
	})
	if err != nil {
		return c, fmt.Errorf("cluster did not form: %w", err)
	}
	c.log.Info("cluster ready", "size", o.Size, "leader", c.Coordinators[leader].ID)
	return c, nil
}

// SwitchSigningKey makes every coordinator's next start sign with key (a
// private key file) and trust the documents of the public keys trusted,
// as step 3 of a key rotation (docs/security.md). Restart them one by one
// (Stop, Start) for it to take effect.
func (c *Cluster) SwitchSigningKey(key string, trusted ...string) {
	for _, co := range c.Coordinators {
		var args []string
		old := co.Args()
		for i := 0; i < len(old); i++ {
			switch old[i] {
			case "--signing-key", "--trusted-key":
				i++ // and its value
				continue
			}
			args = append(args, old[i])
		}
		args = append(args, "--signing-key", key)
		for _, t := range trusted {
			args = append(args, "--trusted-key", t)
		}
		co.SetArgs(args)
	}
	c.opts.SigningKey = key
	c.log.Info("coordinators switched to another signing key for their next start", "key", key, "trusted", trusted)
}

// TrustKeyPrivate is the coordinators' signing key file, which survives
// the loss of their data directories.
func (c *Cluster) TrustKeyPrivate() string { return c.opts.SigningKey }

// TrustKey is the public key file of the coordinators' signing key, for the
// agents' trust.keys.
func (c *Cluster) TrustKey() string { return c.opts.SigningKey + ".pub" }

// ChangeFlags are the flags a CLI cluster change (remove-peer,
// raise-epoch) needs: the cluster CA and a certificate it signed. None for
// a cluster without TLS.
func (c *Cluster) ChangeFlags() ([]string, error) {
	if c.CA == nil {
		return nil, nil
	}
	f, err := c.CA.Issue("operator", []string{"127.0.0.1"})
	if err != nil {
		return nil, err
	}
	return []string{"--cluster-ca", f.CA, "--cluster-cert", f.Cert, "--cluster-key", f.Key}, nil
}

// HTTPAddrs are the coordinators' HTTP addresses, in order.
func (c *Cluster) HTTPAddrs() []string {
	out := make([]string, len(c.Coordinators))
	for i, co := range c.Coordinators {
		out[i] = co.HTTPAddr
	}
	return out
}

// Index returns the position of the coordinator with id, or -1.
func (c *Cluster) Index(id string) int {
	return slices.IndexFunc(c.Coordinators, func(co *Coordinator) bool { return co.ID == id })
}

// Members asks coordinator i for the cluster as it sees it.
func (c *Cluster) Members(ctx context.Context, i int) (*coordinator.Members, error) {
	ctx, cancel := context.WithTimeout(ctx, membersTimeout)
	defer cancel()
	m, err := c.API.Members(ctx, c.Coordinators[i].HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("%s: members: %w", c.Coordinators[i].ID, err)
	}
	return m, nil
}

// WaitLeader polls the running coordinators, except those in ignore (a
// frozen one would not answer), until they all name the same leader and
// that leader says it leads. It returns the leader's index.
func (c *Cluster) WaitLeader(ctx context.Context, ignore ...int) (int, error) {
	leader := -1
	err := Poll(ctx, 25*time.Millisecond, func(ctx context.Context) error {
		leader = -1
		var name string
		asked := 0
		for i, co := range c.Coordinators {
			if slices.Contains(ignore, i) || !co.Running() {
				continue
			}
			asked++
			m, err := c.Members(ctx, i)
			if err != nil {
				return err
			}
			switch {
			case m.Leader == "":
				return fmt.Errorf("%s knows no leader (%s, term %d)", co.ID, m.State, m.Term)
			case name == "":
				name = m.Leader
			case m.Leader != name:
				return fmt.Errorf("%s follows %s, another follows %s", co.ID, m.Leader, name)
			}
			if m.Leader == co.ID {
				if m.State != "Leader" {
					return fmt.Errorf("%s is named leader but is %s", co.ID, m.State)
				}
				leader = i
			}
		}
		if asked == 0 {
			return Permanent(errors.New("no coordinator is running"))
		}
		if leader < 0 {
			return fmt.Errorf("the leader %q is not among the coordinators asked", name)
		}
		return nil
	})
	if err != nil {
		return -1, fmt.Errorf("no agreed leader: %w", err)
	}
	return leader, nil
}

// WaitReplicated polls until every running coordinator has applied at least
// the leader's commit index as it was when called.
func (c *Cluster) WaitReplicated(ctx context.Context) error {
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	m, err := c.Members(ctx, leader)
	if err != nil {
		return err
	}
	want := m.CommitIndex
	return Poll(ctx, 25*time.Millisecond, func(ctx context.Context) error {
		for i, co := range c.Coordinators {
			if !co.Running() {
				continue
			}
			m, err := c.Members(ctx, i)
			if err != nil {
				return err
			}
			if m.AppliedIndex < want {
				return fmt.Errorf("%s applied %d of %d", co.ID, m.AppliedIndex, want)
			}
		}
		return nil
	})
}

// Kill SIGKILLs coordinator i: a crash, no snapshot, no goodbye.
func (c *Cluster) Kill(i int) error {
	co := c.Coordinators[i]
	c.log.Info("killing coordinator", "id", co.ID, "pid", co.Pid())
	return co.Kill()
}

// Freeze stops coordinator i with SIGSTOP: it keeps its sockets and its
// belief that it leads, but runs no code until Thaw.
func (c *Cluster) Freeze(i int) error {
	co := c.Coordinators[i]
	c.log.Info("freezing coordinator", "id", co.ID, "pid", co.Pid())
	return co.Signal(syscall.SIGSTOP)
}

// Thaw resumes coordinator i after Freeze.
func (c *Cluster) Thaw(i int) error {
	co := c.Coordinators[i]
	c.log.Info("thawing coordinator", "id", co.ID, "pid", co.Pid())
	return co.Signal(syscall.SIGCONT)
}

// Start starts coordinator i again with the same arguments and data
// directory and waits until it answers and knows a leader.
func (c *Cluster) Start(ctx context.Context, i int) error {
	co := c.Coordinators[i]
	if err := co.Process.Start(); err != nil {
		return err
	}
	c.log.Info("coordinator started again", "id", co.ID, "pid", co.Pid())
	return c.waitHealthy(ctx, i)
}

func (c *Cluster) waitHealthy(ctx context.Context, i int) error {
	co := c.Coordinators[i]
	healthz := c.scheme + co.HTTPAddr + "/healthz"
	err := Poll(ctx, 50*time.Millisecond, func(ctx context.Context) error {
		if !co.Running() {
			return Permanent(fmt.Errorf("%s exited: %v", co.ID, co.Stop()))
		}
		code, body, err := c.get(ctx, healthz)
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("GET %s: %d %s", healthz, code, strings.TrimSpace(body))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s not healthy: %w\n%s", co.ID, err, co.Tail(20))
	}
	return nil
}

// StopAll stops every running coordinator at once with SIGTERM, as a
// whole-site restart would, and reports unclean exits.
func (c *Cluster) StopAll() error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, co := range c.Coordinators {
		wg.Go(func() {
			if err := co.Stop(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	c.log.Info("every coordinator stopped")
	return errors.Join(errs...)
}

// StartAll starts every coordinator again from its data directory and
// waits until they agree on a leader.
func (c *Cluster) StartAll(ctx context.Context) error {
	for _, co := range c.Coordinators {
		if err := co.Process.Start(); err != nil {
			return err
		}
		c.log.Info("coordinator started again", "id", co.ID, "pid", co.Pid())
	}
	for i := range c.Coordinators {
		if err := c.waitHealthy(ctx, i); err != nil {
			return err
		}
	}
	_, err := c.WaitLeader(ctx)
	return err
}

// Rollouts reads one rollout (or every one, for name "") from coordinator
// i's own replica through its read API (?stale=true: as the replica has it,
// current or not), without going through the bus: a test can compare the
// replicas one by one.
func (c *Cluster) Rollouts(ctx context.Context, i int, name string) (*sv1.RolloutsAnswer, error) {
	u := c.scheme + c.Coordinators[i].HTTPAddr + "/v1/rollouts?stale=true"
	if name != "" {
		u += "&name=" + url.QueryEscape(name)
	}
	code, body, err := c.get(ctx, u)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %d %s", u, code, strings.TrimSpace(body))
	}
	var ans sv1.RolloutsAnswer
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(body), &ans); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return &ans, nil
}

// Metrics fetches coordinator i's /metrics text.
func (c *Cluster) Metrics(ctx context.Context, i int) (string, error) {
	u := c.scheme + c.Coordinators[i].HTTPAddr + "/metrics"
	code, body, err := c.get(ctx, u)
	if err != nil {
		return "", err
	}
	if code != http.StatusOK {
		return "", fmt.Errorf("GET %s: %d", u, code)
	}
	return body, nil
}

func (c *Cluster) get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	return resp.StatusCode, string(b), err
}

// Processes lists the coordinators' processes.
func (c *Cluster) Processes() []*Process {
	var ps []*Process
	for _, co := range c.Coordinators {
		if co.Process != nil {
			ps = append(ps, co.Process)
		}
	}
	return ps
}

// LogTails returns the last n lines of every coordinator's logs.
func (c *Cluster) LogTails(n int) string {
	var b strings.Builder
	for _, p := range c.Processes() {
		b.WriteString(p.Tail(n))
	}
	return b.String()
}

// RaceReports collects data race reports from race-built coordinators.
func (c *Cluster) RaceReports() []string {
	var out []string
	for _, p := range c.Processes() {
		out = append(out, p.RaceReports()...)
	}
	return out
}

// pids names the coordinators' current processes, for the Raft proxies.
func (c *Cluster) pids() map[int]string {
	c.procMu.Lock()
	defer c.procMu.Unlock()
	out := map[int]string{}
	for _, co := range c.Coordinators {
		if co.Process != nil {
			if pid := co.Pid(); pid != 0 {
				out[pid] = co.ID
			}
		}
	}
	return out
}

// PartitionRaft cuts coordinator i off from its peers over Raft (with
// ClusterOptions.RaftProxies): its proxy blackholes every connection to
// it, and the others' proxies every connection it opens, while it keeps
// running and keeps its bus and HTTP API. HealRaft ends it; what was sent
// meanwhile then arrives, as TCP delivers it after a partition heals.
func (c *Cluster) PartitionRaft(i int) error {
	return c.setRaftAround(i, faultproxy.Mode{Blackhole: true})
}

// HealRaft ends PartitionRaft(i).
func (c *Cluster) HealRaft(i int) error { return c.setRaftAround(i, faultproxy.Pass) }

func (c *Cluster) setRaftAround(i int, m faultproxy.Mode) error {
	co := c.Coordinators[i]
	if co.RaftProxy == nil {
		return fmt.Errorf("%s has no raft proxy: start the cluster with RaftProxies", co.ID)
	}
	c.log.Info("raft partition", "id", co.ID, "mode", fmt.Sprintf("%+v", m))
	co.RaftProxy.SetMode(m)
	for j, other := range c.Coordinators {
		if j != i {
			other.RaftProxy.SetSourceMode(co.ID, m)
		}
	}
	return nil
}

// RaftProxies lists the coordinators' Raft proxies (none without
// ClusterOptions.RaftProxies).
func (c *Cluster) RaftProxies() []*faultproxy.Proxy {
	var out []*faultproxy.Proxy
	for _, co := range c.Coordinators {
		if co.RaftProxy != nil {
			out = append(out, co.RaftProxy)
		}
	}
	return out
}

// Close stops every coordinator (thawing a frozen one first), then their
// Raft proxies, and returns the unclean exits it saw. It is safe to call
// more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		errs := []error{c.StopAll()}
		for _, px := range c.RaftProxies() {
			errs = append(errs, px.Close())
		}
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}
