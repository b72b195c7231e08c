// Package envoy drives a service on Envoy or proxyless gRPC clients through
// xDS: the agent serves the service's listener, route and clusters from a
// local xDS server (go-control-plane's snapshot cache) and reads the
// clients' load reports back as telemetry.
package envoy

import (
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/internal/names"
)

// Name is the key of an Envoy section in an agent config.
const Name = "envoy"

func init() {
	driver.Register(driver.Kind{Name: Name, NewSection: func() driver.Section { return &Section{} }})
}

// DefaultLoadReportInterval is how often clients send load reports when
// Section.LoadReportInterval is zero.
const DefaultLoadReportInterval = time.Second

// Section is a service's "envoy:" section in an agent config.
type Section struct {
	// XDS is the address ("127.0.0.1:18000") the agent serves xDS (ADS, the
	// per-type services and load reporting) on. Services naming the same
	// address share one server. It must be a loopback address: only the
	// node's own Envoy or gRPC clients talk to it.
	XDS string `yaml:"xds"`
	// Listener is the name clients ask for: for gRPC clients the host of
	// the dial target ("xds:///web" asks for "web"). Defaults to the
	// service name.
	Listener string `yaml:"listener"`
	// EnvoyListen, when set, is the address ("127.0.0.1:10000") an Envoy
	// bootstrapped from this agent listens on for the service: the
	// Listener then has that address and a filter chain, as Envoy needs,
	// instead of the api_listener gRPC clients use. One service serves
	// either Envoy or gRPC clients.
	EnvoyListen string `yaml:"envoyListen"`
	// Endpoints maps a backend name of the rollout spec ("blue", "green")
	// to the addresses ("ip:port") of its instances; each backend becomes a
	// cluster "<service>-<backend>".
	Endpoints map[string][]string `yaml:"endpoints"`
	// Weights are served until the agent applies a desired state for the
	// first time, as the weights written in haproxy.cfg are for HAProxy
	// (e.g. blue 100, green 0). Without them clients get no routing until
	// then. A restarted agent serves the routing it applied last instead.
	Weights map[string]uint32 `yaml:"weights"`
	// LoadReportInterval is how often clients report load; 1s when zero.
	LoadReportInterval time.Duration `yaml:"loadReportInterval"`
}

var _ driver.Section = (*Section)(nil)

// Kind implements driver.Section.
func (s *Section) Kind() string { return Name }

// Backends implements driver.Section.
func (s *Section) Backends() []string { return slices.Sorted(maps.Keys(s.Endpoints)) }

// Clone returns a deep copy.
func (s *Section) Clone() driver.Section {
	out := *s
	out.Endpoints = make(map[string][]string, len(s.Endpoints))
	for b, eps := range s.Endpoints {
		out.Endpoints[b] = slices.Clone(eps)
	}
	out.Weights = maps.Clone(s.Weights)
	return &out
}

// Validate implements driver.Section.
func (s *Section) Validate() []error {
	var probs []error
	bad := func(sub, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s: %s", sub, fmt.Sprintf(format, args...)))
	}
	switch ap, err := netip.ParseAddrPort(s.XDS); {
	case s.XDS == "":
		bad("xds", "required: the loopback address to serve xDS on, e.g. 127.0.0.1:18000")
	case err != nil:
		bad("xds", "%q: want ip:port, e.g. 127.0.0.1:18000", s.XDS)
	case !ap.Addr().IsLoopback():
		bad("xds", "%q: want a loopback address; only this node's proxies may reach its xDS server", s.XDS)
	case ap.Port() == 0:
		bad("xds", "%q: want a fixed port, clients are configured with it", s.XDS)
	}
	if s.Listener != "" {
		if err := names.Validate(s.Listener); err != nil {
			bad("listener", "%v", err)
		}
	}
	if s.EnvoyListen != "" {
		if _, err := splitHostPort(s.EnvoyListen); err != nil {
			bad("envoyListen", "%v", err)
		}
	}
	if len(s.Endpoints) < 2 {
		bad("endpoints", "required: map each spec backend (blue, green) to its addresses")
	}
	for _, b := range slices.Sorted(maps.Keys(s.Endpoints)) {
		if err := names.Validate(b); err != nil {
			bad("endpoints", "%v", err)
			continue
		}
		if len(s.Endpoints[b]) == 0 {
			bad("endpoints."+b, "required: at least one ip:port")
		}
		for i, ep := range s.Endpoints[b] {
			if _, err := splitHostPort(ep); err != nil {
				bad(fmt.Sprintf("endpoints.%s[%d]", b, i), "%v", err)
			}
		}
	}
	for _, b := range slices.Sorted(maps.Keys(s.Weights)) {
		if _, ok := s.Endpoints[b]; !ok {
			bad("weights."+b, "not one of the backends in endpoints")
		}
		if s.Weights[b] > 100 {
			bad("weights."+b, "%d: want 0..100", s.Weights[b])
		}
	}
	if s.LoadReportInterval < 0 {
		bad("loadReportInterval", "%s: must not be negative", s.LoadReportInterval)
	}
	return probs
}

type hostPort struct {
	host string
	port uint32
}

// key is the endpoint as "ip:port", the IP in its canonical form.
func (hp hostPort) key() string {
	if ip, err := netip.ParseAddr(hp.host); err == nil {
		return netip.AddrPortFrom(ip, uint16(hp.port)).String()
	}
	return net.JoinHostPort(hp.host, strconv.FormatUint(uint64(hp.port), 10))
}

func splitHostPort(ep string) (hostPort, error) {
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		return hostPort{}, fmt.Errorf("%q: want ip:port", ep)
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return hostPort{}, fmt.Errorf("%q: want an IP address, not a name (clients do not resolve EDS hosts)", ep)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return hostPort{}, fmt.Errorf("%q: want a port 1..65535", ep)
	}
	return hostPort{host: host, port: uint32(p)}, nil
}

// Open implements driver.Section.
func (s *Section) Open(env driver.Env) (driver.Driver, error) {
	if errs := s.Validate(); len(errs) > 0 {
		return nil, fmt.Errorf("envoy driver: %w", errs[0])
	}
	return open(s, env)
}
