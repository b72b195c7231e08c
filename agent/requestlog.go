package agent

import (
	"log/slog"
	"maps"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/internal/sketch"
)

// backendWindow is one backend's real traffic in the current window.
type backendWindow struct {
	requests, errors uint64
	latency          *sketch.Sketch
}

// requestWindow accumulates one service's request-log lines between two
// telemetry ticks. The log reader adds to it; the telemetry loop swaps it.
type requestWindow struct {
	// servers maps an HAProxy server name to its spec backend name; fixed.
	servers map[string]string

	mu  sync.Mutex
	cur map[string]*backendWindow // spec backend -> window
}

func newRequestWindow(servers map[string]string) *requestWindow {
	byServer := make(map[string]string, len(servers))
	for spec, srv := range servers {
		byServer[srv] = spec
	}
	w := &requestWindow{servers: byServer}
	w.cur = w.fresh()
	return w
}

func (w *requestWindow) fresh() map[string]*backendWindow {
	m := make(map[string]*backendWindow, len(w.servers))
	for _, spec := range w.servers {
		m[spec] = &backendWindow{latency: sketch.New()}
	}
	return m
}

// add counts one request; it reports false for a server that is none of the
// service's backends (including "<NOSRV>").
func (w *requestWindow) add(rec *haproxy.LogRecord) bool {
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

// swap returns the window so far and starts a new one.
func (w *requestWindow) swap() map[string]*backendWindow {
	next := w.fresh()
	w.mu.Lock()
	cur := w.cur
	w.cur = next
	w.mu.Unlock()
	return cur
}

// logSink reads one HAProxy log socket and hands each request to the window
// of the service whose HAProxy backend it names. Several services of one
// HAProxy may share a socket.
type logSink struct {
	ln        *haproxy.LogListener
	byBackend map[string]*requestWindow // HAProxy backend -> window
	log       *slog.Logger

	counted, notRequest, unknownBackend, unknownServer prometheus.Counter
}

func newLogSink(ln *haproxy.LogListener, m *metrics, log *slog.Logger) *logSink {
	return &logSink{
		ln:             ln,
		byBackend:      map[string]*requestWindow{},
		log:            log.With("log_socket", ln.Path()),
		counted:        m.logLines.WithLabelValues(logCounted),
		notRequest:     m.logLines.WithLabelValues(logNotRequest),
		unknownBackend: m.logLines.WithLabelValues(logUnknownBackend),
		unknownServer:  m.logLines.WithLabelValues(logUnknownServer),
	}
}

// handle is called for every datagram, on the reader's goroutine only.
func (s *logSink) handle(line []byte) {
	var rec haproxy.LogRecord
	if err := haproxy.ParseLogLine(line, &rec); err != nil {
		s.notRequest.Inc()
		return
	}
	w, ok := s.byBackend[string(rec.Backend)]
	if !ok {
		s.unknownBackend.Inc()
		return
	}
	if !w.add(&rec) {
		s.unknownServer.Inc()
		return
	}
	s.counted.Inc()
}

// serve reads until the listener is closed.
func (s *logSink) serve() {
	s.log.Info("reading HAProxy request log", "backends", slices.Sorted(maps.Keys(s.byBackend)))
	if err := s.ln.Serve(s.handle); err != nil {
		s.log.Error("request log reader stopped; telemetry has no latency until restart", "err", err)
	}
}
