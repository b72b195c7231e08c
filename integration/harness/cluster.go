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

	"github.com/switchyard/switchyard/coordinator"
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
	// NATSURL is the bus every coordinator connects to. Required.
	NATSURL string
	// Log receives what the harness is doing, one line per step; nil drops it.
	Log io.Writer
	// LogLevel is the coordinators' --log-level; info when empty.
	LogLevel string
}

// Coordinator is one `switchyard coordinator` process of a Cluster. Its
// addresses and data directory stay the same across restarts, as they
// would under systemd.
type Coordinator struct {
	*Process
	ID       string
	RaftAddr string
	HTTPAddr string
	DataDir  string
}

// Cluster is a Raft cluster of `switchyard coordinator` processes formed with
// --bootstrap-expect and --retry-join, on a bus the caller runs.
type Cluster struct {
	opts         ClusterOptions
	log          *slog.Logger
	Coordinators []*Coordinator
	client       *http.Client

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
	if o.Dir == "" || o.Switchyard == "" || o.NATSURL == "" {
		return nil, errors.New("cluster: Dir, Switchyard and NATSURL are required")
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
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}},
	}
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
		c.Coordinators = append(c.Coordinators, co)
	}
	for _, co := range c.Coordinators {
		args := []string{"coordinator",
			"--node-id", co.ID,
			"--data-dir", co.DataDir,
			"--raft-addr", co.RaftAddr,
			"--http-addr", co.HTTPAddr,
			"--nats", o.NATSURL,
			"--bootstrap-expect", strconv.Itoa(o.Size),
			"--log-level", o.LogLevel,
		}
		for _, other := range c.Coordinators {
			args = append(args, "--retry-join", other.HTTPAddr)
		}
		co.Process, err = StartProcess(ProcessSpec{
			Name: co.ID, Path: o.Switchyard, Args: args, LogDir: filepath.Join(o.Dir, "logs"),
		})
		if err != nil {
			return c, err
		}
		c.log.Info("coordinator started", "id", co.ID, "pid", co.Pid(), "raft", co.RaftAddr, "http", co.HTTPAddr)
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
	m, err := coordinator.ClusterMembers(ctx, c.Coordinators[i].HTTPAddr)
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
	healthz := "http://" + co.HTTPAddr + "/healthz"
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
	u := "http://" + c.Coordinators[i].HTTPAddr + "/v1/rollouts?stale=true"
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
	u := "http://" + c.Coordinators[i].HTTPAddr + "/metrics"
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

// Close stops every coordinator (thawing a frozen one first) and returns the
// unclean exits it saw. It is safe to call more than once.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.StopAll()
	})
	return c.closeErr
}
