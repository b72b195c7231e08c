package agent

import (
	"errors"
	"strings"
	"testing"
)

// Mistakes an operator makes in a first config that used to pass the check
// and surface only once the agent ran: each is refused naming its field
// and what would be accepted.
func TestConfig_RefusesConflictsAndBadAddresses(t *testing.T) {
	const head = "node: edge-1\nstateDir: /tmp/x\ntrust: {keys: [\"ed25519:6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw=\"]}\n"
	web := "services:\n  web:\n    haproxy: {socket: /run/haproxy/admin.sock, backend: web, servers: {blue: blue, green: green}}\n"
	cases := []struct {
		name string
		doc  string
		want []string
	}{
		// The agent bound httpAddr only after it had repaired its proxies
		// and read the bus, and then exited naming no accepted form.
		{"httpAddr port out of range", head + "httpAddr: 127.0.0.1:91010\n" + web, []string{`httpAddr: "127.0.0.1:91010"`, "port 0..65535"}},
		{"httpAddr without a port", head + "httpAddr: 127.0.0.1\n" + web, []string{`httpAddr: "127.0.0.1"`, "host:port"}},
		{"httpAddr port alone", head + "httpAddr: 9101\n" + web, []string{`httpAddr: "9101"`, "host:port"}},
		// Two services steering the same servers undo each other's weights
		// on every read back.
		{"two services on one HAProxy backend", head + web +
			"  api:\n    haproxy: {socket: /run/haproxy/admin.sock, backend: web, servers: {blue: blue, green: green}}\n",
			[]string{`services.web.haproxy.backend: HAProxy backend "web" on admin socket /run/haproxy/admin.sock claims the same as services.api.haproxy.backend`}},
		// One HAProxy server for both spec backends: a switch moves nothing.
		{"one HAProxy server for two backends", head + "services:\n  web:\n    haproxy: {socket: /s, backend: web, servers: {blue: web1, green: web1}}\n",
			[]string{`services.web.haproxy.servers.green: HAProxy server "web1" is also servers.blue's`}},
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
	// Still accepted: any port, a name or all interfaces, and two services
	// of one HAProxy on different backends.
	for _, ok := range []string{
		head + "httpAddr: 127.0.0.1:0\n" + web,
		head + "httpAddr: ':9101'\n" + web,
		head + "httpAddr: 'localhost:9101'\n" + web,
		head + "httpAddr: '[::1]:9101'\n" + web,
		head + web + "  api:\n    haproxy: {socket: /run/haproxy/admin.sock, backend: api, servers: {blue: blue, green: green}}\n",
	} {
		if _, err := ParseConfig([]byte(ok)); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}
