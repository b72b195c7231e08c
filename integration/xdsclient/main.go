// Command xdsclient is a proxyless gRPC client of one service, resolved
// through an agent's xDS server (xds:///<listener>), with a small HTTP
// front: GET / makes one RPC and answers like the test backend does through
// HAProxy (200, the backend's name in the body and X-Backend, its node in
// X-Node), or 503 with the RPC's error. It reports every RPC to the
// agent's access log service (package accesslog), as a production client
// would to give the service's latency. Integration tests and the Envoy docs
// put it where an HAProxy frontend would be.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	_ "google.golang.org/grpc/xds" // the xds:/// resolver and its balancers

	"github.com/switchyard/switchyard/agent/driver/envoy/accesslog"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "xdsclient:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		xdsAddr  = flag.String("xds", "", "the agent's xDS server, ip:port (required)")
		node     = flag.String("node", "", "this client's xDS node id (required)")
		listener = flag.String("listener", "web", "the listener to ask for: the service's dial target is xds:///<listener>")
		httpAddr = flag.String("http", "127.0.0.1:0", "address of the HTTP front")
		timeout  = flag.Duration("timeout", 5*time.Second, "bound on one RPC")
	)
	flag.Parse()
	if *xdsAddr == "" || *node == "" {
		return errors.New("--xds and --node are required")
	}
	// grpc-go reads its bootstrap from the environment when the process
	// starts, as a production client gets it: without one, the process
	// starts itself again with the bootstrap the flags describe.
	if os.Getenv("GRPC_XDS_BOOTSTRAP_CONFIG") == "" && os.Getenv("GRPC_XDS_BOOTSTRAP") == "" {
		bootstrap := fmt.Sprintf(`{"xds_servers":[{"server_uri":%q,"channel_creds":[{"type":"insecure"}],"server_features":["xds_v3"]}],"node":{"id":%q}}`, *xdsAddr, *node)
		self, err := os.Executable()
		if err != nil {
			return err
		}
		return syscall.Exec(self, os.Args, append(os.Environ(), "GRPC_XDS_BOOTSTRAP_CONFIG="+bootstrap))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("client", *node)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	// Never idle: the client asks for its listener at once and stays
	// subscribed, as a serving process does, so the agent sees it before
	// the first RPC.
	// Every RPC's backend, status and duration go to the agent's access
	// log service: the service's latency telemetry.
	rep := accesslog.New(*xdsAddr, *listener, *node, log)
	defer rep.Close()
	cc, err := grpc.NewClient("xds:///"+*listener, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithIdleTimeout(0),
		grpc.WithUnaryInterceptor(rep.UnaryClientInterceptor()))
	if err != nil {
		return fmt.Errorf("dial xds:///%s: %w", *listener, err)
	}
	defer cc.Close()
	cc.Connect()
	hc := healthpb.NewHealthClient(cc)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		var md metadata.MD
		_, err := hc.Check(rctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
		if v := md.Get("x-backend"); len(v) > 0 {
			w.Header().Set("X-Backend", v[0])
		}
		if v := md.Get("x-node"); len(v) > 0 {
			w.Header().Set("X-Node", v[0])
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, w.Header().Get("X-Backend"))
	})
	ln, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *httpAddr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("xds client listening", "http", ln.Addr().String(), "target", "xds:///"+*listener, "xds", *xdsAddr)
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
