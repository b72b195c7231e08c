package coordinator

import (
	"crypto/tls"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (s *Server) startHTTP() error {
	if s.cfg.HTTPAddr == "" {
		return nil
	}
	mux := http.NewServeMux()
	if s.cfg.Gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("GET /healthz", s.healthz)
	s.apiRoutes(mux)
	s.dashboardRoutes(mux)
	s.clusterRoutes(mux)
	s.epochRoutes(mux)
	ln, err := net.Listen("tcp", s.cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("coordinator: --http-addr %s: %w", s.cfg.HTTPAddr, err)
	}
	s.httpAddr = ln.Addr()
	s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	// Live streams (/v1/events) end when the server shuts down.
	s.httpSrv.RegisterOnShutdown(func() { s.closeOnce.Do(func() { close(s.closing) }) })
	if s.clusterTLS != nil {
		s.httpSrv.ErrorLog = log.New(&handshakeLog{s: s}, "", 0)
		s.httpSrv.TLSConfig = httpTLS(s.clusterTLS)
		ln = tls.NewListener(ln, s.httpSrv.TLSConfig)
	}
	go func() {
		if err := s.httpSrv.Serve(ln); err != nil && err != http.ErrServerClosed {
			s.log.Error("http server", "err", err)
		}
	}()
	return nil
}

// healthz answers 200 when this coordinator knows a leader, is connected to
// NATS, and (on the leader) its writes of desired state reach the bus; else
// 503, with every problem named in the body.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	var problems []string
	_, leader := s.raft.LeaderWithID()
	if leader == "" {
		problems = append(problems, "raft: no leader")
	}
	if s.nc == nil || !s.nc.IsConnected() {
		problems = append(problems, "nats: not connected")
	}
	if since, err := s.publisher.health(); err != nil {
		problems = append(problems, fmt.Sprintf("publish: writes of desired state to the bus failing for %s: %v",
			time.Since(since).Round(time.Second), err))
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if len(problems) > 0 {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, strings.Join(problems, "\n"))
		return
	}
	fmt.Fprintf(w, "ok leader=%s\n", leader)
}
