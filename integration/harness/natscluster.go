package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/integration/faultproxy"
)

// NATSClusterOptions configure a cluster of standalone nats-server processes.
type NATSClusterOptions struct {
	// Binary is a nats-server built from the module's own nats-server
	// version. Required.
	Binary string
	// Dir holds each server's config, JetStream store and logs. Required.
	Dir string
	// Servers is the cluster size; 3 when zero. One server runs without a
	// cluster block.
	Servers int
	// Leaves are the names of leaf servers (one per PoP) attached to the
	// cluster, which runs JetStream for them; none when empty.
	Leaves []string
	// Security is the operator/account setup and CA the servers run with;
	// a new one in Dir/secure when nil. Every server runs with operator JWT
	// authorization (the config `switchyard auth init` writes) and TLS on
	// client, route and leaf connections, as production does.
	Security *SecuredBus
	// Proxies puts a fault proxy (integration/faultproxy) in front of each
	// server's client port (ClientURLs are the proxies') and one on each
	// route from one server to another, so that tests can blackhole, delay
	// or drop them (Partition, ClientProxy, RouteProxy).
	Proxies bool
}

// NATSCluster is a running cluster of nats-server processes with JetStream,
// on 127.0.0.1 ports picked at run time, and its leaf servers.
type NATSCluster struct {
	Servers []*Process
	// ClientURLs are the servers' client URLs, by index.
	ClientURLs []string
	// Leaves are the leaf servers, by the index of their name in
	// NATSClusterOptions.Leaves; LeafURLs their client URLs.
	Leaves   []*Process
	LeafURLs []string
	// Security is what the servers run with.
	Security *SecuredBus

	clientProxies []*faultproxy.Proxy
	// routeProxies[j][i] carries server j's route to server i (nil on the
	// diagonal).
	routeProxies [][]*faultproxy.Proxy
}

// Leaf server credentials: the identity a leaf connects to the hub with.
const leafIdentity = "leaf"

// HubDomain is the JetStream domain of the hub cluster; clients of a leaf
// server reach JetStream through it.
const HubDomain = "hub"

// StartNATSCluster starts the servers and waits until JetStream can take a
// replicated stream and every leaf reaches it. On error it stops what it
// started.
func StartNATSCluster(ctx context.Context, o NATSClusterOptions) (c *NATSCluster, err error) {
	if o.Binary == "" || o.Dir == "" {
		return nil, errors.New("nats cluster: Binary and Dir are required")
	}
	if o.Servers <= 0 {
		o.Servers = 3
	}
	c = &NATSCluster{Security: o.Security}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if c.Security == nil {
		if c.Security, err = NewSecuredBus(filepath.Join(o.Dir, "secure")); err != nil {
			return c, err
		}
	}
	sec := c.Security
	tlsBlock := fmt.Sprintf("tls { cert_file: %q, key_file: %q, ca_file: %q }", sec.Server.Cert, sec.Server.Key, sec.Server.CA)
	authConf := func(dir string) (string, error) {
		path := filepath.Join(dir, auth.ServerConfigFile)
		return path, os.WriteFile(path, []byte(sec.Setup.ServerConfig(filepath.Join(dir, "jwt"))), 0o600)
	}
	ports := &portSet{seen: map[int]bool{}}
	clientPorts := make([]int, o.Servers)
	routePorts := make([]int, o.Servers)
	leafPorts := make([]int, o.Servers)
	var routes, leafURLs []string
	for i := range o.Servers {
		for _, p := range []*int{&clientPorts[i], &routePorts[i], &leafPorts[i]} {
			if *p, err = ports.free(); err != nil {
				return c, err
			}
		}
		client := fmt.Sprintf("127.0.0.1:%d", clientPorts[i])
		if o.Proxies {
			px, err := faultproxy.New(client)
			if err != nil {
				return c, err
			}
			c.clientProxies = append(c.clientProxies, px)
			client = px.Addr()
		}
		c.ClientURLs = append(c.ClientURLs, "tls://"+client)
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[i]))
		leafURLs = append(leafURLs, fmt.Sprintf("%q", fmt.Sprintf("tls://127.0.0.1:%d", leafPorts[i])))
	}
	routesOf := func(int) []string { return routes }
	// Behind proxies, servers must not tell clients or each other the
	// addresses that bypass them: no client URL gossip, and a route
	// advertise address nobody listens on.
	advertise := ""
	if o.Proxies {
		c.routeProxies = make([][]*faultproxy.Proxy, o.Servers)
		for j := range o.Servers {
			c.routeProxies[j] = make([]*faultproxy.Proxy, o.Servers)
			for i := range o.Servers {
				if i == j {
					continue
				}
				px, err := faultproxy.New(fmt.Sprintf("127.0.0.1:%d", routePorts[i]))
				if err != nil {
					return c, err
				}
				c.routeProxies[j][i] = px
			}
		}
		routesOf = func(j int) []string {
			var rs []string
			for _, px := range c.routeProxies[j] {
				if px != nil {
					rs = append(rs, "nats-route://"+px.Addr())
				}
			}
			return rs
		}
		advertise = "no_advertise: true\n  advertise: \"127.0.0.1:1\""
	}
	for i := range o.Servers {
		name := fmt.Sprintf("nats-%d", i+1)
		dir := filepath.Join(o.Dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return c, err
		}
		ac, err := authConf(dir)
		if err != nil {
			return c, err
		}
		// One server is no cluster: JetStream with a cluster block waits
		// for peers that never come.
		cluster := ""
		if o.Servers > 1 {
			cluster = fmt.Sprintf(`cluster {
  name: switchyard-hub
  listen: 127.0.0.1:%d
  routes: [%s]
  %s
  %s
}`, routePorts[i], strings.Join(routesOf(i), ", "), advertise, tlsBlock)
		}
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
%s
jetstream { store_dir: %q, domain: %s }
%s
leafnodes {
  listen: 127.0.0.1:%d
  %s
}
include %q
`, name, clientPorts[i], tlsBlock, filepath.Join(dir, "js"), HubDomain, cluster, leafPorts[i], tlsBlock, filepath.Base(ac))
		if err := c.startServer(o, name, dir, conf, &c.Servers); err != nil {
			return c, err
		}
	}
	if len(o.Leaves) > 0 {
		leafCreds, err := c.leafCreds()
		if err != nil {
			return c, err
		}
		for _, pop := range o.Leaves {
			name := "leaf-" + pop
			dir := filepath.Join(o.Dir, name)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return c, err
			}
			ac, err := authConf(dir)
			if err != nil {
				return c, err
			}
			port, err := ports.free()
			if err != nil {
				return c, err
			}
			c.LeafURLs = append(c.LeafURLs, fmt.Sprintf("tls://127.0.0.1:%d", port))
			conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
%s
leafnodes {
  remotes: [
    { urls: [%s], account: %s, credentials: %q, tls { ca_file: %q } }
  ]
}
include %q
`, name, port, tlsBlock,
				strings.Join(leafURLs, ", "), sec.Setup.Account(), leafCreds, sec.Server.CA,
				filepath.Base(ac))
			if err := c.startServer(o, name, dir, conf, &c.Leaves); err != nil {
				return c, err
			}
		}
	}
	return c, c.WaitReady(ctx)
}

func (c *NATSCluster) startServer(o NATSClusterOptions, name, dir, conf string, into *[]*Process) error {
	path := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return err
	}
	p, err := StartProcess(ProcessSpec{Name: name, Path: o.Binary, Args: []string{"-c", path}, LogDir: filepath.Join(o.Dir, "logs")})
	if err != nil {
		return err
	}
	*into = append(*into, p)
	return nil
}

// leafCreds issues the identity every leaf server connects to the hub
// with, once.
func (c *NATSCluster) leafCreds() (string, error) {
	path := c.leafCredsPath()
	creds, err := c.Security.Setup.IssueLeaf(leafIdentity)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, creds, 0o600)
}

func (c *NATSCluster) leafCredsPath() string {
	return filepath.Join(c.Security.Setup.Dir(), auth.CredsDir, leafIdentity+".creds")
}

// URL is the comma-separated client URL list of the hub, as --nats takes it.
func (c *NATSCluster) URL() string { return strings.Join(c.ClientURLs, ",") }

// Bus is the client view of the hub.
func (c *NATSCluster) Bus() Bus { return c.Security.Bus(c.URL()) }

// LeafBus is the client view of leaf server i.
func (c *NATSCluster) LeafBus(i int) Bus {
	b := c.Security.Bus(c.LeafURLs[i])
	b.JetStreamDomain = HubDomain
	return b
}

// WaitReady waits until every running server accepts clients and JetStream
// answers through each of them, leaves included.
func (c *NATSCluster) WaitReady(ctx context.Context) error {
	return Poll(ctx, readyPoll, func(ctx context.Context) error {
		check := func(p *Process, b Bus) error {
			url := b.URL
			if !p.Running() {
				return nil
			}
			conn, err := net.DialTimeout("tcp", url[strings.Index(url, "://")+3:], time.Second)
			if err != nil {
				return err
			}
			conn.Close()
			// A coordinator may use the JetStream API on the hub. Through
			// a leaf's domain an agent reads the desired-state bucket's
			// stream, as agents do: any answer from the hub's JetStream,
			// "not found" before a coordinator made it too, means the
			// leaf carries their reads.
			role, name := bus.RoleCoordinator, "nats-cluster-probe"
			if b.JetStreamDomain != "" {
				role, name = bus.RoleAgent, "nats-leaf-probe"
			}
			sec, err := b.Security(role, name)
			if err != nil {
				return err
			}
			so, err := sec.Options("")
			if err != nil {
				return err
			}
			nc, err := nats.Connect(url, append(so, nats.NoReconnect())...)
			if err != nil {
				return fmt.Errorf("%s: %w", p.Name(), err)
			}
			defer nc.Close()
			js, err := sec.JetStream(nc)
			if err == nil {
				actx, cancel := context.WithTimeout(ctx, 2*time.Second)
				if b.JetStreamDomain != "" {
					if _, err = js.Stream(actx, "KV_"+bus.DesiredBucket); errors.Is(err, jetstream.ErrStreamNotFound) {
						err = nil
					}
				} else {
					_, err = js.AccountInfo(actx)
				}
				cancel()
			}
			if err != nil {
				return fmt.Errorf("%s: jetstream: %w", p.Name(), err)
			}
			return nil
		}
		for i, p := range c.Servers {
			if err := check(p, c.Security.Bus(c.ClientURLs[i])); err != nil {
				return err
			}
		}
		for i, p := range c.Leaves {
			if err := check(p, c.LeafBus(i)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Kill SIGKILLs server i.
func (c *NATSCluster) Kill(i int) error { return c.Servers[i].Kill() }

// Start starts server i again from its config and store.
func (c *NATSCluster) Start(ctx context.Context, i int) error {
	if err := c.Servers[i].Start(); err != nil {
		return err
	}
	return c.WaitReady(ctx)
}

// StreamLeader is the index of the server that leads stream name
// (as a client connected through the first running server learns it), -1
// when none answers.
func (c *NATSCluster) StreamLeader(ctx context.Context, name string) int {
	return c.leader(ctx, func(ctx context.Context, js jetstream.JetStream) (string, error) {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return "", err
		}
		return s.CachedInfo().Cluster.Leader, nil
	})
}

func (c *NATSCluster) leader(ctx context.Context, read func(context.Context, jetstream.JetStream) (string, error)) int {
	for i, p := range c.Servers {
		if !p.Running() {
			continue
		}
		nc, err := c.Security.Bus(c.ClientURLs[i]).Connect(bus.RoleCoordinator, "nats-cluster-probe", nats.NoReconnect())
		if err != nil {
			continue
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			continue
		}
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		leader, err := read(actx, js)
		cancel()
		nc.Close()
		if err != nil {
			continue
		}
		for j := range c.Servers {
			if leader == fmt.Sprintf("nats-%d", j+1) {
				return j
			}
		}
	}
	return -1
}

// MoveStreamLeader has stream name led by server i: its leader steps down
// with server i preferred, until StreamLeader says so.
func (c *NATSCluster) MoveStreamLeader(ctx context.Context, name string, i int) error {
	return c.moveLeader(ctx, "STREAM.LEADER.STEPDOWN."+name, i, func() int { return c.StreamLeader(ctx, name) })
}

func (c *NATSCluster) moveLeader(ctx context.Context, api string, i int, leader func() int) error {
	return Poll(ctx, 500*time.Millisecond, func(ctx context.Context) error {
		if leader() == i {
			return nil
		}
		nc, err := c.Security.Bus(c.URL()).Connect(bus.RoleCoordinator, "nats-cluster-probe", nats.NoReconnect())
		if err != nil {
			return err
		}
		defer nc.Close()
		req := fmt.Sprintf(`{"placement":{"preferred":"nats-%d"}}`, i+1)
		if _, err := nc.Request("$JS.API."+api, []byte(req), 2*time.Second); err != nil {
			return fmt.Errorf("%s: %w", api, err)
		}
		return fmt.Errorf("nats-%d does not lead yet (%s)", i+1, api)
	})
}

// Freeze SIGSTOPs server i; Thaw SIGCONTs it.
func (c *NATSCluster) Freeze(i int) error { return c.Servers[i].Signal(syscall.SIGSTOP) }

// Thaw resumes server i after Freeze.
func (c *NATSCluster) Thaw(i int) error { return c.Servers[i].Signal(syscall.SIGCONT) }

// ClientProxy is the proxy in front of server i's client port (with
// NATSClusterOptions.Proxies).
func (c *NATSCluster) ClientProxy(i int) *faultproxy.Proxy { return c.clientProxies[i] }

// RouteProxy is the proxy carrying server from's route to server to.
func (c *NATSCluster) RouteProxy(from, to int) *faultproxy.Proxy { return c.routeProxies[from][to] }

// Partition cuts server i off from its clients and the other servers
// (every proxy to and from it blackholes); Heal(i) puts them back.
func (c *NATSCluster) Partition(i int) { c.setAround(i, faultproxy.Mode{Blackhole: true}) }

// Heal ends Partition(i).
func (c *NATSCluster) Heal(i int) { c.setAround(i, faultproxy.Pass) }

func (c *NATSCluster) setAround(i int, m faultproxy.Mode) {
	c.clientProxies[i].SetMode(m)
	for j := range c.Servers {
		if j != i {
			c.routeProxies[i][j].SetMode(m)
			c.routeProxies[j][i].SetMode(m)
		}
	}
}

// Proxies lists every fault proxy of the cluster.
func (c *NATSCluster) Proxies() []*faultproxy.Proxy {
	out := append([]*faultproxy.Proxy{}, c.clientProxies...)
	for _, row := range c.routeProxies {
		for _, px := range row {
			if px != nil {
				out = append(out, px)
			}
		}
	}
	return out
}

// Close stops every server, leaves first, and the proxies.
func (c *NATSCluster) Close() error {
	var errs []error
	for _, p := range append(append([]*Process{}, c.Leaves...), c.Servers...) {
		if err := p.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, px := range c.Proxies() {
		if err := px.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
