package coordinator

import (
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// The profiling listener: Go's net/http/pprof handlers on a listener of
// their own, off unless --pprof-addr names a loopback address. Profiles
// show the code's paths and the heap's shape, and a CPU or trace request
// makes the process do extra work for as long as it asks, so they are
// never served beside the read API and never beyond the host: an operator
// reaches them over ssh (or a port forward) from the coordinator's host.

// checkPprofAddr refuses an address whose host is not a loopback IP or
// "localhost"; empty (off) passes.
func checkPprofAddr(addr string) error {
	if addr == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("coordinator: --pprof-addr %q: %w (want host:port on loopback, e.g. 127.0.0.1:6060)", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("coordinator: --pprof-addr %q: profiles are served on loopback only (127.0.0.1, ::1 or localhost), not on %q", addr, host)
	}
	return nil
}

// startPprof serves /debug/pprof/ on cfg.PprofAddr when it is set.
func (s *Server) startPprof() error {
	if s.cfg.PprofAddr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	ln, err := net.Listen("tcp", s.cfg.PprofAddr)
	if err != nil {
		return fmt.Errorf("coordinator: --pprof-addr %s: %w", s.cfg.PprofAddr, err)
	}
	s.pprofAddr = ln.Addr()
	// No write timeout: a CPU profile answers after the seconds it was
	// asked for.
	s.pprofSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.pprofSrv.Serve(ln); err != nil && err != http.ErrServerClosed {
			s.log.Error("pprof server", "err", err)
		}
	}()
	s.log.Warn("profiling endpoints served", "pprof", s.pprofAddr.String())
	return nil
}

// PprofAddr is the address the profiling listener listens on; empty when
// off.
func (s *Server) PprofAddr() string {
	if s.pprofAddr == nil {
		return ""
	}
	return s.pprofAddr.String()
}
