package agent

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// serveHTTP serves /metrics and /healthz on ln, the config's httpAddr,
// until the returned server is shut down.
func (a *Agent) serveHTTP(ln net.Listener) *http.Server {
	mux := http.NewServeMux()
	if a.gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(a.gatherer, promhttp.HandlerOpts{}))
	} else {
		a.log.Warn("no prometheus Gatherer given; /metrics is not served")
	}
	mux.HandleFunc("GET /healthz", a.healthz)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	a.mu.Lock()
	a.httpAddr = ln.Addr().String()
	a.mu.Unlock()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "err", err)
		}
	}()
	a.log.Info("serving /metrics and /healthz", "addr", ln.Addr().String())
	return srv
}

// healthz answers 200 when the agent is connected to the bus, can drive
// every proxy, and every proxy was read back doing what the agent applied;
// else 503, and the body says why.
func (a *Agent) healthz(w http.ResponseWriter, _ *http.Request) {
	var problems []string
	select {
	case <-a.ready:
	default:
		problems = append(problems, "agent: starting")
	}
	if nc := a.conn(); nc == nil || !nc.IsConnected() {
		problems = append(problems, "nats: not connected")
	}
	for _, s := range a.status(false).GetServices() {
		if s.GetDriver() == sv1.DriverHealth_DRIVER_HEALTH_DEGRADED {
			problems = append(problems, fmt.Sprintf("service %s: driver degraded: %s", s.GetService(), s.GetMessage()))
		}
		if !s.GetObservedMatches() {
			why := s.GetDrift()
			if why == "" {
				why = "not read back yet"
			}
			problems = append(problems, fmt.Sprintf("service %s: proxy does not do what was applied: %s", s.GetService(), why))
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(problems, "\n"))
		return
	}
	fmt.Fprintln(w, "ok")
}

// listen binds the HTTP address; split out so Run reports a busy port as a
// start error.
func listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on httpAddr %s: %w", addr, err)
	}
	return ln, nil
}
