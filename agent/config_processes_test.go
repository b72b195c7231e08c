package agent

import (
	"errors"
	"strings"
	"testing"
)

const processesBase = `
node: edge-1
stateDir: /tmp/x
trust: {keys: ["ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="]}
services:
  web:
    haproxy: {socket: /run/haproxy/admin.sock, backend: web, servers: {blue: blue, green: green}}
`

func TestConfig_Processes(t *testing.T) {
	cfg, err := ParseConfig([]byte(processesBase + "processes:\n  green: {pidFile: /run/web-green.pid}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Processes["green"].PIDFile; got != "/run/web-green.pid" {
		t.Fatalf("pidFile = %q", got)
	}
	for _, c := range []struct{ yaml, want string }{
		{"processes:\n  green: {pidFile: run/green.pid}\n", `processes.green.pidFile: "run/green.pid": want an absolute path`},
		{"processes:\n  green: {}\n", "processes.green.pidFile: required"},
		{"processes:\n  green: {pidFile: /run/g.pid, command: rm}\n", `unknown field "command" in a process (want pidFile)`},
		{"processes:\n  'a b': {pidFile: /run/g.pid}\n", "processes.a b"},
	} {
		_, err := ParseConfig([]byte(processesBase + c.yaml))
		if err == nil || !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want one containing %q", c.yaml, err, c.want)
		}
	}
}
