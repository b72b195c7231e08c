package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSClusterOptions configure a cluster of standalone nats-server processes.
type NATSClusterOptions struct {
	// Binary is a nats-server built from the module's own nats-server
	// version. Required.
	Binary string
	// Dir holds each server's config, JetStream store and logs. Required.
	Dir string
	// Servers is the cluster size; 3 when zero.
	Servers int
}

// NATSCluster is a running cluster of nats-server processes with JetStream,
// on 127.0.0.1 ports picked at run time.
type NATSCluster struct {
	Servers []*Process
	// ClientURLs are the servers' client URLs, by index.
	ClientURLs []string
}

// StartNATSCluster starts the servers and waits until JetStream can take a
// replicated stream. On error it stops what it started.
func StartNATSCluster(ctx context.Context, o NATSClusterOptions) (c *NATSCluster, err error) {
	if o.Binary == "" || o.Dir == "" {
		return nil, errors.New("nats cluster: Binary and Dir are required")
	}
	if o.Servers <= 0 {
		o.Servers = 3
	}
	c = &NATSCluster{}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	ports := &portSet{seen: map[int]bool{}}
	clientPorts := make([]int, o.Servers)
	routePorts := make([]int, o.Servers)
	for i := range o.Servers {
		if clientPorts[i], err = ports.free(); err != nil {
			return c, err
		}
		if routePorts[i], err = ports.free(); err != nil {
			return c, err
		}
		c.ClientURLs = append(c.ClientURLs, fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i]))
	}
	var routes []string
	for _, p := range routePorts {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	for i := range o.Servers {
		name := fmt.Sprintf("nats-%d", i+1)
		dir := filepath.Join(o.Dir, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return c, err
		}
		conf := fmt.Sprintf(`server_name: %s
listen: 127.0.0.1:%d
jetstream { store_dir: %q }
cluster {
  name: switchyard-test
  listen: 127.0.0.1:%d
  routes: [%s]
}
`, name, clientPorts[i], filepath.Join(dir, "js"), routePorts[i], strings.Join(routes, ", "))
		path := filepath.Join(dir, "nats.conf")
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			return c, err
		}
		p, err := StartProcess(ProcessSpec{Name: name, Path: o.Binary, Args: []string{"-c", path}, LogDir: filepath.Join(o.Dir, "logs")})
		if err != nil {
			return c, err
		}
		c.Servers = append(c.Servers, p)
	}
	return c, c.WaitReady(ctx)
}

// URL is the comma-separated client URL list, as --nats takes it.
func (c *NATSCluster) URL() string { return strings.Join(c.ClientURLs, ",") }

// WaitReady waits until every running server accepts clients and JetStream
// answers through each of them.
func (c *NATSCluster) WaitReady(ctx context.Context) error {
	return Poll(ctx, readyPoll, func(ctx context.Context) error {
		for i, p := range c.Servers {
			if !p.Running() {
				continue
			}
			conn, err := net.DialTimeout("tcp", strings.TrimPrefix(c.ClientURLs[i], "nats://"), time.Second)
			if err != nil {
				return err
			}
			conn.Close()
			nc, err := nats.Connect(c.ClientURLs[i], nats.NoReconnect())
			if err != nil {
				return err
			}
			js, err := jetstream.New(nc)
			if err == nil {
				actx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err = js.AccountInfo(actx)
				cancel()
			}
			nc.Close()
			if err != nil {
				return fmt.Errorf("%s: jetstream: %w", p.Name(), err)
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

// Close stops every server.
func (c *NATSCluster) Close() error {
	var errs []error
	for _, p := range c.Servers {
		if err := p.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
