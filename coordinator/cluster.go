package coordinator

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/names"
)

// Cluster formation follows Consul and Nomad: every coordinator is started
// with the HTTP addresses of the others (--retry-join) and the number of
// coordinators to wait for (--bootstrap-expect). When a node with no Raft
// state finds that many peers and none of them is in a running cluster, it
// bootstraps Raft with all of them; every node that sees the same peers
// bootstraps the same configuration, which Raft accepts. A node that finds a
// running cluster asks its leader to add it instead.

// PeerInfo is what a coordinator says about itself on /v1/cluster/self.
type PeerInfo struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	// Leader is the id of the leader this node follows, empty if none.
	Leader string `json:"leader,omitempty"`
	// Applies names the kinds of Raft entry, added after the first
	// release, that this coordinator applies: a leader writes such an
	// entry of its own accord only once every member says it applies it
	// (an older member would stop at it).
	Applies []string `json:"applies,omitempty"`
}

// Member is one server of the Raft configuration.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
	// Role is what the answering coordinator knows of the member: its own
	// Raft state (leader, follower, candidate) for itself; "leader" for the
	// leader; on the leader, "follower" for a member its heartbeats reach
	// and "unreachable" for one they have failed to reach lately; else
	// "unknown" (only the leader hears from every member).
	Role string `json:"role"`
}

// Members is the cluster as one coordinator sees it.
type Members struct {
	AnsweredBy   string   `json:"answered_by"`
	State        string   `json:"state"`
	Leader       string   `json:"leader"`
	Term         uint64   `json:"term"`
	LastIndex    uint64   `json:"last_index"`
	CommitIndex  uint64   `json:"commit_index"`
	AppliedIndex uint64   `json:"applied_index"`
	Members      []Member `json:"members"`
	// RaftListen and RaftAdvertise are where the answering coordinator's
	// Raft listens and the address it gives its peers to dial.
	RaftListen    string `json:"raft_listen,omitempty"`
	RaftAdvertise string `json:"raft_advertise,omitempty"`
	// Replicas is what this coordinator creates streams and buckets with;
	// Streams are the replica counts the NATS servers have now, by stream
	// (absent when they could not be read).
	Replicas int            `json:"replicas"`
	Streams  map[string]int `json:"streams,omitempty"`
	// Bus is how the NATS servers hold each stream and bucket now (the
	// audit stream too): its leader, and the replicas that are offline or
	// behind after a NATS server died.
	Bus map[string]bus.StreamHealth `json:"bus,omitempty"`
}

// errNotLeaderHTTP is answered to cluster changes sent to a follower.
var errNotLeaderHTTP = errors.New("not the leader")

// errWouldLoseQuorum refuses a membership change after which the voters
// the leader reaches would not be a majority: Raft would commit nothing
// more, not even the change, until the unreachable ones came back.
var errWouldLoseQuorum = errors.New("the change would leave the cluster without a reachable quorum")

// peerFailWindow is how long after its last failed heartbeat a peer counts
// as unreachable: longer than one heartbeat to a peer that does not answer
// can take (the transport's timeout), so a dead peer never drops out of
// the count between two failures, and an entry left from an earlier term
// runs out.
const peerFailWindow = 15 * time.Second

// peerFailures records the leader's failed heartbeats per peer. Raft reports
// every failed heartbeat and, once, the first one that succeeds again.
type peerFailures struct {
	mu     sync.Mutex
	failed map[raft.ServerID]time.Time // last failed heartbeat
}

// observe is a Raft observer filter: it records and lets nothing through.
func (p *peerFailures) observe(o *raft.Observation) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch d := o.Data.(type) {
	case raft.FailedHeartbeatObservation:
		if p.failed == nil {
			p.failed = map[raft.ServerID]time.Time{}
		}
		p.failed[d.PeerID] = time.Now()
	case raft.ResumedHeartbeatObservation:
		delete(p.failed, d.PeerID)
	}
	return false
}

func (p *peerFailures) unreachable(id raft.ServerID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.failed[id]
	return ok && time.Since(at) < peerFailWindow
}

// keepsQuorumWithout refuses removing id from conf when the voters left
// that this leader reaches would not be a majority of them.
func (s *Server) keepsQuorumWithout(conf raft.Configuration, id raft.ServerID) error {
	var voters []raft.ServerID
	var down []string
	for _, srv := range conf.Servers {
		if srv.Suffrage != raft.Voter || srv.ID == id {
			continue
		}
		voters = append(voters, srv.ID)
		if srv.ID != raft.ServerID(s.cfg.NodeID) && s.peerFailures.unreachable(srv.ID) {
			down = append(down, string(srv.ID))
		}
	}
	if quorum := len(voters)/2 + 1; len(voters)-len(down) < quorum {
		return fmt.Errorf("%w: without %s, %d voters would be left and the leader reaches %d of them (not %s); a quorum is %d: bring %s back, or remove it first",
			errWouldLoseQuorum, id, len(voters), len(voters)-len(down), strings.Join(down, ", "), quorum, strings.Join(down, ", "))
	}
	return nil
}

func (s *Server) self() PeerInfo {
	_, leader := s.raft.LeaderWithID()
	return PeerInfo{ID: s.cfg.NodeID, RaftAddr: s.RaftAddr(), Leader: string(leader), Applies: applies()}
}

// MembersView reads the Raft configuration and this node's indexes.
func (s *Server) MembersView() (*Members, error) {
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", err)
	}
	_, leader := s.raft.LeaderWithID()
	stats := s.raft.Stats()
	num := func(k string) uint64 { n, _ := strconv.ParseUint(stats[k], 10, 64); return n }
	m := &Members{
		AnsweredBy: s.cfg.NodeID, State: s.raft.State().String(), Leader: string(leader),
		Term: num("term"), LastIndex: num("last_log_index"), CommitIndex: num("commit_index"), AppliedIndex: num("applied_index"),
		RaftListen: s.RaftListenAddr(), RaftAdvertise: s.RaftAddr(),
	}
	state := s.raft.State()
	for _, srv := range f.Configuration().Servers {
		m.Members = append(m.Members, Member{
			ID: string(srv.ID), RaftAddr: string(srv.Address), Suffrage: srv.Suffrage.String(), Leader: srv.ID == leader,
			Role: s.memberRole(srv.ID, leader, state),
		})
	}
	m.Replicas = int(s.replicas)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if streams, err := bus.StreamReplicas(ctx, s.js); err == nil {
		m.Streams = streams
	} else {
		s.log.Debug("read stream replicas for members", "err", err)
	}
	m.Bus = bus.StreamsHealth(ctx, s.js)
	return m, nil
}

// memberRole is what this coordinator knows of member id: its own state,
// the leader, and, on the leader only, whether its heartbeats reach the
// others. A coordinator that does not lead cannot tell a follower from a
// dead member, so it does not say "follower" for one.
func (s *Server) memberRole(id, leader raft.ServerID, state raft.RaftState) string {
	switch {
	case id == raft.ServerID(s.cfg.NodeID):
		return strings.ToLower(state.String())
	case id == leader:
		return "leader"
	case state != raft.Leader:
		return "unknown"
	case s.peerFailures.unreachable(id):
		return "unreachable"
	}
	return "follower"
}

// addPeer adds (or re-adds under a new address) a voter; leader only.
func (s *Server) addPeer(id, addr string) error {
	if s.raft.State() != raft.Leader {
		return errNotLeaderHTTP
	}
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id && string(srv.Address) == addr {
			return nil // already a member
		}
		if string(srv.ID) == id || string(srv.Address) == addr {
			// A node replaced under the same id or address: drop the old
			// entry so the cluster does not count a ghost toward quorum.
			if err := s.keepsQuorumWithout(f.Configuration(), srv.ID); err != nil {
				return err
			}
			if err := s.raft.RemoveServer(srv.ID, 0, applyTimeout).Error(); err != nil {
				return fmt.Errorf("remove old entry of %s: %w", srv.ID, err)
			}
		}
	}
	if err := s.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, applyTimeout).Error(); err != nil {
		return fmt.Errorf("add voter %s at %s: %w", id, addr, err)
	}
	s.log.Info("coordinator joined the cluster", "peer", id, "raft", addr)
	return nil
}

// removePeer removes a server from the configuration; leader only. A leader
// asked to remove itself hands leadership over first.
func (s *Server) removePeer(id string) error {
	if s.raft.State() != raft.Leader {
		return errNotLeaderHTTP
	}
	if id == s.cfg.NodeID {
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			return fmt.Errorf("hand over leadership before leaving: %w", err)
		}
		return errNotLeaderHTTP
	}
	f := s.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	if err := s.keepsQuorumWithout(f.Configuration(), raft.ServerID(id)); err != nil {
		return err
	}
	if err := s.raft.RemoveServer(raft.ServerID(id), 0, applyTimeout).Error(); err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	s.log.Info("coordinator removed from the cluster", "peer", id)
	return nil
}

// ClusterClient talks to coordinators' HTTP APIs: over HTTPS, presenting
// the cluster certificate, when TLS is set.
type ClusterClient struct {
	// TLS verifies coordinators against the cluster CA and presents a
	// certificate (cluster changes need one); nil speaks plain HTTP.
	TLS *tls.Config

	once sync.Once
	hc   *http.Client
}

// client is made once, with its own copy of TLS: the HTTP/2 transport
// writes its protocols into the config it is given, and the same config
// serves Raft's listener.
func (c *ClusterClient) client() *http.Client {
	c.once.Do(func() {
		c.hc = &http.Client{Timeout: 3 * time.Second}
		if c.TLS != nil {
			c.hc.Transport = &http.Transport{TLSClientConfig: c.TLS.Clone(), ForceAttemptHTTP2: true}
		}
	})
	return c.hc
}

func (c *ClusterClient) url(addr, path string) string {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/") + path
	}
	if c.TLS != nil {
		return "https://" + addr + path
	}
	return "http://" + addr + path
}

func (c *ClusterClient) getJSON(ctx context.Context, addr, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(addr, path), nil)
	if err != nil {
		return err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// postJSON posts in and, when out is not nil, decodes the answer into it.
func (c *ClusterClient) postJSON(ctx context.Context, addr, path string, in, out any) error {
	b, _ := json.Marshal(in)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url(addr, path), bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.client().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%s: %s: %s", addr, resp.Status, strings.TrimSpace(string(msg)))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", addr, err)
	}
	return nil
}

// formCluster runs until this node is part of a cluster: it bootstraps when
// it finds bootstrap-expect peers with no cluster, or joins one it finds.
// It returns at once when the node has Raft state already.
func (s *Server) formCluster(ctx context.Context, hasState bool) {
	if hasState || (s.cfg.BootstrapExpect <= 1 && len(s.cfg.RetryJoin) == 0) {
		return
	}
	for attempt := 0; ; attempt++ {
		done, err := s.tryForm(ctx)
		if done {
			return
		}
		if err != nil {
			s.metrics.joinFailures.Inc()
		}
		if attempt%10 == 0 && err != nil {
			s.log.Info("waiting for the cluster to form", "expect", s.cfg.BootstrapExpect, "retry_join", s.cfg.RetryJoin, "detail", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (s *Server) tryForm(ctx context.Context) (bool, error) {
	if _, leader := s.raft.LeaderWithID(); leader != "" {
		return true, nil // someone added us, or we bootstrapped
	}
	peers := []PeerInfo{{ID: s.cfg.NodeID, RaftAddr: s.RaftAddr()}}
	var running []string
	var errs []error
	for _, addr := range s.cfg.RetryJoin {
		var p PeerInfo
		if err := s.cluster.getJSON(ctx, addr, "/v1/cluster/self", &p); err != nil {
			errs = append(errs, err)
			continue
		}
		if p.ID == s.cfg.NodeID {
			continue // our own address in the list
		}
		if p.Leader != "" {
			running = append(running, addr)
		}
		peers = append(peers, p)
	}
	if len(running) > 0 {
		// A cluster exists: ask each member until the leader adds us.
		for _, addr := range s.cfg.RetryJoin {
			err := s.cluster.postJSON(ctx, addr, "/v1/cluster/join", PeerInfo{ID: s.cfg.NodeID, RaftAddr: s.RaftAddr()}, nil)
			if err == nil {
				s.log.Info("joined the cluster", "via", addr)
				return true, nil
			}
			errs = append(errs, err)
		}
		return false, errors.Join(errs...)
	}
	if s.cfg.BootstrapExpect > 1 && len(peers) >= s.cfg.BootstrapExpect {
		slices.SortFunc(peers, func(a, b PeerInfo) int { return strings.Compare(a.ID, b.ID) })
		var conf raft.Configuration
		for _, p := range peers {
			conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr), Suffrage: raft.Voter})
		}
		err := s.raft.BootstrapCluster(conf).Error()
		if err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return false, fmt.Errorf("bootstrap: %w", err)
		}
		s.log.Info("bootstrapped the cluster", "servers", len(conf.Servers))
		return true, nil
	}
	errs = append(errs, fmt.Errorf("found %d of %d coordinators", len(peers), s.cfg.BootstrapExpect))
	return false, errors.Join(errs...)
}

func (s *Server) clusterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/cluster/self", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.self())
	})
	mux.HandleFunc("GET /v1/cluster/members", func(w http.ResponseWriter, _ *http.Request) {
		m, err := s.MembersView()
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, m)
	})
	mux.HandleFunc("POST /v1/cluster/join", func(w http.ResponseWriter, r *http.Request) {
		if !s.clusterPeer(w, r) {
			return
		}
		var p PeerInfo
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&p); err != nil {
			http.Error(w, "want JSON {\"id\": ..., \"raft_addr\": ...}", http.StatusBadRequest)
			return
		}
		// Checked here, before the leader commits a configuration
		// holding them: a member Raft cannot dial counts toward quorum
		// and never answers.
		if err := checkJoin(p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		clusterChange(w, s.addPeer(p.ID, p.RaftAddr), s)
	})
	mux.HandleFunc("POST /v1/cluster/remove", func(w http.ResponseWriter, r *http.Request) {
		if !s.clusterPeer(w, r) {
			return
		}
		var p PeerInfo
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&p); err != nil || p.ID == "" {
			http.Error(w, "want JSON {\"id\": ...}", http.StatusBadRequest)
			return
		}
		clusterChange(w, s.removePeer(p.ID), s)
	})
}

// checkJoin checks a join's id and raft_addr, naming the field.
func checkJoin(p PeerInfo) error {
	var errs []error
	if p.ID == "" {
		errs = append(errs, errors.New("id: required: the joining coordinator's --node-id"))
	} else if err := names.Validate(p.ID); err != nil {
		errs = append(errs, fmt.Errorf("id: %w", err))
	}
	if p.RaftAddr == "" {
		errs = append(errs, errors.New("raft_addr: required: the joining coordinator's Raft address, host:port"))
	} else if err := checkPeerAddr(p.RaftAddr); err != nil {
		errs = append(errs, fmt.Errorf("raft_addr %q: %w", p.RaftAddr, err))
	}
	return errors.Join(errs...)
}

func clusterChange(w http.ResponseWriter, err error, s *Server) {
	var bad badParam
	switch {
	case err == nil:
		writeJSON(w, map[string]string{"result": "ok"})
	case errors.As(err, &bad):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case errors.Is(err, errNotLeaderHTTP):
		_, leader := s.raft.LeaderWithID()
		http.Error(w, fmt.Sprintf("not the leader; the leader is %q", leader), http.StatusMisdirectedRequest)
	case errors.Is(err, errWouldLoseQuorum):
		http.Error(w, err.Error(), http.StatusConflict)
	default:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ClusterMembers asks a coordinator's HTTP API for the members over plain
// HTTP.
func ClusterMembers(ctx context.Context, httpAddr string) (*Members, error) {
	return (&ClusterClient{}).Members(ctx, httpAddr)
}

// Members asks a coordinator's HTTP API for the members.
func (c *ClusterClient) Members(ctx context.Context, httpAddr string) (*Members, error) {
	var m Members
	if err := c.getJSON(ctx, httpAddr, "/v1/cluster/members", &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// RemovePeer asks the coordinators at addrs over plain HTTP, in turn, to
// remove a peer; the leader among them does it.
func RemovePeer(ctx context.Context, addrs []string, id string) error {
	return (&ClusterClient{}).RemovePeer(ctx, addrs, id)
}

// RemovePeer asks the coordinators at addrs, in turn, to remove a peer; the
// leader among them does it.
func (c *ClusterClient) RemovePeer(ctx context.Context, addrs []string, id string) error {
	var errs []error
	for _, a := range addrs {
		err := c.postJSON(ctx, a, "/v1/cluster/remove", PeerInfo{ID: id}, nil)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
