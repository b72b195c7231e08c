// Package faultproxy is a userspace TCP proxy that injects network faults
// between two processes on one machine, where iptables is not available:
// blackhole (connections stay open, nothing gets through until it ends, as
// in a partition TCP retransmits across), delay (every chunk held back) and
// drop (every connection reset, new ones closed at once).
package faultproxy

import (
	"errors"
	"net"
	"sync"
	"time"
)

// Mode is what the proxy does to the bytes it carries.
type Mode struct {
	// Blackhole lets nothing through in either direction, new connections
	// included, until the mode changes; connections stay open and what
	// was sent meanwhile arrives afterwards, as TCP's retransmissions
	// carry a stream across a partition that heals. (Bytes dropped from
	// the middle of a stream are not a network fault: TCP never does it.)
	Blackhole bool
	// Drop resets every open connection and closes new ones at once.
	Drop bool
	// Delay holds each chunk back this long before passing it on.
	Delay time.Duration
}

// Pass is the mode of a healthy link.
var Pass = Mode{}

// Proxy forwards connections accepted on Addr to a target address.
type Proxy struct {
	target string
	ln     net.Listener

	mu   sync.Mutex
	mode Mode
	// changed is closed, and replaced, whenever the mode changes.
	changed chan struct{}
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
	done    chan struct{}
	once    sync.Once
}

// New listens on a free 127.0.0.1 port and forwards to target.
func New(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return Start(ln, target), nil
}

// Start forwards connections accepted on ln to target until Close.
func Start(ln net.Listener, target string) *Proxy {
	p := &Proxy{target: target, ln: ln, conns: map[net.Conn]struct{}{}, done: make(chan struct{}), changed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p
}

// Addr is the address clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is where the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Mode returns the current mode.
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// SetMode changes what the proxy does from now on; with Drop, every open
// connection is reset.
func (p *Proxy) SetMode(m Mode) {
	p.mu.Lock()
	p.mode = m
	close(p.changed)
	p.changed = make(chan struct{})
	var open []net.Conn
	if m.Drop {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		reset(c)
	}
}

// Close stops accepting, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	var err error
	p.once.Do(func() {
		close(p.done)
		err = p.ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return err
}

// passable waits while the proxy blackholes; false when it closes or
// drops instead.
func (p *Proxy) passable() (Mode, bool) {
	for {
		p.mu.Lock()
		m, changed := p.mode, p.changed
		p.mu.Unlock()
		if m.Drop {
			return m, false
		}
		if !m.Blackhole {
			return m, true
		}
		select {
		case <-changed:
		case <-p.done:
			return m, false
		}
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case <-p.done:
				return
			case <-time.After(10 * time.Millisecond):
				continue
			}
		}
		if p.Mode().Drop {
			reset(c)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return false
	default:
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	if !p.track(client) {
		client.Close()
		return
	}
	defer p.untrack(client)
	if _, ok := p.passable(); !ok {
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	if !p.track(server) {
		server.Close()
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client) }()
	go func() { defer wg.Done(); p.pipe(client, server) }()
	wg.Wait()
}

// pipe copies src to dst through the mode until either side fails; then it
// closes both so that the other direction ends too.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			m, ok := p.passable()
			if !ok {
				return
			}
			if m.Delay > 0 {
				select {
				case <-time.After(m.Delay):
				case <-p.done:
					return
				}
				if m, ok = p.passable(); !ok {
					return
				}
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// reset closes c with an RST where the platform allows it, as a dropped
// link looks to the peer.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}
