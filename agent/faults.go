package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/chaos"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Fault kinds, as AgentStatus.faults, the journal and the metrics name them.
const (
	kindHTTP         = "http"
	kindTCP          = "tcp"
	kindBackendState = "backend_state"
	kindProcess      = "process"
	kindCPUBurn      = "cpu_burn"
	kindBusDrop      = "bus_drop"
)

var faultKinds = []string{kindHTTP, kindTCP, kindBackendState, kindProcess, kindCPUBurn, kindBusDrop}

// faultKind names a fault's kind; "" for none.
func faultKind(f *sv1.Fault) string {
	switch f.GetKind().(type) {
	case *sv1.Fault_Http:
		return kindHTTP
	case *sv1.Fault_Tcp:
		return kindTCP
	case *sv1.Fault_BackendState:
		return kindBackendState
	case *sv1.Fault_Process:
		return kindProcess
	case *sv1.Fault_CpuBurn:
		return kindCPUBurn
	case *sv1.Fault_BusDrop:
		return kindBusDrop
	}
	return ""
}

// proxyFault puts a chaos.FaultProxy between the local proxy and one
// backend: it points the backend's server at the fault proxy and back at
// its own address. Built from the journal after a crash it has no fault
// proxy and can only revert.
type proxyFault struct {
	drv     driver.ServerAddresser
	backend string
	// orig is the server's address without the fault.
	orig string
	// newProxy builds the fault proxy in front of a target; nil for a
	// revert-only fault.
	newProxy func(target string) *chaos.FaultProxy

	mu    sync.Mutex
	proxy *chaos.FaultProxy
}

var _ chaos.Injector = (*proxyFault)(nil)

// errRevertOnly is returned by Apply of a fault rebuilt from the journal.
var errRevertOnly = errors.New("a fault rebuilt from the journal can only be reverted")

// Apply starts the fault proxy (once) and points the server at it.
func (p *proxyFault) Apply(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proxy == nil {
		if p.newProxy == nil {
			return errRevertOnly
		}
		p.proxy = p.newProxy(p.orig)
	}
	if err := p.proxy.Start(); err != nil {
		return err
	}
	return p.drv.SetServerAddr(ctx, p.backend, p.proxy.Addr())
}

// Revert points the server back at its own address, then stops the fault
// proxy, within ctx: the fault's own waits end at once, and what is still
// in flight when ctx ends is cut. While the server cannot be pointed back
// the fault proxy keeps serving (with its fault): closing it would take the
// backend down.
func (p *proxyFault) Revert(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.drv.SetServerAddr(ctx, p.backend, p.orig); err != nil {
		return err
	}
	if p.proxy == nil {
		return nil
	}
	// The server no longer points at the fault proxy: it goes whether or
	// not everything in it stopped in time.
	err := p.proxy.Shutdown(ctx)
	p.proxy = nil
	if err != nil && ctx.Err() != nil {
		return nil
	}
	return err
}

// proxyAddr is where the fault proxy listens; "" when it does not.
func (p *proxyFault) proxyAddr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proxy == nil {
		return ""
	}
	return p.proxy.Addr()
}

// abandon stops the fault proxy and leaves the server pointing at it, as
// the agent's death would.
func (p *proxyFault) abandon() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proxy != nil {
		_ = p.proxy.Close()
		p.proxy = nil
	}
}

// stateFault sets a backend's server to maint or drain, and back to the
// state it found it in (prev; "ready" when unknown): a drain an operator
// set before the drill is still there after it.
type stateFault struct {
	drv     driver.StateSetter
	backend string
	state   string
	prev    string
}

var _ chaos.Injector = (*stateFault)(nil)

func (s *stateFault) Apply(ctx context.Context) error {
	return s.drv.SetState(ctx, s.backend, s.state)
}

func (s *stateFault) Revert(ctx context.Context) error {
	return s.drv.SetState(ctx, s.backend, cmp.Or(s.prev, "ready"))
}

// errBusDropped is what the agent's NATS dialer answers while a bus_drop
// fault is active.
var errBusDropped = errors.New("bus connection dropped by a chaos drill")

// busGate is the agent's NATS dialer: it refuses every dial while a
// bus_drop fault is active, so the connection stays down until the fault
// ends, however often nats.go retries.
type busGate struct {
	dropped atomic.Bool
	dialer  net.Dialer
}

var _ nats.CustomDialer = (*busGate)(nil)

func newBusGate() *busGate { return &busGate{dialer: net.Dialer{Timeout: 5 * time.Second}} }

// Dial is nats.CustomDialer.
func (g *busGate) Dial(network, address string) (net.Conn, error) {
	if g.dropped.Load() {
		return nil, errBusDropped
	}
	return g.dialer.Dial(network, address)
}

// busDropFault drops the agent's own bus connection.
type busDropFault struct {
	gate *busGate
	conn func() *nats.Conn
	// announce publishes the agent's status, with this fault, before the
	// connection goes: afterwards nothing can be said.
	announce func()
}

var _ chaos.Injector = (*busDropFault)(nil)

func (b *busDropFault) Apply(context.Context) error {
	if b.gate.dropped.Load() {
		return nil
	}
	if b.announce != nil {
		b.announce()
	}
	b.gate.dropped.Store(true)
	if nc := b.conn(); nc != nil && !nc.IsClosed() {
		if err := nc.ForceReconnect(); err != nil {
			b.gate.dropped.Store(false)
			return fmt.Errorf("drop the bus connection: %w", err)
		}
	}
	return nil
}

// Revert lets the connection back; a reconnect waiting for its next try is
// told to try now.
func (b *busDropFault) Revert(context.Context) error {
	if !b.gate.dropped.Swap(false) {
		return nil
	}
	if nc := b.conn(); nc != nil && !nc.IsClosed() && !nc.IsConnected() {
		_ = nc.ForceReconnect()
	}
	return nil
}

// proxyHTTPFault is an HTTP fault the proxy injects itself (Envoy's fault
// filter pushed over xDS). Rebuilt from the journal it has no fault and can
// only revert.
type proxyHTTPFault struct {
	drv     driver.HTTPFaulter
	backend string
	fault   *driver.HTTPFault
}

var _ chaos.Injector = (*proxyHTTPFault)(nil)

// httpFaultOf is a drill's HTTP fault with the defaults of its document:
// status 503, and every request delayed when a delay has no percentage.
func httpFaultOf(h *sv1.HTTPFault) *driver.HTTPFault {
	f := &driver.HTTPFault{ErrorPercent: h.GetErrorPercent(), Status: h.GetStatus(), Delay: h.GetDelay().AsDuration(), DelayPercent: h.GetDelayPercent()}
	if f.Status == 0 {
		f.Status = 503
	}
	if f.Delay > 0 && f.DelayPercent == 0 {
		f.DelayPercent = 100
	}
	return f
}

// Apply pushes the fault to the proxy.
func (p *proxyHTTPFault) Apply(ctx context.Context) error {
	if p.fault == nil {
		return errRevertOnly
	}
	return p.drv.SetHTTPFault(ctx, p.backend, p.fault)
}

// Revert removes the backend's fault from the proxy.
func (p *proxyHTTPFault) Revert(ctx context.Context) error {
	return p.drv.SetHTTPFault(ctx, p.backend, nil)
}
