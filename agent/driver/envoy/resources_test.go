package envoy

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpclog "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestResources_ShapeForGRPCAndForEnvoy checks the resources of one service
// for both kinds of client, including what Validate does not look at inside
// Any-packed configs: the router is the last filter, every cluster stays
// referenced at weight 0, and an Envoy listener has an address and a filter
// chain instead of an api_listener.
func TestResources_ShapeForGRPCAndForEnvoy(t *testing.T) {
	r := &serviceResources{service: "web", listener: "web", backends: []string{"blue", "green"},
		endpoints: map[string][]hostPort{"blue": {{"127.0.0.1", 9001}}, "green": {{"127.0.0.1", 9002}}}}
	st := &routing{Weights: map[string]uint32{"blue": 100, "green": 0}, Faults: map[string]Fault{"blue": {AbortPercent: 20, AbortStatus: 503}}}
	for _, envoyListen := range []*hostPort{nil, {"127.0.0.1", 10000}} {
		r.envoyListen = envoyListen
		res := buildResources(r, st)
		type validator interface{ ValidateAll() error }
		for typ, rs := range res {
			for _, x := range rs {
				if err := x.(validator).ValidateAll(); err != nil {
					t.Fatalf("%s: %v", typ, err)
				}
			}
		}
		lis := res[resource.ListenerType][0].(*listener.Listener)
		var packed *anypb.Any
		if envoyListen == nil {
			if lis.GetApiListener() == nil || lis.GetAddress() != nil {
				t.Fatalf("gRPC listener %v: want an api_listener and no address", lis)
			}
			packed = lis.GetApiListener().GetApiListener()
		} else {
			if lis.GetApiListener() != nil || lis.GetAddress().GetSocketAddress().GetPortValue() != 10000 {
				t.Fatalf("Envoy listener %v: want address :10000 and no api_listener", lis)
			}
			packed = lis.GetFilterChains()[0].GetFilters()[0].GetTypedConfig()
		}
		var m hcm.HttpConnectionManager
		if err := packed.UnmarshalTo(&m); err != nil {
			t.Fatal(err)
		}
		if err := m.ValidateAll(); err != nil {
			t.Fatal(err)
		}
		// An Envoy sends its access log (the latency source) to the
		// agent's xDS cluster under the listener's name; gRPC clients
		// report through package accesslog instead.
		if envoyListen == nil {
			if len(m.GetAccessLog()) != 0 {
				t.Fatalf("gRPC listener access log %v: want none", m.GetAccessLog())
			}
		} else {
			var al grpclog.HttpGrpcAccessLogConfig
			if len(m.GetAccessLog()) != 1 || m.GetAccessLog()[0].GetTypedConfig().UnmarshalTo(&al) != nil {
				t.Fatalf("Envoy access log %v: want one http_grpc logger", m.GetAccessLog())
			}
			if err := al.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			if c := al.GetCommonConfig(); c.GetLogName() != "web" || c.GetGrpcService().GetEnvoyGrpc().GetClusterName() != XDSCluster {
				t.Fatalf("access log %v: want log web to cluster %s", c, XDSCluster)
			}
		}
		fs := m.GetHttpFilters()
		if len(fs) != 2 || fs[0].GetName() != faultFilter || fs[len(fs)-1].GetName() != routerFilter {
			t.Fatalf("filters %v: want fault then router last", fs)
		}
		if m.GetRds().GetRouteConfigName() != "web-route" || m.GetRds().GetConfigSource().GetAds() == nil {
			t.Fatalf("RDS %v: want web-route over ADS", m.GetRds())
		}
		rc := res[resource.RouteType][0].(*route.RouteConfiguration)
		routes := rc.GetVirtualHosts()[0].GetRoutes()
		split := routes[0].GetRoute().GetWeightedClusters().GetClusters()
		if len(split) != 1 || split[0].GetName() != "web-blue" || split[0].GetWeight().GetValue() != 100 {
			t.Fatalf("split %v: want web-blue 100 alone", split)
		}
		if _, ok := split[0].GetTypedPerFilterConfig()[faultFilter]; !ok {
			t.Fatal("blue's fault is not on its cluster weight")
		}
		keep := routes[1].GetRoute().GetWeightedClusters().GetClusters()
		if len(keep) != 2 || keep[1].GetName() != "web-green" || len(routes[1].GetMatch().GetHeaders()) != 1 {
			t.Fatalf("keep route %v: want every cluster, behind a header no client sends", routes[1])
		}
		for i, c := range res[resource.ClusterType] {
			cl := c.(*cluster.Cluster)
			if cl.GetLrsServer().GetSelf() == nil || cl.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil {
				t.Fatalf("cluster %d %v: want EDS over ADS and load reports to this server", i, cl)
			}
			cla := res[resource.EndpointType][i].(*endpoint.ClusterLoadAssignment)
			if cla.GetClusterName() != cl.GetName() || cla.GetEndpoints()[0].GetLoadBalancingWeight().GetValue() == 0 {
				t.Fatalf("endpoints %v: want a weighted locality of %s", cla, cl.GetName())
			}
		}
		// Every backend at 0: a direct 503, clusters still referenced.
		zero := buildResources(r, &routing{Weights: map[string]uint32{"blue": 0, "green": 0}})
		rc0 := zero[resource.RouteType][0].(*route.RouteConfiguration)
		if rc0.GetVirtualHosts()[0].GetRoutes()[0].GetDirectResponse().GetStatus() != 503 || !proto.Equal(rc0.GetVirtualHosts()[0].GetRoutes()[1], routes[1]) {
			t.Fatalf("all-zero routes %v", rc0.GetVirtualHosts()[0].GetRoutes())
		}
	}
}
