// Package haproxyproc renders configs for, starts and stops real HAProxy
// processes that front one service, for driver tests, integration tests and
// the demo fleet.
package haproxyproc

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
)

// Config describes one HAProxy instance fronting one service with named servers.
type Config struct {
	// Dir is the working directory for haproxy.cfg, the pid file and the
	// admin socket. Required; created if missing.
	Dir string
	// FrontendAddr is where clients connect, e.g. "127.0.0.1:18080"; port 0
	// makes Start pick a free port (Process.FrontendAddr tells which).
	FrontendAddr string
	// Backend is the HAProxy backend name, e.g. "web".
	Backend string
	// Servers are the backend's servers, in order.
	Servers []Server
	// LogSocket is an optional unix datagram socket path HAProxy sends one
	// line per request to, formatted as LogFormat. "" means no logging.
	LogSocket string
	// HealthChecks turns on HTTP health checks (GET /) on every server.
	HealthChecks bool
	// Binary is the haproxy executable; "" looks up "haproxy" in PATH and
	// falls back to /usr/sbin/haproxy (Debian's location, often not in a
	// non-root PATH).
	Binary string
}

// Server is one server of the backend, e.g. {"blue", "127.0.0.1:9001", 100}.
type Server struct {
	Name   string
	Addr   string
	Weight int
}

// LogFormat is the per-request log line HAProxy sends to Config.LogSocket
// (raw, no syslog header). Fields are space-separated key=value pairs so a
// parser can pick them by name:
//
//	backend  backend name (%b)
//	server   server name (%s), "<NOSRV>" when no server was chosen
//	status   HTTP status code (%ST), -1 when no response
//	tt       total session time in ms (%Tt)
//	ta       active request time in ms, without idle time (%Ta)
//	tr       server response time in ms (%Tr), -1 when no response
//	tw       time waiting in queues in ms (%Tw)
//	tc       time to connect to the server in ms (%Tc)
//	bytes    bytes sent to the client (%B)
//	term     termination state (%tsc), "----" for a clean end
const LogFormat = "backend=%b server=%s status=%ST tt=%Tt ta=%Ta tr=%Tr tw=%Tw tc=%Tc bytes=%B term=%tsc"

// MaxWeight is the largest weight HAProxy accepts for a server.
const MaxWeight = 256

// maxAdminSocketPath is the longest stats socket path HAProxy 2.6 accepts:
// it binds to "<path>.<pid>.tmp" first and renames, so the limit is well
// under sun_path's 108 bytes ("socket path ... too long (max 97)").
const maxAdminSocketPath = 97

// maxLogSocketPath is sun_path's size minus the terminating NUL.
const maxLogSocketPath = 107

// File names inside Config.Dir.
const (
	cfgFile    = "haproxy.cfg"
	pidFile    = "haproxy.pid"
	socketFile = "admin.sock"
)

// AdminSocket is the admin socket path a process started with c listens on.
func (c Config) AdminSocket() string { return filepath.Join(c.Dir, socketFile) }

// Validate reports the first problem with c, naming the field and the value.
func (c Config) Validate() error {
	if c.Dir == "" {
		return errors.New("haproxyproc: Config.Dir is required")
	}
	if sock := c.AdminSocket(); len(sock) > maxAdminSocketPath {
		return fmt.Errorf("haproxyproc: Config.Dir %q is too long: admin socket path %q has %d bytes, HAProxy accepts at most %d",
			c.Dir, sock, len(sock), maxAdminSocketPath)
	}
	if err := validAddr(c.FrontendAddr); err != nil {
		return fmt.Errorf("haproxyproc: Config.FrontendAddr %q: %w", c.FrontendAddr, err)
	}
	if err := ValidName(c.Backend); err != nil {
		return fmt.Errorf("haproxyproc: Config.Backend: %w", err)
	}
	if len(c.Servers) == 0 {
		return errors.New("haproxyproc: Config.Servers is empty; need at least one server")
	}
	seen := make(map[string]bool, len(c.Servers))
	for i, s := range c.Servers {
		if err := ValidName(s.Name); err != nil {
			return fmt.Errorf("haproxyproc: Config.Servers[%d].Name: %w", i, err)
		}
		if seen[s.Name] {
			return fmt.Errorf("haproxyproc: Config.Servers[%d].Name %q is used twice", i, s.Name)
		}
		seen[s.Name] = true
		if err := validAddr(s.Addr); err != nil {
			return fmt.Errorf("haproxyproc: Config.Servers[%d].Addr %q (server %s): %w", i, s.Addr, s.Name, err)
		}
		if s.Weight < 0 || s.Weight > MaxWeight {
			return fmt.Errorf("haproxyproc: Config.Servers[%d].Weight %d (server %s): must be 0..%d", i, s.Weight, s.Name, MaxWeight)
		}
	}
	if c.LogSocket != "" {
		if !filepath.IsAbs(c.LogSocket) {
			// HAProxy reads a relative path as a host name.
			return fmt.Errorf("haproxyproc: Config.LogSocket %q must be an absolute path", c.LogSocket)
		}
		if len(c.LogSocket) > maxLogSocketPath {
			return fmt.Errorf("haproxyproc: Config.LogSocket %q has %d bytes, a unix socket path takes at most %d",
				c.LogSocket, len(c.LogSocket), maxLogSocketPath)
		}
		if strings.ContainsAny(c.LogSocket, " \t\n\"'#\\") {
			return fmt.Errorf("haproxyproc: Config.LogSocket %q must not contain spaces, quotes, '#' or backslashes", c.LogSocket)
		}
	}
	if strings.ContainsAny(c.Dir, " \t\n\"'#\\") {
		return fmt.Errorf("haproxyproc: Config.Dir %q must not contain spaces, quotes, '#' or backslashes", c.Dir)
	}
	return nil
}

// ValidName reports whether s is usable as an HAProxy proxy or server name.
// HAProxy accepts letters, digits, '-', '_', '.' and ':'; refusing the rest
// also keeps names from smuggling extra runtime API commands (';', newline).
func ValidName(s string) error {
	if s == "" {
		return errors.New("name is empty")
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9',
			r == '-', r == '_', r == '.', r == ':':
		default:
			return fmt.Errorf("name %q has character %q; HAProxy accepts letters, digits, '-', '_', '.', ':'", s, r)
		}
	}
	return nil
}

func validAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if host == "" {
		return errors.New("host is empty; want e.g. 127.0.0.1:8080")
	}
	if strings.ContainsAny(host, " \t\n\"'#\\") {
		return fmt.Errorf("host %q has a space, quote, '#' or backslash", host)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("port %q must be 1..65535, or 0 to pick a free one", port)
	}
	return nil
}

// Render returns the haproxy.cfg text for c.
func Render(c Config) (string, error) {
	if err := c.Validate(); err != nil {
		return "", err
	}
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	w("# Generated by switchyard internal/haproxyproc; edits are overwritten.")
	w("global")
	// level admin: the agent changes weights and states; expose-fd listeners
	// lets a future seamless reload take over the listening sockets.
	w("    stats socket %s mode 600 level admin expose-fd listeners", c.AdminSocket())
	w("    stats timeout 30s")
	if c.LogSocket != "" {
		// format raw: just the LogFormat line, no syslog header to strip.
		w("    log %s len 4096 format raw local0 info", c.LogSocket)
	}
	w("")
	w("defaults")
	w("    mode http")
	if c.LogSocket != "" {
		w("    log global")
		w("    option dontlognull")
		w("    log-format %q", LogFormat)
	}
	w("    timeout connect 2s")
	w("    timeout client 30s")
	w("    timeout server 30s")
	w("    timeout http-request 10s")
	w("    timeout http-keep-alive 5s")
	w("    timeout queue 5s")
	// A failed connect is retried, on another server if there is one, so a
	// backend that just went away costs latency rather than a client error;
	// econ/wretr/wredis in "show stat" still count it (a redispatch in the
	// failing server's wredis only).
	w("    retries 2")
	w("    option redispatch")
	w("")
	w("frontend fe_%s", c.Backend)
	w("    bind %s", c.FrontendAddr)
	w("    default_backend %s", c.Backend)
	w("")
	w("backend %s", c.Backend)
	// roundrobin is dynamic: weights set at run time take effect at once.
	w("    balance roundrobin")
	check := ""
	if c.HealthChecks {
		w("    option httpchk GET /")
		w("    default-server inter 500ms fall 2 rise 2")
		check = " check"
	}
	for _, s := range c.Servers {
		w("    server %s %s weight %d%s", s.Name, s.Addr, s.Weight, check)
	}
	return b.String(), nil
}
