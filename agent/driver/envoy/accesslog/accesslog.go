// Package accesslog lets a proxyless gRPC client report each RPC (which
// backend address answered, its status and how long it took) to the node's
// Switchyard agent, on the same Access Log Service stream
// (envoy.service.accesslog.v3) an Envoy's http_grpc access logger sends:
// load reports carry no latency, so this is where an xDS service's latency
// comes from.
package accesslog

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	alsdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	als "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// queueLen bounds the entries waiting to be sent; beyond it entries are
// dropped (and counted) rather than slowing the RPCs down.
const queueLen = 8192

// batchLen and flushEvery bound how long an entry waits to be sent.
const (
	batchLen   = 256
	flushEvery = 100 * time.Millisecond
	retryEvery = 250 * time.Millisecond
)

// Reporter streams one access log entry per RPC to an agent's Access Log
// Service.
type Reporter struct {
	addr, logName, node string
	log                 *slog.Logger
	queue               chan *alsdata.HTTPAccessLogEntry
	dropped             atomic.Uint64
	sent                atomic.Uint64
	cancel              context.CancelFunc
	done                chan struct{}
	closeOnce           sync.Once
}

// New starts a Reporter sending to the agent's xDS address (the same
// address the client's xDS bootstrap names). logName is the service's
// listener, the host of the dial target ("web" for xds:///web): the agent
// finds the service by it. node is the client's xDS node id.
func New(addr, logName, node string, log *slog.Logger) *Reporter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Reporter{
		addr: addr, logName: logName, node: node,
		log:    log.With("access_log", addr),
		queue:  make(chan *alsdata.HTTPAccessLogEntry, queueLen),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go r.run(ctx)
	return r
}

// UnaryClientInterceptor reports every unary RPC made through it.
func (r *Reporter) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		var p peer.Peer
		start := time.Now()
		err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
		r.Report(method, p.Addr, status.Code(err).String(), int(status.Code(err)), start, time.Since(start))
		return err
	}
}

// Report queues one RPC's entry: the backend address that served it (nil
// when none did, e.g. a fault filter abort), its gRPC status and duration.
func (r *Reporter) Report(method string, upstream net.Addr, codeName string, code int, start time.Time, took time.Duration) {
	e := &alsdata.HTTPAccessLogEntry{
		CommonProperties: &alsdata.AccessLogCommon{
			StartTime: timestamppb.New(start),
			Duration:  durationpb.New(took),
		},
		ProtocolVersion: alsdata.HTTPAccessLogEntry_HTTP2,
		Request:         &alsdata.HTTPRequestProperties{RequestMethod: core.RequestMethod_POST, Path: method},
		Response: &alsdata.HTTPResponseProperties{
			ResponseCode:        wrapperspb.UInt32(200),
			ResponseTrailers:    map[string]string{"grpc-status": strconv.Itoa(code)},
			ResponseCodeDetails: codeName,
		},
	}
	if tcp, ok := upstream.(*net.TCPAddr); ok {
		e.CommonProperties.UpstreamRemoteAddress = &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
			Address:       tcp.IP.String(),
			PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(tcp.Port)},
		}}}
	}
	select {
	case r.queue <- e:
	default:
		r.dropped.Add(1)
	}
}

// Dropped is how many entries were dropped because the agent could not
// take them fast enough (or was down).
func (r *Reporter) Dropped() uint64 { return r.dropped.Load() }

// Sent is how many entries reached the agent's stream.
func (r *Reporter) Sent() uint64 { return r.sent.Load() }

// Close stops the reporter; entries not sent yet are dropped.
func (r *Reporter) Close() {
	r.closeOnce.Do(func() {
		r.cancel()
		<-r.done
	})
}

func (r *Reporter) run(ctx context.Context) {
	defer close(r.done)
	cc, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		r.log.Error("access log: cannot dial the agent", "err", err)
		return
	}
	defer cc.Close()
	client := als.NewAccessLogServiceClient(cc)
	for ctx.Err() == nil {
		err := r.stream(ctx, client)
		if ctx.Err() != nil {
			return
		}
		r.log.Debug("access log stream ended; retrying", "err", err)
		t := time.NewTimer(retryEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// stream sends batches on one stream until it fails; the first message of
// a stream carries the identifier.
func (r *Reporter) stream(ctx context.Context, client als.AccessLogServiceClient) error {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := client.StreamAccessLogs(sctx, grpc.WaitForReady(true))
	if err != nil {
		return err
	}
	first := true
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	var batch []*alsdata.HTTPAccessLogEntry
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		msg := &als.StreamAccessLogsMessage{LogEntries: &als.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &als.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
		}}
		if first {
			msg.Identifier = &als.StreamAccessLogsMessage_Identifier{Node: &core.Node{Id: r.node}, LogName: r.logName}
		}
		if err := s.Send(msg); err != nil {
			r.dropped.Add(uint64(len(batch)))
			batch = nil
			// The agent's reason, if it ended the stream, is in the status.
			if _, cerr := s.CloseAndRecv(); cerr != nil {
				return cerr
			}
			return err
		}
		first = false
		r.sent.Add(uint64(len(batch)))
		batch = nil
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-r.queue:
			batch = append(batch, e)
			if len(batch) >= batchLen {
				if err := flush(); err != nil {
					return err
				}
			}
		case <-tick.C:
			if err := flush(); err != nil {
				return err
			}
		}
	}
}
