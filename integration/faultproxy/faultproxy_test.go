package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// echo runs a line echo server until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(c net.Conn, r *bufio.Reader, msg string, wait time.Duration) (string, error) {
	if _, err := c.Write([]byte(msg + "\n")); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(wait))
	return r.ReadString('\n')
}

func TestProxy_PassBlackholeDelayDrop(t *testing.T) {
	p, err := New(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "one", 5*time.Second); err != nil || got != "one\n" {
		t.Fatalf("pass: %q %v", got, err)
	}

	p.SetMode(Mode{Blackhole: true})
	if got, err := roundTrip(c, r, "held", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackhole let %q through (err %v)", got, err)
	}
	// A new connection gets nowhere either, until the blackhole ends.
	nc, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nr := bufio.NewReader(nc)
	if got, err := roundTrip(nc, nr, "new", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("blackhole served a new connection: %q (err %v)", got, err)
	}
	p.SetMode(Pass)
	// What was sent during the blackhole arrives, in order, as TCP would
	// deliver it after a partition heals.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "held\n" {
		t.Fatalf("after the blackhole: %q %v, want the held bytes", got, err)
	}
	if got, err := roundTrip(c, r, "two", 5*time.Second); err != nil || got != "two\n" {
		t.Fatalf("pass after blackhole: %q %v", got, err)
	}
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := nr.ReadString('\n'); err != nil || got != "new\n" {
		t.Fatalf("new connection after the blackhole: %q %v", got, err)
	}

	p.SetMode(Mode{Delay: 50 * time.Millisecond})
	if got, err := roundTrip(c, r, "three", 5*time.Second); err != nil || got != "three\n" {
		t.Fatalf("delay: %q %v", got, err)
	}

	p.SetMode(Mode{Drop: true})
	if _, err := roundTrip(c, r, "four", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("drop: the open connection was not reset (err %v)", err)
	}
	// A new connection is reset, at once or at its first read.
	if c2, err := net.Dial("tcp", p.Addr()); err == nil {
		defer c2.Close()
		if _, err := roundTrip(c2, bufio.NewReader(c2), "five", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("drop: a new connection was served (err %v)", err)
		}
	}

	p.SetMode(Pass)
	c3, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if got, err := roundTrip(c3, bufio.NewReader(c3), "six", 5*time.Second); err != nil || got != "six\n" {
		t.Fatalf("pass after drop: %q %v", got, err)
	}
}

func TestProxy_UnreachableTargetClosesTheClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	target := ln.Addr().String()
	ln.Close()
	p, err := New(target)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("client of an unreachable target: %v, want the connection closed", err)
	}
}

func TestProxy_SourceModeFaultsOnlyThatSourcesConnections(t *testing.T) {
	me := os.Getpid()
	p, err := NewWith(echo(t), Options{Source: Owner(func() map[int]string { return map[int]string{me: "me"} })})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dial := func() (net.Conn, *bufio.Reader) {
		t.Helper()
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	c, r := dial()
	if got, err := roundTrip(c, r, "one", 5*time.Second); err != nil || got != "one\n" {
		t.Fatalf("pass: %q %v", got, err)
	}

	// Another source's blackhole does not touch this process's connections.
	p.SetSourceMode("another", Mode{Blackhole: true})
	if !p.Faulty() {
		t.Fatal("a proxy with a source blackholed says it is not faulty")
	}
	if got, err := roundTrip(c, r, "two", 5*time.Second); err != nil || got != "two\n" {
		t.Fatalf("another source blackholed: %q %v", got, err)
	}

	// This process's own: the open connection and a new one are held.
	p.SetSourceMode("me", Mode{Blackhole: true})
	if got, err := roundTrip(c, r, "held", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("source blackhole let %q through (err %v)", got, err)
	}
	nc, nr := dial()
	if got, err := roundTrip(nc, nr, "new", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("source blackhole served a new connection: %q (err %v)", got, err)
	}
	// A source's own mode wins over the proxy's.
	p.SetMode(Mode{Drop: true})
	p.SetSourceMode("me", Pass)
	for _, x := range []struct {
		r    *bufio.Reader
		want string
	}{{r, "held\n"}, {nr, "new\n"}} {
		if x.r == r {
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
		} else {
			nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		}
		if got, err := x.r.ReadString('\n'); err != nil || got != x.want {
			t.Fatalf("after the source's blackhole ended: %q %v, want %q", got, err, x.want)
		}
	}

	p.SetMode(Pass)
	p.ClearSources()
	if p.Faulty() {
		t.Fatal("proxy still faulty after every mode was cleared")
	}
	p.SetSourceMode("me", Mode{Drop: true})
	if _, err := roundTrip(c, r, "three", 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("source drop: the open connection was not reset (err %v)", err)
	}
}

// A connection whose source was not found when it was accepted (Owner can
// miss it on a busy machine) is looked for again, and once found it is
// faulted with its source: a partition leaves no direction open.
func TestProxy_SourceFoundLateIsFaultedWithIt(t *testing.T) {
	var mu sync.Mutex
	asked := 0
	p, err := NewWith(echo(t), Options{Source: func(net.Addr) string {
		mu.Lock()
		defer mu.Unlock()
		asked++
		if asked <= 3 {
			return ""
		}
		return "me"
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if got, err := roundTrip(c, r, "one", 5*time.Second); err != nil || got != "one\n" {
		t.Fatalf("pass: %q %v", got, err)
	}
	// Found by now (the proxy looks every 20 ms).
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		src := p.conns[firstClient(p)]
		p.mu.Unlock()
		if src == "me" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the connection's source was never found")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.SetSourceMode("me", Mode{Blackhole: true})
	if got, err := roundTrip(c, r, "held", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("source found late: its blackhole let %q through (err %v)", got, err)
	}
	p.SetSourceMode("me", Pass)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "held\n" {
		t.Fatalf("after the blackhole: %q %v", got, err)
	}
}

// firstClient is the connection the proxy accepted (the one whose remote
// end is not its target). Callers hold p.mu.
func firstClient(p *Proxy) net.Conn {
	for c := range p.conns {
		if c.RemoteAddr().String() != p.target {
			return c
		}
	}
	return nil
}
