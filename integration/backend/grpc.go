package main

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// withGRPC serves gRPC requests (HTTP/2, content-type application/grpc) on
// the same port as h. The backend's RPC is grpc.health.v1.Health/Check: the
// answer names the backend and node in the x-backend and x-node headers,
// and follows the same behavior as GET / (error-rate answers UNAVAILABLE,
// latency delays).
func withGRPC(h http.Handler, name, node string, bh *behavior) http.Handler {
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
		errorRate, latency := bh.get()
		if latency > 0 {
			t := time.NewTimer(latency)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
		if err := grpc.SetHeader(ctx, metadata.Pairs("x-backend", name, "x-node", node)); err != nil {
			return nil, err
		}
		if errorRate > 0 && rand.Float64() < errorRate {
			return nil, status.Error(codes.Unavailable, name+": failing on purpose")
		}
		return next(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			srv.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}
