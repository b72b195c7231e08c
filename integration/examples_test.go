package integration

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/switchyard/switchyard/agent"
	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/haproxyproc"
	"github.com/switchyard/switchyard/internal/spec"
)

// haproxyFile is what the README tour relies on in examples/haproxy.cfg.
type haproxyFile struct {
	statsSocket string
	binds       []string
	// servers[backend][server] = "addr weight"
	servers map[string]map[string]string
}

func readHAProxyConfig(t *testing.T, path string) haproxyFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := haproxyFile{servers: map[string]map[string]string{}}
	section, name := "", ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		indented := line[0] == ' ' || line[0] == '\t'
		if !indented {
			section, name = fields[0], ""
			if len(fields) > 1 {
				name = fields[1]
			}
			if section == "backend" {
				out.servers[name] = map[string]string{}
			}
			continue
		}
		switch {
		case section == "global" && len(fields) >= 3 && fields[0] == "stats" && fields[1] == "socket":
			out.statsSocket = fields[2]
		case fields[0] == "bind" && len(fields) >= 2:
			out.binds = append(out.binds, fields[1])
		case section == "backend" && fields[0] == "server" && len(fields) >= 3:
			out.servers[name][fields[1]] = strings.Join(fields[2:], " ")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExamples_ConsistentAndValid checks that the three files of the README
// tour are each valid for the program that reads them (the agent's own
// config loader, the CLI's spec parser, haproxy -c) and that they name the
// same socket, backend, servers and service.
func TestExamples_ConsistentAndValid(t *testing.T) {
	t.Parallel()
	// The tour's agent trusts the key `switchyard dev --data-dir
	// /tmp/switchyard/dev` writes; the test points it at a key of its own
	// and checks the rest as written.
	const devKey = "/tmp/switchyard/dev/keys/coordinator.key.pub"
	example, err := os.ReadFile(examplePath(t, "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(example), "keys: ["+devKey+"]") {
		t.Fatalf("examples/agent.yaml does not trust %s, the key the README's `switchyard dev --data-dir /tmp/switchyard/dev` writes", devKey)
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
		t.Fatalf("examples/agent.yaml: %v", err)
	}
	specBytes, err := os.ReadFile(examplePath(t, "bluegreen.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := spec.Parse(specBytes)
	if err != nil {
		t.Fatalf("examples/bluegreen.yaml: %v", err)
	}
	hapPath := examplePath(t, "haproxy.cfg")
	bin, err := haproxyproc.Binary("")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", hapPath).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c -f examples/haproxy.cfg: %v\n%s", err, out)
	}
	hap := readHAProxyConfig(t, hapPath)

	svc, ok := cfg.Services[rs.GetService()]
	hsec, isHAProxy := svc.Proxy.(*haproxy.Section)
	if !ok || !isHAProxy {
		t.Fatalf("bluegreen.yaml service %q has no haproxy section in agent.yaml (services: %v)", rs.GetService(), cfg.Services)
	}
	if hsec.Socket != hap.statsSocket {
		t.Errorf("agent.yaml socket %q, haproxy.cfg stats socket %q", hsec.Socket, hap.statsSocket)
	}
	servers, ok := hap.servers[hsec.Backend]
	if !ok {
		t.Fatalf("agent.yaml backend %q is not a backend of haproxy.cfg (have %v)", hsec.Backend, hap.servers)
	}
	for _, b := range []string{rs.GetFrom(), rs.GetTo()} {
		server, ok := hsec.Servers[b]
		if !ok {
			t.Errorf("bluegreen.yaml names backend %q; agent.yaml servers map has %v", b, hsec.Servers)
			continue
		}
		if _, ok := servers[server]; !ok {
			t.Errorf("agent.yaml maps %q to server %q, not in haproxy.cfg backend %s (%v)", b, server, hsec.Backend, servers)
		}
	}
	// The tour starts with everything on blue: the README's curl shows blue
	// before the rollout and green after.
	for server, want := range map[string]string{
		hsec.Servers[rs.GetFrom()]: "127.0.0.1:9001 weight 100",
		hsec.Servers[rs.GetTo()]:   "127.0.0.1:9002 weight 0",
	} {
		if got := servers[server]; got != want {
			t.Errorf("haproxy.cfg server %s: %q, want %q", server, got, want)
		}
	}
	if len(hap.binds) != 1 || hap.binds[0] != "127.0.0.1:8080" {
		t.Errorf("haproxy.cfg binds %v, want [127.0.0.1:8080]", hap.binds)
	}
}
