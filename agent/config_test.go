package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/internal/sketch"
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
	h := hapSection(cfg.Services["web"])
	if h == nil || h.Socket != "/run/haproxy/admin.sock" || h.Backend != "web" || h.Servers["green"] != "green" {
		t.Errorf("services.web.haproxy = %+v", h)
	}
}

func TestConfig_ParseDurationsAndDefaultNATS(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
node: edge-2
stateDir: /tmp/x
trust: {keys: ["ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]}
heartbeat: 2s
resync: 1m
services:
  web:
    haproxy: {socket: /s, backend: web, servers: {blue: b1, green: g1}, timeout: 3s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Heartbeat != 2*time.Second || cfg.Resync != time.Minute || cfg.NATS != DefaultNATS || hapSection(cfg.Services["web"]).Timeout != 3*time.Second {
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
trust: {keys: ["ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]}
`
	cases := []struct {
		name string
		doc  string
		want []string // substrings of the error
	}{
		{"unknown top-level field", "nodes: x\n" + valid, []string{"line 1", `unknown field "nodes" at the top level`}},
		{"unknown nested field", strings.Replace(valid, "backend: web", "backend: web\n      sockett: /x", 1), []string{"line 9", "haproxy.sockett: unknown field; want one of socket, backend, servers, timeout, logSocket"}},
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
`, []string{"services.web: a proxy driver section is required (one of "}},
		{"bad node name", strings.Replace(valid, "node: edge-1", "node: edge.1", 1), []string{"node:", `"edge.1"`}},
		{"bad service name", strings.Replace(valid, "  web:", "  we.b:", 1), []string{"services.we.b:", "invalid name"}},
		{"missing node and stateDir", `
services:
  web:
    haproxy: {socket: /s, backend: web, servers: {blue: blue}}
`, []string{"node: required", "stateDir: required"}},
		{"no services", "node: edge-1\nstateDir: /tmp/x\n", []string{"services: required"}},
		{"bad duration", "heartbeat: 5x\n" + valid, []string{"line 1", `heartbeat: "5x" is not a duration`}},
		{"wrong-type nested field", "localGuard: {window: fast, enabled: maybe}\n" + valid, []string{
			`localGuard.window: "fast" is not a duration; want e.g. 5s`, `localGuard.enabled: "maybe" is not true or false`}},
		{"negative duration", "resync: -1s\n" + valid, []string{"resync: -1s: must be positive"}},
		// A heartbeat as long as the coordinators' stale period makes a
		// healthy node go stale between two of its statuses.
		{"heartbeat past half the stale period", "heartbeat: 10s\n" + valid, []string{"heartbeat: 10s: at most 7.5s, half the 15s the coordinators wait"}},
		{"empty document", "", []string{"empty"}},
		{"two documents", valid + "---\nnode: edge-2\n", []string{"one YAML document"}},
		// A selector's values may not be empty: a label without one could
		// never be selected.
		{"empty label value", "labels: {region: eu, zone: ''}\n" + valid, []string{`labels.zone: empty value; wave and drill selectors never match an empty value, so give one or remove the label`}},
		{"null label value", "labels:\n  zone:\n" + valid, []string{`labels.zone: empty value`}},
		{"no trusted keys", valid[:strings.Index(valid, "trust:")], []string{"trust.keys: required"}},
		{"bad trusted key", strings.Replace(valid, "ed25519:", "ed25519:xx", 1), []string{"trust.keys[0]: public key"}},
		{"missing key file", strings.Replace(valid, `"ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="`, "/nonexistent/coordinator.pub", 1), []string{"trust.keys[0]: public key file", "no such file"}},
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

// Wrong types inside a driver section or probes, a long wrong-typed value
// (which yaml shortens in its message), a duplicate key and an unknown
// field of a hook: each names its field by the path an operator reads in
// the file, with one line.
func TestConfig_ErrorsNameTheFullPathOnce(t *testing.T) {
	const valid = `
node: edge-1
stateDir: /tmp/x
services:
  web:
    haproxy:
      socket: /run/haproxy/admin.sock
      backend: web
      servers: {blue: blue, green: green}
trust: {keys: ["ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]}
`
	cases := []struct{ name, doc, want string }{
		{"driver field of the wrong type", strings.Replace(valid, "backend: web", "backend: web\n      timeout: soon", 1),
			`services.web.haproxy.timeout: "soon" is not a duration; want e.g. 5s, 250ms or 1m30s (line 9)`},
		{"probe field of the wrong type", strings.Replace(valid, "servers: {blue: blue, green: green}",
			"servers: {blue: blue, green: green}\n    probes: {preflight: {green: {url: 'http://x', expectStatus: ok}}}", 1),
			`services.web.probes.preflight.green.expectStatus: "ok" is not a whole number (line 10)`},
		{"unknown driver field", strings.Replace(valid, "backend: web", "backend: web\n      sockett: /x", 1),
			"services.web.haproxy.sockett: unknown field; want one of socket, backend, servers, timeout, logSocket (line 9)"},
		{"long value of the wrong type", strings.Replace(valid, `trust: {keys: ["ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]}`,
			`trust: {keys: "ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="}`, 1),
			`trust.keys: "ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=" is not a list (line 10)`},
		{"duplicate key", "stateDir: /tmp/y\n" + valid, "stateDir: given twice in one mapping; first at line 1 (line 4)"},
		{"duplicate key in a driver section", strings.Replace(valid, "backend: web", "backend: web\n      backend: api", 1),
			"services.web.haproxy.backend: given twice in one mapping; first at line 8 (line 9)"},
		{"duplicate service name", strings.Replace(valid, "trust:", "  web: {haproxy: {socket: /s, backend: web, servers: {blue: b}}}\ntrust:", 1),
			"services.web: given twice in one mapping; first at line 5 (line 10)"},
		{"duplicate service", valid + "services: {}\n", "services: given twice in one mapping; first at line 4 (line 11)"},
		{"unknown field in a hook", "hooks: {warm: {cmd: [/bin/true]}}\n" + valid, `line 1: unknown field "cmd" in hooks (want command, timeout)`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(c.doc))
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err %v, want ErrInvalidConfig", err)
			}
			if got := strings.TrimPrefix(err.Error(), ErrInvalidConfig.Error()+": "); got != c.want {
				t.Errorf("error\n  %s\nwant\n  %s", got, c.want)
			}
		})
	}
}

// TestConfig_GuardZeroIsAChoice: afterDisconnect: 0 and maxP99: 0 mean
// what they say (act as soon as the bus is lost; check no latency), and
// survive the agent's own copy of the config; absent, they take their
// defaults.
func TestConfig_GuardZeroIsAChoice(t *testing.T) {
	const valid = `
node: edge-1
stateDir: /tmp/x
services:
  web:
    haproxy: {socket: /s, backend: web, servers: {blue: blue, green: green}}
trust: {keys: ["ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]}
`
	cfg, err := ParseConfig([]byte("localGuard: {afterDisconnect: 0s, maxP99: 0s}\n" + valid))
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range []LocalGuardConfig{cfg.LocalGuard, cfg.clone().LocalGuard} {
		if g.afterDisconnect() != 0 || g.maxP99() != 0 {
			t.Fatalf("afterDisconnect: 0s became %s and maxP99: 0s became %s", g.afterDisconnect(), g.maxP99())
		}
	}
	guard := &localGuard{cfg: cfg.LocalGuard}
	slow := sketch.New()
	slow.AddWithCount(30, 100)
	guard.add(guardWindow{end: time.Unix(1000, 0), backends: map[string]windowCounts{"green": {requests: 100, latency: slow}}})
	if reason, breached := guard.breach("green", "blue"); breached {
		t.Fatalf("maxP99: 0 still checks latency: %s", reason)
	}

	cfg, err = ParseConfig([]byte(valid))
	if err != nil {
		t.Fatal(err)
	}
	if g := cfg.LocalGuard; g.afterDisconnect() != DefaultGuardAfterDisconnect || g.maxP99() != DefaultGuardMaxP99 {
		t.Fatalf("absent: afterDisconnect %s, maxP99 %s; want the defaults", g.afterDisconnect(), g.maxP99())
	}
	_, err = ParseConfig([]byte("localGuard: {afterDisconnect: -1s}\n" + valid))
	if err == nil || !strings.Contains(err.Error(), "localGuard.afterDisconnect: -1s: must not be negative (0 lets the guard act as soon as the bus is lost)") {
		t.Fatalf("negative afterDisconnect: %v", err)
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

func TestConfig_TelemetryProbesAndGuard(t *testing.T) {
	cfg, err := ParseConfig([]byte(`
node: edge-1
stateDir: /tmp/x
trust: {keys: ["ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]}
telemetryInterval: 2s
localGuard: {afterDisconnect: 1m, maxErrorRate: 0.1}
services:
  web:
    haproxy:
      socket: /run/haproxy/admin.sock
      backend: web
      servers: {blue: blue, green: green}
      logSocket: /run/switchyard/web-log.sock
    probes:
      preflight:
        green: {url: "http://127.0.0.1:9002/healthz", bodyContains: ok, maxLatency: 300ms}
      synthetic:
        transactions:
          green:
            - {name: login, method: POST, url: "http://127.0.0.1:9002/login", body: "user=probe", headers: {Content-Type: application/x-www-form-urlencoded}}
            - {name: account, url: "http://127.0.0.1:9002/account", expectStatus: 200, timeout: 1s}
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TelemetryInterval != 2*time.Second || hapSection(cfg.Services["web"]).LogSocket != "/run/switchyard/web-log.sock" {
		t.Errorf("telemetry: interval %s, log socket %q", cfg.TelemetryInterval, hapSection(cfg.Services["web"]).LogSocket)
	}
	g := cfg.LocalGuard
	if !g.On() || g.afterDisconnect() != time.Minute || g.MaxErrorRate != 0.1 || g.Window != DefaultGuardWindow ||
		g.MinRequests != DefaultGuardMinRequests || g.maxP99() != DefaultGuardMaxP99 {
		t.Errorf("localGuard = %+v; want on, the two given values and defaults", g)
	}
	p := cfg.Services["web"].Probes
	pre := p.Preflight["green"]
	if pre.Method != "GET" || pre.ExpectStatus != 200 || pre.Timeout != DefaultProbeTimeout || pre.MaxLatency != 300*time.Millisecond || pre.BodyContains != "ok" {
		t.Errorf("preflight = %+v", pre)
	}
	steps := p.Synthetic.Transactions["green"]
	if p.Synthetic.Interval != DefaultSyntheticInterval || len(steps) != 2 || steps[0].Method != "POST" || steps[0].Headers["Content-Type"] == "" ||
		steps[1].Timeout != time.Second || steps[1].Method != "GET" {
		t.Errorf("synthetic = %+v, steps %+v %+v", p.Synthetic, steps[0], steps[1])
	}

	off, err := ParseConfig([]byte("node: edge-1\nstateDir: /tmp/x\ntrust: {keys: [\"ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=\"]}\nlocalGuard: {enabled: false}\nservices: {web: {haproxy: {socket: /s, backend: web, servers: {blue: b}}}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if off.LocalGuard.On() {
		t.Error("localGuard {enabled: false} is on")
	}
	if on := (LocalGuardConfig{}); !on.On() {
		t.Error("a guard config without enabled must be on")
	}
}

func TestConfig_TelemetryProbesAndGuardErrors(t *testing.T) {
	const head = "node: edge-1\nstateDir: /tmp/x\ntrust: {keys: [\"ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=\"]}\n"
	svc := func(extra string) string {
		return head + "services:\n  web:\n    haproxy: {socket: /s, backend: web, servers: {blue: blue, green: green}}\n" + extra
	}
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		{"negative interval", "telemetryInterval: -1s\n" + svc(""), []string{"telemetryInterval: -1s: must be positive"}},
		{"error rate out of range", "localGuard: {maxErrorRate: 20}\n" + svc(""), []string{"localGuard.maxErrorRate: 20: want a fraction"}},
		{"window shorter than interval", "telemetryInterval: 5s\nlocalGuard: {window: 1s}\n" + svc(""), []string{"localGuard.window: 1s: must be at least telemetryInterval (5s)"}},
		{"unknown guard field", "localGuard: {after: 1s}\n" + svc(""), []string{`unknown field "after" in localGuard`}},
		{"relative log socket", head + "services:\n  web:\n    haproxy: {socket: /s, backend: web, servers: {blue: b}, logSocket: web.sock}\n",
			[]string{`services.web.haproxy.logSocket: "web.sock": want an absolute path`}},
		{"shared log socket, same backend", head + "services:\n  web:\n    haproxy: {socket: /s, backend: web, servers: {blue: b}, logSocket: /l.sock}\n  api:\n    haproxy: {socket: /s, backend: web, servers: {blue: b2}, logSocket: /l.sock}\n",
			[]string{"services.web.haproxy.logSocket: log socket /l.sock with HAProxy backend \"web\" claims the same as services.api.haproxy.logSocket"}},
		{"preflight of an unknown backend", svc("    probes: {preflight: {purple: {url: 'http://x/'}}}\n"),
			[]string{`services.web.probes.preflight.purple: backend "purple" is not one of the driver's backends (have blue, green)`}},
		{"preflight without url", svc("    probes: {preflight: {green: {expectStatus: 204}}}\n"), []string{"services.web.probes.preflight.green.url: required"}},
		{"preflight bad url and status", svc("    probes: {preflight: {green: {url: 'ftp://x/', expectStatus: 99}}}\n"),
			[]string{`preflight.green.url: "ftp://x/": want an http:// or https:// URL`, "preflight.green.expectStatus: 99"}},
		{"unknown probe field", svc("    probes: {preflight: {green: {url: 'http://x/', status: 200}}}\n"), []string{"probes.preflight.green.status: unknown field; want one of name, method"}},
		{"step without name", svc("    probes: {synthetic: {transactions: {green: [{url: 'http://x/'}]}}}\n"),
			[]string{"services.web.probes.synthetic.transactions.green[0].name: required"}},
		{"reserved and duplicate names", svc("    probes: {synthetic: {transactions: {green: [{name: preflight, url: 'http://x/'}, {name: a, url: 'http://x/'}, {name: a, url: 'http://x/'}]}}}\n"),
			[]string{`green[0].name: "preflight" is reserved`, `green[2].name: "a" is used twice`}},
		{"no transactions", svc("    probes: {synthetic: {interval: 5s}}\n"), []string{"synthetic.transactions: required"}},
		{"bad method", svc("    probes: {preflight: {green: {url: 'http://x/', method: 'GE T'}}}\n"), []string{`preflight.green.method: "GE T"`}},
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

func TestConfig_NATSClientFilesAreChecked(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := "node: edge-1\nstateDir: /tmp/x\nservices:\n  web:\n    haproxy: {socket: /s, backend: web, servers: {blue: b, green: g}}\n"
	for _, c := range []struct{ natsClient, want string }{
		{"natsClient: {creds: " + filepath.Join(dir, "none.creds") + "}\n", "natsClient: natsClient.creds: open"},
		{"natsClient: {creds: " + notPEM + "}\n", "not a NATS .creds file"},
		{"natsClient: {ca: " + notPEM + "}\n", "natsClient.ca " + notPEM + ": no PEM certificate found"},
		{"natsClient: {cert: " + notPEM + "}\n", "natsClient.ca: required with natsClient.cert and natsClient.key"},
		{"natsClient: {crds: x}\n", `unknown field "crds"`},
	} {
		_, err := ParseConfig([]byte(base + c.natsClient))
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want %q", strings.TrimSpace(c.natsClient), err, c.want)
		}
	}
}
