package envoy

import (
	"maps"
	"slices"
	"time"

	accesslog "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpclog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Filter names in the HttpConnectionManager.
const (
	faultFilter  = "envoy.filters.http.fault"
	routerFilter = "envoy.filters.http.router"
)

// XDSCluster is the name an Envoy's bootstrap gives the cluster of the
// agent's xDS server (examples/envoy-bootstrap.yaml); the Envoy sends its
// access log there.
const XDSCluster = "switchyard_xds"

// keepHeader is a request header no client sends: the route that keeps
// every cluster referenced matches only requests carrying it, and comes
// after the route that matches everything, so it never matches.
const keepHeader = "x-switchyard-keep-clusters"

// serviceResources is what a service's resources are built from that does
// not change with the weights.
type serviceResources struct {
	service, listener string
	backends          []string // sorted
	endpoints         map[string][]hostPort
	// envoyListen is the socket address of an Envoy's listener; nil for
	// an api_listener.
	envoyListen    *hostPort
	reportInterval time.Duration
}

func (r *serviceResources) clusterName(backend string) string { return r.service + "-" + backend }
func (r *serviceResources) routeName() string                 { return r.listener + "-route" }

// Fault is an HTTP fault the fault filter injects into one backend's
// requests.
type Fault struct {
	// AbortPercent of requests (0..100) fail at once with AbortStatus.
	AbortPercent float64 `json:"abortPercent,omitempty"`
	AbortStatus  uint32  `json:"abortStatus,omitempty"`
	// DelayPercent of requests (0..100) wait Delay first.
	DelayPercent float64       `json:"delayPercent,omitempty"`
	Delay        time.Duration `json:"delay,omitempty"`
}

// routing is a service's state the snapshot is built from.
type routing struct {
	Weights map[string]uint32 `json:"weights"`
	Faults  map[string]Fault  `json:"faults,omitempty"`
}

func (r *routing) clone() *routing {
	out := &routing{Weights: maps.Clone(r.Weights), Faults: maps.Clone(r.Faults)}
	return out
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err) // only for messages of this package, which always marshal
	}
	return a
}

func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

// percent is a fraction of requests as the fault filter takes it.
func percent(p float64) *typev3.FractionalPercent {
	return &typev3.FractionalPercent{Numerator: uint32(p * 10000), Denominator: typev3.FractionalPercent_MILLION}
}

func faultConfig(f Fault) *fault.HTTPFault {
	out := &fault.HTTPFault{}
	if f.AbortPercent > 0 {
		out.Abort = &fault.FaultAbort{
			ErrorType:  &fault.FaultAbort_HttpStatus{HttpStatus: f.AbortStatus},
			Percentage: percent(f.AbortPercent),
		}
	}
	if f.DelayPercent > 0 && f.Delay > 0 {
		out.Delay = &faultcommon.FaultDelay{
			FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(f.Delay)},
			Percentage:         percent(f.DelayPercent),
		}
	}
	return out
}

// buildResources renders one service: a Listener named after the dial
// target whose api_listener holds an HttpConnectionManager (fault filter,
// router last, routes by RDS); a RouteConfiguration splitting by
// weighted_clusters; an EDS cluster and its endpoints per backend, each
// reporting load to this server.
//
// Make-before-break: gRPC clients drop weight-0 entries of
// weighted_clusters and unsubscribe that cluster, and when it gets weight
// again their RPCs fail until it is fetched anew. A second route, which
// never matches, references every cluster, so each stays subscribed and
// warm whatever its weight.
func buildResources(r *serviceResources, st *routing) map[string][]types.Resource {
	var split []*route.WeightedCluster_ClusterWeight
	keep := make([]*route.WeightedCluster_ClusterWeight, 0, len(r.backends))
	for _, b := range r.backends {
		keep = append(keep, &route.WeightedCluster_ClusterWeight{Name: r.clusterName(b), Weight: wrapperspb.UInt32(1)})
		w := st.Weights[b]
		if w == 0 {
			continue
		}
		cw := &route.WeightedCluster_ClusterWeight{Name: r.clusterName(b), Weight: wrapperspb.UInt32(w)}
		if f, ok := st.Faults[b]; ok {
			cw.TypedPerFilterConfig = map[string]*anypb.Any{faultFilter: mustAny(faultConfig(f))}
		}
		split = append(split, cw)
	}
	main := &route.Route{Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}}}
	if len(split) == 0 {
		// Every backend at weight 0: nothing to send requests to.
		main.Action = &route.Route_DirectResponse{DirectResponse: &route.DirectResponseAction{Status: 503}}
	} else {
		main.Action = &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: split}},
		}}
	}
	keepRoute := &route.Route{
		Match: &route.RouteMatch{
			PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""},
			Headers: []*route.HeaderMatcher{{
				Name:                 keepHeader,
				HeaderMatchSpecifier: &route.HeaderMatcher_PresentMatch{PresentMatch: true},
			}},
		},
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{Clusters: keep}},
		}},
	}
	rc := &route.RouteConfiguration{
		Name: r.routeName(),
		VirtualHosts: []*route.VirtualHost{{
			Name:    r.service,
			Domains: []string{"*"},
			Routes:  []*route.Route{main, keepRoute},
		}},
	}
	manager := &hcm.HttpConnectionManager{
		CodecType:  hcm.HttpConnectionManager_AUTO,
		StatPrefix: r.service,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: r.routeName(),
		}},
		HttpFilters: []*hcm.HttpFilter{
			// An empty fault config injects nothing; the faults of a drill
			// are per backend, on the route's cluster weights.
			{Name: faultFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&fault.HTTPFault{})}},
			{Name: routerFilter, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(&router.Router{})}},
		},
	}
	lis := &listener.Listener{
		Name:        r.listener,
		ApiListener: &listener.ApiListener{ApiListener: mustAny(manager)},
	}
	if r.envoyListen != nil {
		// Envoy sends one entry per request to the agent's Access Log
		// Service, named after the listener: the latency of the service's
		// backends. (gRPC clients report theirs through package accesslog.)
		manager.AccessLog = []*accesslog.AccessLog{{
			Name: "envoy.access_loggers.http_grpc",
			ConfigType: &accesslog.AccessLog_TypedConfig{TypedConfig: mustAny(&grpclog.HttpGrpcAccessLogConfig{
				CommonConfig: &grpclog.CommonGrpcAccessLogConfig{
					LogName: r.listener,
					GrpcService: &core.GrpcService{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
						EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
					}},
					TransportApiVersion: core.ApiVersion_V3,
				},
			})},
		}}
		lis = &listener.Listener{
			Name: r.listener,
			Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
				Address:       r.envoyListen.host,
				PortSpecifier: &core.SocketAddress_PortValue{PortValue: r.envoyListen.port},
			}}},
			FilterChains: []*listener.FilterChain{{Filters: []*listener.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(manager)},
			}}}},
		}
	}
	out := map[string][]types.Resource{
		resource.ListenerType: {lis},
		resource.RouteType:    {rc},
	}
	for _, b := range r.backends {
		name := r.clusterName(b)
		out[resource.ClusterType] = append(out[resource.ClusterType], &cluster.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
			LbPolicy:             cluster.Cluster_ROUND_ROBIN,
			ConnectTimeout:       durationpb.New(time.Second),
			LrsServer:            &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Self{Self: &core.SelfConfigSource{}}},
		})
		var lbs []*endpoint.LbEndpoint
		for _, ep := range r.endpoints[b] {
			lbs = append(lbs, &endpoint.LbEndpoint{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
						Address:       ep.host,
						PortSpecifier: &core.SocketAddress_PortValue{PortValue: ep.port},
					}}},
				}},
				HealthStatus: core.HealthStatus_HEALTHY,
			})
		}
		out[resource.EndpointType] = append(out[resource.EndpointType], &endpoint.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpoint.LocalityLbEndpoints{{
				Locality:            &core.Locality{},
				LbEndpoints:         lbs,
				LoadBalancingWeight: wrapperspb.UInt32(1),
			}},
		})
	}
	return out
}

func sortedBackends(m map[string][]string) []string { return slices.Sorted(maps.Keys(m)) }
