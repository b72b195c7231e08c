package envoy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	lrs "github.com/envoyproxy/go-control-plane/envoy/service/load_stats/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xds "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// snapshotNode is the one cache key every client shares: the node serves
// the same routing to all of its proxies.
const snapshotNode = "switchyard"

type sharedHash struct{}

func (sharedHash) ID(*core.Node) string { return snapshotNode }

// servers are the xDS servers of this process, by address; services that
// name the same address share one.
var (
	serversMu sync.Mutex
	servers   = map[string]*server{}
)

// server is one xDS + LRS gRPC server and the snapshot cache it serves.
type server struct {
	addr  string
	log   *slog.Logger
	cache cache.SnapshotCache
	grpc  *grpc.Server
	done  chan struct{}

	mu       sync.Mutex
	refs     int
	services map[string]*Driver // by service
	clusters map[string]*Driver // by cluster name
	version  uint64
	clients  map[string]*client // by node id
	streams  map[int64]string   // stream -> node id
	// offered is the last response sent on a stream, by type URL: a NACK
	// names it by its nonce.
	offered map[int64]map[string]offer
}

// offer is one response sent: its nonce and the version it carries.
type offer struct {
	nonce   string
	version uint64
}

// refusal is a client's NACK of one version.
type refusal struct {
	version uint64 // 0 when the refused response is not known
	err     string
}

// client is what one xDS client (by node id) has asked for and accepted.
type client struct {
	streams int
	// listeners the client subscribed to; wildcard when it asked for all.
	listeners map[string]bool
	wildcard  bool
	// routes are the route configs the client subscribed to.
	routes map[string]bool
	// acked is the last version accepted, by stream and type URL: a
	// node's streams may be two processes (an Envoy restarted before its
	// old stream ended), and what a stream accepted ends with it.
	acked map[streamType]uint64
	// nacked is the refusal of a version offered, by stream and type URL,
	// until that version or a later one is accepted on the stream.
	nacked map[streamType]refusal
}

// streamType is one resource type on one stream.
type streamType struct {
	stream  int64
	typeURL string
}

// acquire returns the server at addr, starting it if no service of this
// process uses it yet.
func acquire(addr string, log *slog.Logger) (*server, error) {
	serversMu.Lock()
	defer serversMu.Unlock()
	if s, ok := servers[addr]; ok {
		s.mu.Lock()
		s.refs++
		s.mu.Unlock()
		return s, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("xds: listen on %s: %w", addr, err)
	}
	s := &server{
		addr:     addr,
		log:      log.With("xds", addr),
		refs:     1,
		services: map[string]*Driver{},
		clusters: map[string]*Driver{},
		clients:  map[string]*client{},
		streams:  map[int64]string{},
		offered:  map[int64]map[string]offer{},
		done:     make(chan struct{}),
	}
	s.cache = cache.NewSnapshotCache(false, sharedHash{}, nil)
	xs := xds.NewServer(context.Background(), s.cache, xds.CallbackFuncs{
		StreamOpenFunc:     s.onStreamOpen,
		StreamClosedFunc:   s.onStreamClosed,
		StreamRequestFunc:  s.onStreamRequest,
		StreamResponseFunc: s.onStreamResponse,
	})
	s.grpc = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(s.grpc, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(s.grpc, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(s.grpc, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(s.grpc, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(s.grpc, xs)
	lrs.RegisterLoadReportingServiceServer(s.grpc, &loadReporting{s: s})
	als.RegisterAccessLogServiceServer(s.grpc, &accessLogs{s: s})
	go func() {
		defer close(s.done)
		if err := s.grpc.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("xds server stopped", "err", err)
		}
	}()
	servers[addr] = s
	s.log.Info("serving xDS and load reporting")
	return s, nil
}

// release drops one service's use; the last one stops the server.
func (s *server) release(service string) {
	serversMu.Lock()
	defer serversMu.Unlock()
	s.mu.Lock()
	if d := s.services[service]; d != nil {
		for _, c := range d.clusterNames() {
			delete(s.clusters, c)
		}
	}
	delete(s.services, service)
	s.refs--
	last := s.refs == 0
	s.mu.Unlock()
	if !last {
		s.push()
		return
	}
	delete(servers, s.addr)
	s.grpc.Stop()
	<-s.done
}

// add registers a service's driver with the server.
func (s *server) add(d *Driver) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, dup := s.services[d.service]; dup {
		return fmt.Errorf("xds %s: service %s already served", s.addr, d.service)
	}
	for _, other := range s.services {
		if other.listener == d.listener {
			return fmt.Errorf("xds %s: listener %q is also service %s's", s.addr, d.listener, other.service)
		}
	}
	for _, c := range d.clusterNames() {
		if other := s.clusters[c]; other != nil {
			return fmt.Errorf("xds %s: cluster %q (service %s, backend %s) is also service %s's; rename a backend or serve one of them on another xds address",
				s.addr, c, d.service, strings.TrimPrefix(c, d.service+"-"), other.service)
		}
	}
	s.services[d.service] = d
	for _, c := range d.clusterNames() {
		s.clusters[c] = d
	}
	return nil
}

// push sets a new snapshot from every service's current state. Versions
// are numbers that only grow, also across restarts of the agent (they
// start from the clock), so a client's accepted version tells which
// weights it has.
func (s *server) push() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pushLocked()
}

func (s *server) pushLocked() error {
	v := max(s.version+1, uint64(time.Now().UnixNano()))
	res := map[resource.Type][]types.Resource{}
	for _, d := range s.services {
		st := d.current()
		if st == nil {
			continue // nothing applied or restored yet: clients wait
		}
		d.remember(v, st)
		for t, rs := range buildResources(d.res, st) {
			res[t] = append(res[t], rs...)
		}
	}
	snap, err := cache.NewSnapshot(strconv.FormatUint(v, 10), res)
	if err != nil {
		return fmt.Errorf("xds snapshot: %w", err)
	}
	if err := s.cache.SetSnapshot(context.Background(), snapshotNode, snap); err != nil {
		return fmt.Errorf("xds snapshot: %w", err)
	}
	s.version = v
	return nil
}

func (s *server) onStreamOpen(_ context.Context, id int64, typeURL string) error {
	return nil
}

func (s *server) onStreamClosed(id int64, _ *core.Node) {
	s.mu.Lock()
	node, ok := s.streams[id]
	delete(s.streams, id)
	delete(s.offered, id)
	if ok {
		if c := s.clients[node]; c != nil {
			c.streams--
			for k := range c.acked {
				if k.stream == id {
					delete(c.acked, k)
				}
			}
			for k := range c.nacked {
				if k.stream == id {
					delete(c.nacked, k)
				}
			}
			if c.streams <= 0 {
				delete(s.clients, node)
			}
		}
	}
	s.mu.Unlock()
	s.changed()
}

// What a client says of itself reaches the service's health, its status
// on the bus and the log: a node id and a refusal are kept to these many
// bytes, so that a client (or anything that can reach the xDS port) cannot
// make the agent's status too big to publish.
const (
	maxClientID    = 128
	maxRefusalText = 512
)

// clip returns s as valid UTF-8 of at most n bytes, marked when cut.
func clip(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	const more = "…"
	cut := n - len(more)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + more
}

func (s *server) onStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	s.mu.Lock()
	node, known := s.streams[id]
	if !known {
		// A stream's first request carries the node; later ones may not.
		node = clip(req.GetNode().GetId(), maxClientID)
		if node == "" {
			node = "stream-" + strconv.FormatInt(id, 10)
		}
		s.streams[id] = node
		c := s.clients[node]
		if c == nil {
			c = &client{listeners: map[string]bool{}, routes: map[string]bool{}, acked: map[streamType]uint64{}, nacked: map[streamType]refusal{}}
			s.clients[node] = c
		}
		c.streams++
	}
	c := s.clients[node]
	t := req.GetTypeUrl()
	if t == resource.ListenerType {
		c.wildcard = len(req.GetResourceNames()) == 0 || (len(req.GetResourceNames()) == 1 && req.GetResourceNames()[0] == "*")
		clear(c.listeners)
		for _, n := range req.GetResourceNames() {
			c.listeners[n] = true
		}
	}
	if t == resource.RouteType {
		clear(c.routes)
		for _, n := range req.GetResourceNames() {
			c.routes[n] = true
		}
	}
	var nacked string
	k := streamType{stream: id, typeURL: t}
	if req.GetResponseNonce() != "" {
		if e := req.GetErrorDetail(); e != nil {
			r := refusal{err: clip(e.GetMessage(), maxRefusalText)}
			if o, ok := s.offered[id][t]; ok && o.nonce == req.GetResponseNonce() {
				r.version = o.version
				// The request names the version the client still has, so
				// the cache would answer it with the refused version at
				// once, and the client refuse it again, without end. As
				// the refused version it makes the cache wait for the
				// next snapshot.
				req.VersionInfo = strconv.FormatUint(o.version, 10)
			}
			if prev, ok := c.nacked[k]; !ok || prev.version != r.version || r.version == 0 {
				nacked = r.err
			}
			c.nacked[k] = r
		} else if v, err := strconv.ParseUint(req.GetVersionInfo(), 10, 64); err == nil {
			c.acked[k] = v
			// A request that only changes what the client subscribes to
			// carries the version it still has: the refusal of a later
			// one stands.
			if r, ok := c.nacked[k]; ok && v >= r.version {
				delete(c.nacked, k)
			}
		}
	}
	var affected []*Driver
	for _, d := range s.services {
		if c.of(d.listener, d.res.routeName()) {
			affected = append(affected, d)
		}
	}
	s.mu.Unlock()
	if nacked != "" {
		for _, d := range affected {
			d.m.nacks.WithLabelValues(shortType(t)).Inc()
		}
		s.log.Warn("xds client refused a config", "client", node, "type", shortType(t), "err", nacked)
	}
	s.changed()
	return nil
}

func (s *server) onStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	v, err := strconv.ParseUint(resp.GetVersionInfo(), 10, 64)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	byType := s.offered[id]
	if byType == nil {
		byType = map[string]offer{}
		s.offered[id] = byType
	}
	byType[resp.GetTypeUrl()] = offer{nonce: resp.GetNonce(), version: v}
}

// changed tells every service's driver its clients changed.
func (s *server) changed() {
	s.mu.Lock()
	ds := make([]*Driver, 0, len(s.services))
	for _, d := range s.services {
		ds = append(ds, d)
	}
	s.mu.Unlock()
	for _, d := range ds {
		d.notify()
	}
}

// clientView is one client's standing for one service.
type clientView struct {
	node        string
	routesAcked uint64
	nacked      map[string]string
}

// of reports whether the client is one of the service's: it asked for the
// service's listener by name or, asking for every listener (as an Envoy
// does), for its route config. An Envoy gets the api_listener of a gRPC
// service too but does not route it; its acceptance says nothing of that
// service's routing.
func (c *client) of(listener, route string) bool {
	return c.listeners[listener] || (c.wildcard && c.routes[route])
}

// clientsOf lists the clients of the service whose listener and route
// config are named so.
func (s *server) clientsOf(listener, route string) []clientView {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []clientView
	for node, c := range s.clients {
		if !c.of(listener, route) {
			continue
		}
		cv := clientView{node: node}
		// With two processes on the node, the one that lags is what
		// its clients get.
		for k, v := range c.acked {
			if k.typeURL == resource.RouteType && (cv.routesAcked == 0 || v < cv.routesAcked) {
				cv.routesAcked = v
			}
		}
		if len(c.nacked) > 0 {
			cv.nacked = make(map[string]string, len(c.nacked))
			for k, r := range c.nacked {
				cv.nacked[shortType(k.typeURL)] = r.err
			}
		}
		out = append(out, cv)
	}
	return out
}

func shortType(t string) string {
	switch t {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "endpoint"
	}
	return "other"
}

// loadReporting is the Load Reporting Service clients send per-cluster
// request counts to.
type loadReporting struct {
	lrs.UnimplementedLoadReportingServiceServer
	s *server
}

// StreamLoadStats asks the client for every cluster's load each interval
// and adds what it reports to the services' windows.
func (l *loadReporting) StreamLoadStats(stream lrs.LoadReportingService_StreamLoadStatsServer) error {
	first := true
	for {
		req, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if first {
			first = false
			if err := stream.Send(&lrs.LoadStatsResponse{
				SendAllClusters:       true,
				LoadReportingInterval: durationpb.New(l.s.reportInterval()),
			}); err != nil {
				return err
			}
		}
		for _, cs := range req.GetClusterStats() {
			l.s.mu.Lock()
			d := l.s.clusters[cs.GetClusterName()]
			l.s.mu.Unlock()
			if d == nil {
				continue
			}
			var ok, failed uint64
			for _, ls := range cs.GetUpstreamLocalityStats() {
				ok += ls.GetTotalSuccessfulRequests()
				failed += ls.GetTotalErrorRequests()
			}
			d.addLoad(cs.GetClusterName(), ok, failed)
		}
	}
}

func (s *server) reportInterval() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	iv := time.Duration(0)
	for _, d := range s.services {
		if iv == 0 || d.res.reportInterval < iv {
			iv = d.res.reportInterval
		}
	}
	if iv == 0 {
		iv = DefaultLoadReportInterval
	}
	return iv
}

// accessLogs is the Access Log Service an Envoy's http_grpc access logger
// and proxyless clients (package accesslog) send one entry per request to:
// the latency source of xDS services.
type accessLogs struct {
	als.UnimplementedAccessLogServiceServer
	s *server
}

// StreamAccessLogs adds each entry's duration to its service's window. The
// stream's first message names the log: the service's listener.
func (a *accessLogs) StreamAccessLogs(stream als.AccessLogService_StreamAccessLogsServer) error {
	var d *Driver
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return stream.SendAndClose(&als.StreamAccessLogsResponse{})
			}
			return err
		}
		if d == nil {
			name := msg.GetIdentifier().GetLogName()
			d = a.s.byListener(name)
			if d == nil {
				a.s.countAccessLog(resultUnknownLog)
				a.s.log.Warn("access log stream refused: no service has its log name as listener", "log_name", name, "client", msg.GetIdentifier().GetNode().GetId())
				return grpcstatus.Errorf(codes.NotFound, "identifier.log_name %q: no service on xDS server %s has this listener (want the listener of a service, e.g. the host of xds:///<listener>)", name, a.s.addr)
			}
		}
		for _, e := range msg.GetHttpLogs().GetLogEntry() {
			d.addAccessLog(e)
		}
		if n := len(msg.GetTcpLogs().GetLogEntry()); n > 0 {
			d.m.accessLogs.WithLabelValues(resultUnattributed).Add(float64(n))
		}
	}
}

// byListener is the service whose listener is name.
func (s *server) byListener(name string) *Driver {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.services {
		if d.listener == name {
			return d
		}
	}
	return nil
}

// countAccessLog counts a stream no service takes on every service of the
// address, the only place an operator of the node looks.
func (s *server) countAccessLog(result string) {
	s.mu.Lock()
	ds := make([]*Driver, 0, len(s.services))
	for _, d := range s.services {
		ds = append(ds, d)
	}
	s.mu.Unlock()
	for _, d := range ds {
		d.m.accessLogs.WithLabelValues(result).Inc()
	}
}
