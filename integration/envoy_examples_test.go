package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3" // Any in the bootstrap
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/agent"
	"github.com/switchyard/switchyard/agent/driver/envoy"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// decodeBootstrap decodes an Envoy bootstrap in YAML strictly: an unknown
// field, a wrong type or an unknown Any type is an error, as in Envoy.
func decodeBootstrap(b []byte) (*bootstrap.Bootstrap, error) {
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	js, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	var bs bootstrap.Bootstrap
	if err := (protojson.UnmarshalOptions{}).Unmarshal(js, &bs); err != nil {
		return nil, err
	}
	if err := bs.ValidateAll(); err != nil {
		return nil, err
	}
	return &bs, nil
}

// TestExamples_EnvoyBootstrapAndAgentConfig checks examples/agent-envoy.yaml
// with the agent's own loader and examples/envoy-bootstrap.yaml as Envoy's
// Bootstrap message, and that the bootstrap points at the agent's xDS
// server for ADS and load reporting.
func TestExamples_EnvoyBootstrapAndAgentConfig(t *testing.T) {
	t.Parallel()
	const devKey = "/tmp/switchyard/dev/keys/coordinator.key.pub"
	example, err := os.ReadFile(examplePath(t, "agent-envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(t.TempDir(), "coordinator.key")
	if _, err := bus.GenerateSigningKey(key); err != nil {
		t.Fatal(err)
	}
	agentPath := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(agentPath, []byte(strings.ReplaceAll(string(example), devKey, key+".pub")), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.LoadConfig(agentPath)
	if err != nil {
		t.Fatalf("examples/agent-envoy.yaml: %v", err)
	}
	sec, ok := cfg.Services["web"].Proxy.(*envoy.Section)
	if !ok {
		t.Fatalf("examples/agent-envoy.yaml: service web has no envoy section")
	}

	raw, err := os.ReadFile(examplePath(t, "envoy-bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	bs, err := decodeBootstrap(raw)
	if err != nil {
		t.Fatalf("examples/envoy-bootstrap.yaml is not a valid Bootstrap: %v", err)
	}
	if got := bs.GetDynamicResources().GetAdsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName(); got != "switchyard_xds" {
		t.Fatalf("ADS goes to cluster %q", got)
	}
	if bs.GetDynamicResources().GetLdsConfig().GetAds() == nil || bs.GetDynamicResources().GetCdsConfig().GetAds() == nil {
		t.Fatal("LDS and CDS must come over ADS")
	}
	if got := bs.GetClusterManager().GetLoadStatsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName(); got != "switchyard_xds" {
		t.Fatalf("load reports go to cluster %q", got)
	}
	var addr string
	for _, c := range bs.GetStaticResources().GetClusters() {
		if c.GetName() == "switchyard_xds" {
			sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
			addr = net.JoinHostPort(sa.GetAddress(), fmt.Sprint(sa.GetPortValue()))
		}
	}
	if addr != sec.XDS {
		t.Fatalf("the bootstrap's xDS cluster is %q, the agent serves xDS on %q", addr, sec.XDS)
	}
	// Strict: a misspelt field is refused.
	if _, err := decodeBootstrap([]byte(strings.Replace(string(raw), "dynamic_resources:", "dynamic_resource:", 1))); err == nil {
		t.Fatal("a bootstrap with an unknown field decoded")
	}
}

// TestDocs_EnvoyTour runs the commands of docs/envoy.md's tour with the
// real binaries, on ports and a directory of its own.
func TestDocs_EnvoyTour(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 2*time.Minute)
	binaries(t)
	xdsClientBin.get(t)
	work := harnesstest.Dir(t)
	ports := map[string]string{}
	for _, documented := range []string{"4222", "9001", "9002", "18000", "8080", "9102"} {
		p, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[documented] = strconv.Itoa(p)
	}
	localize := func(s string) string {
		for documented, p := range ports {
			s = strings.ReplaceAll(s, ":"+documented, ":"+p)
		}
		return strings.ReplaceAll(s, "/tmp/switchyard", filepath.Join(work, "sy"))
	}
	example, err := os.ReadFile(examplePath(t, "agent-envoy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(work, "examples"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(work, "examples", "agent-envoy.yaml"), []byte(localize(string(example))), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + binDir + ":" + os.Getenv("PATH")}
	var background []*harness.Process
	t.Cleanup(func() {
		for i := len(background) - 1; i >= 0; i-- {
			if err := background[i].Stop(); err != nil {
				t.Errorf("%s: %v", background[i].Name(), err)
			}
		}
	})
	var outputs []string
	cmds := docCommands(t, "docs/envoy.md", "TestDocs_EnvoyTour")
	if len(cmds) < 6 {
		t.Fatalf("docs/envoy.md's tour has %d commands", len(cmds))
	}
	for i, c := range cmds {
		cmd := localize(c.text)
		if c.background {
			p, err := harness.StartProcess(harness.ProcessSpec{
				Name: fmt.Sprintf("doc-%d", i), Path: "bash",
				Args: []string{"-c", "cd " + work + " && exec " + cmd}, Env: env,
				LogDir: filepath.Join(work, "logs"),
			})
			if err != nil {
				t.Fatal(err)
			}
			background = append(background, p)
			continue
		}
		var res *harness.CLIResult
		err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
			for _, p := range background {
				if !p.Running() {
					return harness.Permanent(fmt.Errorf("%s exited: %s", p.Name(), p.Tail(20)))
				}
			}
			var err error
			res, err = harness.RunCLI(ctx, "bash", env, "-c", "cd "+work+" && "+cmd)
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return fmt.Errorf("exit %d: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s\n%v", cmd, err)
		}
		t.Logf("$ %s\n%s", cmd, strings.TrimSpace(res.Stdout))
		outputs = append(outputs, res.Stdout)
	}
	all := strings.Join(outputs, "\n")
	for _, want := range []string{"trust line:", "\nblue\n", `switchyard_agent_xds_healthy{service="web"} 1`} {
		if !strings.Contains("\n"+all, want) {
			t.Errorf("the documented commands never printed %q:\n%s", want, all)
		}
	}
}
