package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfig_LoadExampleAppliesDefaults(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("testdata", "agent.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Node != "edge-1" || cfg.Labels["region"] != "eu" || cfg.StateDir != "/var/lib/switchyard/edge-1" || cfg.HTTPAddr != "127.0.0.1:9101" {
		t.Errorf("config = %+v", cfg)
	}
	if cfg.Heartbeat != 5*time.Second || cfg.Resync != 30*time.Second {
		t.Errorf("heartbeat %s, resync %s; want the defaults 5s and 30s", cfg.Heartbeat, cfg.Resync)
	}
	h := cfg.Services["web"].HAProxy
	if h == nil || h.Socket != "/run/haproxy/admin.sock" || h.Backend != "web" || h.Servers["green"] != "green" {
		t.Errorf("services.web.haproxy = %+v", h)
	}
}

func TestConfig_ParseDurationsAndDefaultNATS(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
node: edge-2
stateDir: /tmp/x
heartbeat: 2s
resync: 1m
services:
  web:
    haproxy: {socket: /s, backend: web, servers: {blue: b1, green: g1}, timeout: 3s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Heartbeat != 2*time.Second || cfg.Resync != time.Minute || cfg.NATS != DefaultNATS || cfg.Services["web"].HAProxy.Timeout != 3*time.Second {
		t.Errorf("config = %+v", cfg)
	}
}

func TestConfig_Errors(t *testing.T) {
	const valid = `
node: edge-1
stateDir: /tmp/x
services:
  web:
    haproxy:
      socket: /run/haproxy/admin.sock
      backend: web
      servers: {blue: blue, green: green}
`
	cases := []struct {
		name string
		doc  string
		want []string // substrings of the error
	}{
		{"unknown top-level field", "nodes: x\n" + valid, []string{"line 1", `unknown field "nodes" at the top level`}},
		{"unknown nested field", strings.Replace(valid, "backend: web", "backend: web\n      sockett: /x", 1), []string{"line 9", `unknown field "sockett" in a haproxy section`}},
		{"missing socket", strings.Replace(valid, "socket: /run/haproxy/admin.sock", "", 1), []string{"services.web.haproxy.socket: required"}},
		{"missing backend and servers", `
node: edge-1
stateDir: /tmp/x
services:
  web:
    haproxy: {socket: /s}
`, []string{"services.web.haproxy.backend: required", "services.web.haproxy.servers: required"}},
		{"empty server name", strings.Replace(valid, "green: green", "green: ''", 1), []string{"services.web.haproxy.servers.green: required"}},
		{"no driver", `
node: edge-1
stateDir: /tmp/x
services:
  web: {}
`, []string{"services.web: a proxy driver is required"}},
		{"bad node name", strings.Replace(valid, "node: edge-1", "node: edge.1", 1), []string{"node:", `"edge.1"`}},
		{"bad service name", strings.Replace(valid, "  web:", "  we.b:", 1), []string{"services.we.b:", "invalid name"}},
		{"missing node and stateDir", `
services:
  web:
    haproxy: {socket: /s, backend: web, servers: {blue: blue}}
`, []string{"node: required", "stateDir: required"}},
		{"no services", "node: edge-1\nstateDir: /tmp/x\n", []string{"services: required"}},
		{"bad duration", "heartbeat: 5x\n" + valid, []string{"line 1", "5x"}},
		{"negative duration", "resync: -1s\n" + valid, []string{"resync: -1s: must be positive"}},
		{"empty document", "", []string{"empty"}},
		{"two documents", valid + "---\nnode: edge-2\n", []string{"one YAML document"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.doc))
			if err == nil {
				t.Fatal("want an error")
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("error %v does not wrap ErrInvalidConfig", err)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

func TestConfig_LoadConfigNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte("node: edge-1\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("LoadConfig = %v, want an error naming the file and the field", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadConfig of a missing file = %v, want ErrNotExist", err)
	}
}
