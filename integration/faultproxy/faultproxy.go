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

// Options tune a proxy made by NewWith.
type Options struct {
	// Source names who opened an accepted connection (the process at the
	// other end of remote, say), so that SetSourceMode can fault one
	// peer's connections while others pass; nil or "" names nobody.
	// Several peers dialling one address cannot be told apart otherwise.
	Source func(remote net.Addr) string
}

// Proxy forwards connections accepted on Addr to a target address.
type Proxy struct {
	target string
	ln     net.Listener
	opts   Options

	mu   sync.Mutex
	mode Mode
	// sources are the modes of connections from named sources, which
	// replace mode for them.
	sources map[string]Mode
	// changed is closed, and replaced, whenever the mode changes.
	changed chan struct{}
	// conns are the open connections, by the source that opened them.
	conns map[net.Conn]string
	wg    sync.WaitGroup
	done  chan struct{}
	once  sync.Once
}

// New listens on a free 127.0.0.1 port and forwards to target.
func New(target string) (*Proxy, error) {
	return NewWith(target, Options{})
}

// NewWith is New with options.
func NewWith(target string, o Options) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return StartWith(ln, target, o), nil
}

// Start forwards connections accepted on ln to target until Close.
func Start(ln net.Listener, target string) *Proxy {
	return StartWith(ln, target, Options{})
}

// StartWith is Start with options.
func StartWith(ln net.Listener, target string, o Options) *Proxy {
	p := &Proxy{target: target, ln: ln, opts: o, conns: map[net.Conn]string{}, sources: map[string]Mode{}, done: make(chan struct{}), changed: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	return p
}

// Addr is the address clients connect to.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target is where the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// Mode returns the current mode (of connections from sources without a
// mode of their own).
func (p *Proxy) Mode() Mode {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mode
}

// Faulty says whether the proxy, or its mode for any source, is anything
// but Pass.
func (p *Proxy) Faulty() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != Pass {
		return true
	}
	for _, m := range p.sources {
		if m != Pass {
			return true
		}
	}
	return false
}

// SetMode changes what the proxy does from now on to connections from
// sources without a mode of their own; with Drop, those open are reset.
func (p *Proxy) SetMode(m Mode) {
	p.mu.Lock()
	p.mode = m
	p.changedLocked()
	var open []net.Conn
	if m.Drop {
		for c, src := range p.conns {
			if _, own := p.sources[src]; !own || src == "" {
				open = append(open, c)
			}
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		reset(c)
	}
}

// SetSourceMode changes what the proxy does from now on to connections
// opened by source (see Options.Source); Pass is a mode like any other
// (the source passes whatever the proxy's mode), ClearSources removes
// them all. With Drop, that source's open connections are reset.
func (p *Proxy) SetSourceMode(source string, m Mode) {
	p.mu.Lock()
	p.sources[source] = m
	p.changedLocked()
	var open []net.Conn
	if m.Drop {
		for c, src := range p.conns {
			if src == source {
				open = append(open, c)
			}
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		reset(c)
	}
}

// ClearSources forgets every source's mode: all connections follow the
// proxy's mode again.
func (p *Proxy) ClearSources() {
	p.mu.Lock()
	clear(p.sources)
	p.changedLocked()
	p.mu.Unlock()
}

func (p *Proxy) changedLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// modeFor is the mode of a connection from source.
func (p *Proxy) modeFor(source string) Mode {
	if m, ok := p.sources[source]; ok && source != "" {
		return m
	}
	return p.mode
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

// passable waits while the proxy blackholes the connection c (by the
// source it was opened by, as far as it is known now); false when it
// closes or drops instead.
func (p *Proxy) passable(c net.Conn) (Mode, bool) {
	for {
		p.mu.Lock()
		m, changed := p.modeFor(p.conns[c]), p.changed
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
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) track(c net.Conn, source string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		return false
	default:
	}
	p.conns[c] = source
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
	var source string
	if p.opts.Source != nil {
		source = p.opts.Source(client.RemoteAddr())
	}
	p.mu.Lock()
	drop := p.modeFor(source).Drop
	p.mu.Unlock()
	if drop {
		reset(client)
		return
	}
	if !p.track(client, source) {
		client.Close()
		return
	}
	defer p.untrack(client)
	ended := make(chan struct{})
	defer close(ended)
	if p.opts.Source != nil && source == "" {
		p.wg.Add(1)
		go p.learnSource(client, ended)
	}
	if _, ok := p.passable(client); !ok {
		return
	}
	server, err := net.DialTimeout("tcp", p.target, 2*time.Second)
	if err != nil {
		return
	}
	if !p.track(server, source) {
		server.Close()
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client, client) }()
	go func() { defer wg.Done(); p.pipe(client, server, client) }()
	wg.Wait()
}

// learnSource looks again for the source of a connection whose source was
// not found when it was accepted (Owner reads /proc/net/tcp in pieces and,
// on a busy machine, can miss it every time), until it is found or the
// connection ends: a connection counted as no one's would pass every
// source's fault, a partition leaving one direction open.
func (p *Proxy) learnSource(client net.Conn, ended <-chan struct{}) {
	defer p.wg.Done()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ended:
			return
		case <-p.done:
			return
		case <-t.C:
		}
		name := p.opts.Source(client.RemoteAddr())
		if name == "" {
			continue
		}
		p.mu.Lock()
		if _, open := p.conns[client]; open {
			p.conns[client] = name
			p.changedLocked()
		}
		p.mu.Unlock()
		return
	}
}

// pipe copies src to dst through the mode of the connection client's
// source until either side fails; then it closes both so that the other
// direction ends too.
func (p *Proxy) pipe(dst, src, client net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			m, ok := p.passable(client)
			if !ok {
				return
			}
			if m.Delay > 0 {
				select {
				case <-time.After(m.Delay):
				case <-p.done:
					return
				}
				if m, ok = p.passable(client); !ok {
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
