package haproxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLive_SetServerAddrMovesNewConnections points green at another server
// while keep-alive clients keep HAProxy's connections to green busy, and
// checks that every request of a client connection opened after
// SetServerAddr returned reaches the new address. Requests of keep-alive
// client connections HAProxy had already bound to a connection to the old
// address may keep reaching it until that connection closes: HAProxy 2.6
// finds a session's server connection by server, not by address (see
// docs/agent.md, "Chaos faults").
func TestLive_SetServerAddrMovesNewConnections(t *testing.T) {
	l := startLive(t)
	ctx := context.Background()
	if err := l.drv.Apply(ctx, map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	orig, err := l.drv.ServerAddr(ctx, "green")
	if err != nil {
		t.Fatal(err)
	}
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "other") }))
	t.Cleanup(other.Close)
	otherAddr := other.Listener.Addr().String()

	// Keep-alive load, so HAProxy holds connections to green, idle and busy.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = l.get()
			}
		})
	}
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
	waitFor(t, 5*time.Second, func() bool { return stat(t, l.drv, "green").Hrsp2xx > 50 })

	if err := l.drv.SetServerAddr(ctx, "green", otherAddr); err != nil {
		t.Fatal(err)
	}
	if got, err := l.drv.ServerAddr(ctx, "green"); err != nil || got != otherAddr {
		t.Fatalf("ServerAddr after the change = %q, %v; want %q", got, err, otherAddr)
	}
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func() string {
		resp, err := fresh.Get(l.frontend)
		if err != nil {
			return "error: " + err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	for i := range 200 {
		if got := get(); got != "other" {
			t.Fatalf("request %d on a new connection after the change answered %q, want %q", i, got, "other")
		}
	}

	// Back again, idempotently.
	for range 2 {
		if err := l.drv.SetServerAddr(ctx, "green", orig); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 50 {
		if got := get(); got != "green" {
			t.Fatalf("request %d on a new connection after the change back answered %q, want %q", i, got, "green")
		}
	}
}

func TestLive_SetServerAddrRefusals(t *testing.T) {
	l := startLive(t)
	ctx := context.Background()
	for _, tc := range []struct{ backend, addr, want string }{
		{"green", "localhost:80", "not an IP address"},
		{"green", "127.0.0.1", "want ip:port"},
		{"green", "127.0.0.1:0", "not 1..65535"},
		{"purple", "127.0.0.1:80", "unknown backend"},
	} {
		if err := l.drv.SetServerAddr(ctx, tc.backend, tc.addr); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("SetServerAddr(%s, %s) = %v, want an error containing %q", tc.backend, tc.addr, err, tc.want)
		}
	}
	d := newDriver(t, Config{Socket: l.proc.SocketPath(), Backend: "web", Servers: map[string]string{"green": "nosuch"}})
	if err := d.SetServerAddr(ctx, "green", "127.0.0.1:80"); !errors.Is(err, ErrNoSuchServer) {
		t.Errorf("SetServerAddr of a server HAProxy lacks = %v, want ErrNoSuchServer", err)
	}
	if _, err := d.ServerAddr(ctx, "green"); !errors.Is(err, ErrNoSuchServer) {
		t.Errorf("ServerAddr of a server HAProxy lacks = %v, want ErrNoSuchServer", err)
	}
}
