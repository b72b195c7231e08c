// Command backend is the tiny HTTP and gRPC service integration tests and the
// demo put behind HAProxy or xDS clients as "blue" and "green": it says who
// answered, and can be told
// to fail a share of requests or to answer slowly, so guardrail and fault
// tests have a misbehaving green to catch.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		addr      = flag.String("addr", "127.0.0.1:0", "address to listen on; only 127.0.0.1 makes sense in tests")
		name      = flag.String("name", "", "backend name returned in the body and the X-Backend header (e.g. blue, green)")
		node      = flag.String("node", "", "edge node this backend sits behind, returned in the X-Node header")
		errorRate = flag.Float64("error-rate", 0, "share of requests to GET / answered with 503, 0..1")
		latency   = flag.Duration("latency", 0, "delay added before every answer to GET /")
	)
	flag.Parse()
	if *name == "" {
		return errors.New("--name is required")
	}
	if *errorRate < 0 || *errorRate > 1 {
		return fmt.Errorf("--error-rate %v: want a share between 0 and 1", *errorRate)
	}
	if *latency < 0 {
		return fmt.Errorf("--latency %v: want a duration >= 0", *latency)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("backend", *name, "node", *node)

	// SIGTERM is how the harness stops every process; the backend drains and
	// exits 0 so an unclean exit in a test log means something really broke.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	srv := &http.Server{
		Handler:           handler(*name, *node, *errorRate, *latency),
		ReadHeaderTimeout: 5 * time.Second,
	}
	// gRPC clients speak HTTP/2 without TLS (prior knowledge) on the same
	// port as the HTTP checks.
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("backend listening", "addr", ln.Addr().String(), "error_rate", *errorRate, "latency", *latency)

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("backend stopped")
	return nil
}

// behavior is how GET / answers; tests change it while the backend runs
// (PUT /behavior) to make a green go bad in the middle of a rollout.
type behavior struct {
	mu        sync.Mutex
	errorRate float64
	latency   time.Duration
	// latencyShare is the share of requests latency delays (1: all).
	latencyShare float64
}

// get is the error rate and the delay of one request.
func (b *behavior) get() (float64, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.latencyShare < 1 && rand.Float64() >= b.latencyShare {
		return b.errorRate, 0
	}
	return b.errorRate, b.latency
}

func handler(name, node string, errorRate float64, latency time.Duration) http.Handler {
	mux := http.NewServeMux()
	bh := &behavior{errorRate: errorRate, latency: latency, latencyShare: 1}
	mux.HandleFunc("PUT /behavior", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		rate, err := strconv.ParseFloat(q.Get("error-rate"), 64)
		if err != nil || rate < 0 || rate > 1 {
			http.Error(w, "error-rate: want a share between 0 and 1", http.StatusBadRequest)
			return
		}
		lat := time.Duration(0)
		if v := q.Get("latency"); v != "" {
			if lat, err = time.ParseDuration(v); err != nil || lat < 0 {
				http.Error(w, "latency: want a duration >= 0", http.StatusBadRequest)
				return
			}
		}
		share := 1.0
		if v := q.Get("latency-share"); v != "" {
			if share, err = strconv.ParseFloat(v, 64); err != nil || share < 0 || share > 1 {
				http.Error(w, "latency-share: want a share between 0 and 1", http.StatusBadRequest)
				return
			}
		}
		bh.mu.Lock()
		bh.errorRate, bh.latency, bh.latencyShare = rate, lat, share
		bh.mu.Unlock()
		fmt.Fprintf(w, "error-rate=%v latency=%v latency-share=%v\n", rate, lat, share)
	})
	// /healthz ignores error-rate and latency on purpose: a backend that
	// fails real traffic while passing its health check is exactly the bad
	// green that only traffic analysis catches.
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Backend", name)
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		errorRate, latency := bh.get()
		if latency > 0 {
			t := time.NewTimer(latency)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		w.Header().Set("X-Backend", name)
		if node != "" {
			w.Header().Set("X-Node", node)
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if errorRate > 0 && rand.Float64() < errorRate {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, name)
	})
	return withGRPC(mux, name, node, bh)
}
