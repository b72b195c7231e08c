package haproxy

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/internal/names"
)

// Name is the key of an HAProxy section in an agent config.
const Name = "haproxy"

func init() {
	driver.Register(driver.Kind{Name: Name, NewSection: func() driver.Section { return &Section{} }})
}

// Section is a service's "haproxy:" section in an agent config: it drives
// the service through HAProxy's runtime API.
type Section struct {
	// Socket is the path of HAProxy's admin socket.
	Socket string `yaml:"socket"`
	// Backend is the HAProxy backend holding the service's servers.
	Backend string `yaml:"backend"`
	// Servers maps a backend name of the rollout spec ("blue", "green") to
	// an HAProxy server of Backend.
	Servers map[string]string `yaml:"servers"`
	// Timeout bounds one runtime API command; zero leaves the driver's
	// default.
	Timeout time.Duration `yaml:"timeout"`
	// LogSocket, when set, is the unix datagram socket the agent creates
	// and HAProxy sends its per-request log lines to (haproxy.cfg: "log
	// <path> len 4096 format raw local0 info" and the log-format of
	// haproxyproc.LogFormat). It gives per-request errors and the latency
	// sketch; without it telemetry comes from "show stat" alone and has no
	// latency.
	LogSocket string `yaml:"logSocket"`
}

var (
	_ driver.Section = (*Section)(nil)
	_ driver.Claimer = (*Section)(nil)
)

// Kind implements driver.Section.
func (s *Section) Kind() string { return Name }

// Backends implements driver.Section.
func (s *Section) Backends() []string { return slices.Sorted(maps.Keys(s.Servers)) }

// Clone returns a deep copy.
func (s *Section) Clone() driver.Section {
	out := *s
	out.Servers = maps.Clone(s.Servers)
	return &out
}

// Claims implements driver.Claimer. A backend of one HAProxy is steered by
// one service: two would each read the other's weights back as drift and
// undo them. One log socket may serve several services of one HAProxy,
// whose lines are told apart by their HAProxy backend, which must then
// differ.
func (s *Section) Claims() map[string]string {
	out := map[string]string{"backend": fmt.Sprintf("HAProxy backend %q on admin socket %s", s.Backend, filepath.Clean(s.Socket))}
	if s.LogSocket != "" {
		out["logSocket"] = fmt.Sprintf("log socket %s with HAProxy backend %q", filepath.Clean(s.LogSocket), s.Backend)
	}
	return out
}

// maxUnixSocketPath is sun_path's size on Linux minus the terminating NUL.
const maxUnixSocketPath = 107

// Validate implements driver.Section.
func (s *Section) Validate() []error {
	var probs []error
	bad := func(sub, format string, args ...any) {
		probs = append(probs, fmt.Errorf("%s: %s", sub, fmt.Sprintf(format, args...)))
	}
	if s.Socket == "" {
		bad("socket", "required")
	}
	if s.Backend == "" {
		bad("backend", "required")
	}
	if len(s.Servers) == 0 {
		bad("servers", "required: map each spec backend (blue, green) to an HAProxy server")
	}
	usedBy := map[string]string{} // HAProxy server -> spec backend
	for _, backend := range slices.Sorted(maps.Keys(s.Servers)) {
		if err := names.Validate(backend); err != nil {
			bad("servers", "%v", err)
		}
		srv := s.Servers[backend]
		if srv == "" {
			bad("servers."+backend, "required: the HAProxy server name")
			continue
		}
		// One server cannot carry two weights: a switch would move nothing.
		if other, dup := usedBy[srv]; dup {
			bad("servers."+backend, "HAProxy server %q is also servers.%s's; each spec backend needs a server of its own", srv, other)
		}
		usedBy[srv] = backend
	}
	if s.Timeout < 0 {
		bad("timeout", "%s: must not be negative", s.Timeout)
	}
	if s.LogSocket != "" {
		switch {
		case !filepath.IsAbs(s.LogSocket):
			bad("logSocket", "%q: want an absolute path", s.LogSocket)
		case len(s.LogSocket) > maxUnixSocketPath:
			bad("logSocket", "%q has %d bytes; a unix socket path takes at most %d", s.LogSocket, len(s.LogSocket), maxUnixSocketPath)
		}
	}
	return probs
}

// Config is the driver config the section describes.
func (s *Section) Config() Config {
	return Config{Socket: s.Socket, Backend: s.Backend, Servers: s.Servers, Timeout: s.Timeout}
}

// Open implements driver.Section: the runtime API driver and, with a log
// socket, the request log as its telemetry source.
func (s *Section) Open(env driver.Env) (driver.Driver, error) {
	d, err := New(s.Config())
	if err != nil {
		return nil, err
	}
	if s.LogSocket == "" {
		return d, nil
	}
	win, release, err := attachLog(s.LogSocket, s.Backend, s.Servers, env)
	if err != nil {
		return nil, fmt.Errorf("%s.logSocket: %w", Name, err)
	}
	return &loggedDriver{Driver: d, win: win, release: release}, nil
}

// loggedDriver is the runtime API driver with the request log of its
// backend as its per-request telemetry.
type loggedDriver struct {
	*Driver
	win     *RequestWindow
	release func() error
}

var _ driver.WindowSource = (*loggedDriver)(nil)

// TakeWindow implements driver.WindowSource.
func (d *loggedDriver) TakeWindow() (map[string]driver.Window, bool) { return d.win.Take(), true }

// Close closes the driver and lets go of the log socket.
func (d *loggedDriver) Close() error {
	err := d.Driver.Close()
	if rerr := d.release(); err == nil {
		err = rerr
	}
	return err
}
