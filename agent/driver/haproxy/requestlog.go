package haproxy

import (
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/internal/sketch"
)

// Request-log line results, the values of the "result" label of
// switchyard_agent_log_lines_total.
const (
	LogCounted = "counted"
	// LogNotRequest: not a request line of the expected format (HAProxy
	// also sends its alerts to the log target).
	LogNotRequest = "not_request"
	// LogUnknownBackend: a request of an HAProxy backend no service of this
	// socket drives.
	LogUnknownBackend = "unknown_backend"
	// LogUnknownServer: a request of a server that is not one of the
	// service's backends, including "<NOSRV>" (no server was chosen).
	LogUnknownServer = "unknown_server"
)

// backendWindow is one backend's real traffic in the current window.
type backendWindow struct {
	requests, errors uint64
	latency          *sketch.Sketch
}

// RequestWindow accumulates one service's request-log lines between two
// telemetry ticks. The log reader adds to it; the telemetry loop takes it.
type RequestWindow struct {
	// servers maps an HAProxy server name to its spec backend name; fixed.
	servers map[string]string

	mu  sync.Mutex
	cur map[string]*backendWindow // spec backend -> window
}

// NewRequestWindow returns a window for the spec backends mapped to
// HAProxy servers by servers.
func NewRequestWindow(servers map[string]string) *RequestWindow {
	byServer := make(map[string]string, len(servers))
	for spec, srv := range servers {
		byServer[srv] = spec
	}
	w := &RequestWindow{servers: byServer}
	w.cur = w.fresh()
	return w
}

func (w *RequestWindow) fresh() map[string]*backendWindow {
	m := make(map[string]*backendWindow, len(w.servers))
	for _, spec := range w.servers {
		m[spec] = &backendWindow{latency: sketch.New()}
	}
	return m
}

// Add counts one request; it reports false for a server that is none of the
// service's backends (including "<NOSRV>").
func (w *RequestWindow) Add(rec *LogRecord) bool {
	spec, ok := w.servers[string(rec.Server)]
	if !ok {
		return false
	}
	failed := rec.Failed()
	lat, hasLat := rec.Latency()
	w.mu.Lock()
	bw := w.cur[spec]
	bw.requests++
	if failed {
		bw.errors++
	}
	if hasLat {
		bw.latency.Add(lat.Seconds())
	}
	w.mu.Unlock()
	return true
}

// Take returns the window so far, by spec backend, and starts a new one.
func (w *RequestWindow) Take() map[string]driver.Window {
	next := w.fresh()
	w.mu.Lock()
	cur := w.cur
	w.cur = next
	w.mu.Unlock()
	out := make(map[string]driver.Window, len(cur))
	for b, bw := range cur {
		out[b] = driver.Window{Requests: bw.requests, Errors: bw.errors, Latency: bw.latency}
	}
	return out
}

// LogSink reads one HAProxy log socket and hands each request to the window
// of the service whose HAProxy backend it names. Several services of one
// HAProxy may share a socket.
type LogSink struct {
	ln  *LogListener
	log *slog.Logger

	// routes maps an HAProxy backend to its window; replaced whole (under
	// mu) when a service comes or goes, read without a lock per line.
	mu     sync.Mutex
	routes atomic.Pointer[map[string]*RequestWindow]

	counted, notRequest, unknownBackend, unknownServer prometheus.Counter
}

// NewLogSink reads ln into windows, counting lines by result in lines
// (labelled by result).
func NewLogSink(ln *LogListener, lines *prometheus.CounterVec, log *slog.Logger) *LogSink {
	s := &LogSink{
		ln:             ln,
		log:            log.With("log_socket", ln.Path()),
		counted:        lines.WithLabelValues(LogCounted),
		notRequest:     lines.WithLabelValues(LogNotRequest),
		unknownBackend: lines.WithLabelValues(LogUnknownBackend),
		unknownServer:  lines.WithLabelValues(LogUnknownServer),
	}
	s.routes.Store(&map[string]*RequestWindow{})
	return s
}

// Route sends the lines of an HAProxy backend to w.
func (s *LogSink) Route(backend string, w *RequestWindow) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(*s.routes.Load())
	next[backend] = w
	s.routes.Store(&next)
}

// routed reports whether backend's lines have a window.
func (s *LogSink) routed(backend string) bool {
	_, ok := (*s.routes.Load())[backend]
	return ok
}

func (s *LogSink) unroute(backend string) (empty bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := maps.Clone(*s.routes.Load())
	delete(next, backend)
	s.routes.Store(&next)
	return len(next) == 0
}

// Handle counts one datagram; the reader's goroutine calls it.
func (s *LogSink) Handle(line []byte) {
	var rec LogRecord
	if err := ParseLogLine(line, &rec); err != nil {
		s.notRequest.Inc()
		return
	}
	w, ok := (*s.routes.Load())[string(rec.Backend)]
	if !ok {
		s.unknownBackend.Inc()
		return
	}
	if !w.Add(&rec) {
		s.unknownServer.Inc()
		return
	}
	s.counted.Inc()
}

// Serve reads until the listener is closed.
func (s *LogSink) Serve() {
	s.log.Info("reading HAProxy request log")
	if err := s.ln.Serve(s.Handle); err != nil {
		s.log.Error("request log reader stopped; telemetry has no latency until restart", "err", err)
	}
}

// sinks are the open log sockets of this process, by path: services of one
// HAProxy share a socket, whose reader runs while any of them is open.
var (
	sinksMu sync.Mutex
	sinks   = map[string]*openSink{}
)

type openSink struct {
	sink *LogSink
	done chan struct{}
}

// attachLog routes backend's lines on the socket at path to a new window,
// binding the socket if no service of this process has yet. release stops
// the routing and closes the socket after its last service.
func attachLog(path, backend string, servers map[string]string, env driver.Env) (*RequestWindow, func() error, error) {
	sinksMu.Lock()
	defer sinksMu.Unlock()
	o, ok := sinks[path]
	if !ok {
		ln, err := ListenLog(path)
		if err != nil {
			return nil, nil, err
		}
		log := env.Logger
		if log == nil {
			log = slog.New(slog.DiscardHandler)
		}
		lines := env.LogLines
		if lines == nil {
			lines = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "switchyard_agent_log_lines_total"}, []string{"result"})
		}
		o = &openSink{sink: NewLogSink(ln, lines, log), done: make(chan struct{})}
		sinks[path] = o
		go func() {
			defer close(o.done)
			o.sink.Serve()
		}()
	}
	if o.sink.routed(backend) {
		return nil, nil, fmt.Errorf("%s: HAProxy backend %q already has a reader on this socket", path, backend)
	}
	win := NewRequestWindow(servers)
	o.sink.Route(backend, win)
	var once sync.Once
	release := func() (err error) {
		once.Do(func() {
			sinksMu.Lock()
			defer sinksMu.Unlock()
			if !o.sink.unroute(backend) {
				return
			}
			delete(sinks, path)
			err = o.sink.ln.Close()
			<-o.done
		})
		return err
	}
	return win, release, nil
}
