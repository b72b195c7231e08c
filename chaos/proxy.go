package chaos

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// FaultProxy is a userspace proxy an agent puts between its proxy and one
// backend, for faults the host's network stack cannot do here (no tc, no
// iptables): HTTP errors and delays for a share of requests, and TCP
// latency, resets, blackholes and bandwidth limits. It listens on a free
// 127.0.0.1 port; the agent points the proxy's server at it and back.
type FaultProxy struct {
	target string
	ln     net.Listener
	srv    *http.Server // HTTP faults
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	// stop ends, when the proxy closes, every wait the fault makes a
	// connection do (a latency, a bandwidth limit's tokens, a dial): a
	// revert must not wait out the fault it ends.
	stop     context.Context
	stopWait context.CancelFunc
	// waiting counts the connections and requests in a latency or delay
	// wait now.
	waiting atomic.Int32

	http *sv1.HTTPFault
	tcp  *sv1.TCPFault
	rand func() float64
}

// NewHTTPFaultProxy returns a proxy to target that answers ErrorPercent of
// requests with Status and delays DelayPercent of them by Delay.
func NewHTTPFaultProxy(target string, f *sv1.HTTPFault) *FaultProxy {
	p := &FaultProxy{target: target, http: f, conns: map[net.Conn]struct{}{}, rand: rand.Float64}
	p.stop, p.stopWait = context.WithCancel(context.Background())
	return p
}

// NewTCPFaultProxy returns a proxy to target with a TCP-level fault.
func NewTCPFaultProxy(target string, f *sv1.TCPFault) *FaultProxy {
	p := &FaultProxy{target: target, tcp: f, conns: map[net.Conn]struct{}{}, rand: rand.Float64}
	p.stop, p.stopWait = context.WithCancel(context.Background())
	return p
}

// Addr is where the proxy listens, once started.
func (p *FaultProxy) Addr() string {
	if p.ln == nil {
		return ""
	}
	return p.ln.Addr().String()
}

// Start listens and serves. Starting a started proxy is a no-op.
func (p *FaultProxy) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("fault proxy: listen: %w", err)
	}
	p.ln = ln
	if p.http != nil {
		return p.startHTTP()
	}
	p.wg.Add(1)
	go p.acceptTCP()
	return nil
}

func (p *FaultProxy) startHTTP() error {
	u, err := url.Parse("http://" + p.target)
	if err != nil {
		return fmt.Errorf("fault proxy: target %q: %w", p.target, err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
		http.Error(w, "fault proxy: backend unreachable: "+err.Error(), http.StatusBadGateway)
	}
	f := p.http
	status := int(f.GetStatus())
	if status == 0 {
		status = http.StatusServiceUnavailable
	}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := f.GetDelay().AsDuration(); d > 0 && p.rand()*100 < float64(f.GetDelayPercent()) {
			if !p.sleep(r.Context().Done(), d) {
				if r.Context().Err() == nil {
					// The fault is over: the request goes to the
					// backend as it would have without it.
					rp.ServeHTTP(w, r)
				}
				return
			}
		}
		if p.rand()*100 < float64(f.GetErrorPercent()) {
			w.Header().Set("X-Switchyard-Fault", "http")
			http.Error(w, "injected by a Switchyard drill", status)
			return
		}
		rp.ServeHTTP(w, r)
	})
	p.srv = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		_ = p.srv.Serve(p.ln)
	}()
	return nil
}

func (p *FaultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *FaultProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *FaultProxy) acceptTCP() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			_ = c.Close()
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer p.untrack(c)
			p.serveTCP(c)
		}()
	}
}

func (p *FaultProxy) serveTCP(c net.Conn) {
	switch p.tcp.GetKind() {
	case "reset":
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // close sends RST
		}
		return
	case "blackhole":
		_, _ = io.Copy(io.Discard, c) // accept, read, never answer
		return
	}
	dctx, cancel := context.WithTimeout(p.stop, 5*time.Second)
	up, err := (&net.Dialer{}).DialContext(dctx, "tcp", p.target)
	cancel()
	if err != nil {
		return
	}
	if !p.track(up) {
		_ = up.Close()
		return
	}
	defer p.untrack(up)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, delay time.Duration, lim *rate.Limiter) {
		defer func() { done <- struct{}{} }()
		size := 32 << 10
		if lim != nil {
			// Every byte is paid for: a read is at most what the limiter
			// can grant at once, so a limit below the buffer holds.
			size = min(size, lim.Burst())
		}
		buf := make([]byte, size)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if delay > 0 && !p.sleep(nil, delay) {
					return
				}
				if lim != nil && lim.WaitN(p.stop, n) != nil {
					return
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				return
			}
		}
	}
	var delay time.Duration
	var lim *rate.Limiter
	switch p.tcp.GetKind() {
	case "latency":
		delay = p.tcp.GetLatency().AsDuration()
	case "bandwidth":
		// A limit past the largest int is no limit worth the name; as an
		// int it would turn negative and let nothing through.
		bps := int(min(p.tcp.GetBytesPerSecond(), math.MaxInt))
		lim = rate.NewLimiter(rate.Limit(bps), max(bps, 1))
	}
	// Latency applies to the request direction: each request waits once.
	go pipe(up, c, delay, nil)
	go pipe(c, up, 0, lim)
	<-done
	<-done
}

// sleep waits d; it returns false, early, when the proxy closes or done
// is closed.
func (p *FaultProxy) sleep(done <-chan struct{}, d time.Duration) bool {
	p.waiting.Add(1)
	defer p.waiting.Add(-1)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stop.Done():
		return false
	case <-done:
		return false
	}
}

// closeWait bounds Close: long enough for an HTTP request in flight to the
// backend to finish, short enough for a revert.
const closeWait = 2 * time.Second

// Close stops the proxy and cuts every connection through it, waiting at
// most a couple of seconds for HTTP requests in flight. Closing a closed
// proxy is a no-op.
func (p *FaultProxy) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	return p.Shutdown(ctx)
}

// Shutdown stops the proxy and cuts every connection through it; the
// faults' own waits (a latency, a bandwidth limit, an HTTP delay) end at
// once. HTTP requests in flight may finish until ctx ends, then they are
// cut too. Shutdown returns when everything stopped or ctx ended, whichever
// is first. Shutting down a closed proxy is a no-op.
func (p *FaultProxy) Shutdown(ctx context.Context) error {
	p.mu.Lock()
	p.stopWait()
	if p.closed || p.ln == nil {
		p.closed = true
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	var err error
	if p.srv != nil {
		err = p.srv.Shutdown(ctx)
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			err = p.srv.Close()
		}
	} else {
		err = p.ln.Close()
	}
	stopped := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-ctx.Done():
		// Its connections are closed and its waits ended: what is left
		// ends by itself.
		if err == nil {
			err = fmt.Errorf("fault proxy: stopping: %w", ctx.Err())
		}
	}
	return err
}
