package harness

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/switchyard/switchyard/bus"
)

type agentEnvoy struct {
	XDS       string              `yaml:"xds"`
	Endpoints map[string][]string `yaml:"endpoints"`
	Weights   map[string]uint32   `yaml:"weights"`
}

// startEnvoyNode starts the agent of an Envoy node, serving xDS for the
// node's blue and green (already running), and a proxyless gRPC client of
// the service as the node's frontend.
func (f *Fleet) startEnvoyNode(ctx context.Context, i int, n *Node) (*Node, error) {
	if f.opts.XDSClient == "" {
		return n, errors.New("fleet: XDSClient is required with Envoy nodes")
	}
	id := n.ID
	logDir := filepath.Join(f.opts.Dir, "logs")
	addrs := make([]string, 2) // xDS, client HTTP
	for j := range addrs {
		p, err := f.ports.free()
		if err != nil {
			return n, err
		}
		addrs[j] = "127.0.0.1:" + strconv.Itoa(p)
	}
	n.XDSAddr = addrs[0]
	n.AgentConfig = filepath.Join(n.Dir, "agent.yaml")
	sec, err := f.Bus.Security(bus.RoleAgent, id)
	if err != nil {
		return n, err
	}
	if err := writeAgentConfig(n.AgentConfig, agentConfig{
		Node:       id,
		Labels:     n.Labels,
		NATS:       f.NATSURL,
		NATSClient: agentNATSClient{Creds: sec.Creds, CA: sec.CA},
		StateDir:   filepath.Join(n.Dir, "state"),
		HTTPAddr:   n.AgentHTTP,
		Heartbeat:  f.opts.Heartbeat.String(),
		Resync:     f.opts.Resync.String(),
		Trust:      agentTrust{Keys: f.opts.TrustKeys},
		Services: map[string]agentService{f.opts.Service: {Envoy: &agentEnvoy{
			XDS:       n.XDSAddr,
			Endpoints: map[string][]string{Blue: {n.BlueAddr}, Green: {n.GreenAddr}},
			Weights:   map[string]uint32{Blue: 100, Green: 0},
		}}},
		Hooks: hooksFor(f.opts.Hooks, i),
	}); err != nil {
		return n, err
	}
	n.Agent, err = StartProcess(ProcessSpec{
		Name:   id + "-agent",
		Path:   f.opts.Switchyard,
		Args:   []string{"agent", "--config", n.AgentConfig},
		LogDir: logDir,
	})
	if err != nil {
		return n, err
	}
	f.log.Info("agent started", "node", id, "pid", n.Agent.Pid(), "http", n.AgentHTTP, "xds", n.XDSAddr)
	n.XDSClient, err = StartProcess(ProcessSpec{
		Name:   id + "-xdsclient",
		Path:   f.opts.XDSClient,
		Args:   []string{"--xds", n.XDSAddr, "--node", id + "-client", "--listener", f.opts.Service, "--http", addrs[1]},
		LogDir: logDir,
	})
	if err != nil {
		return n, err
	}
	n.FrontendAddr = addrs[1]
	if err := f.waitHTTP200(ctx, id+" xds client", "http://"+n.FrontendAddr+"/healthz", n.XDSClient); err != nil {
		return n, fmt.Errorf("%s: %w", id, err)
	}
	return n, nil
}
