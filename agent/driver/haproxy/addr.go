package haproxy

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/switchyard/switchyard/agent/driver"
)

var (
	_ driver.StateSetter     = (*Driver)(nil)
	_ driver.ServerAddresser = (*Driver)(nil)
)

// ServerAddr reads the address HAProxy connects to for a backend now
// ("srv_addr:srv_port" of "show servers state").
func (d *Driver) ServerAddr(ctx context.Context, backend string) (string, error) {
	st, err := d.serverRow(ctx, backend)
	if err != nil {
		return "", err
	}
	if st.Addr == "" {
		srv, _ := d.server(backend)
		return "", fmt.Errorf("haproxy driver: show servers state has no srv_addr/srv_port for server %s/%s", d.cfg.Backend, srv)
	}
	return st.Addr, nil
}

// SetServerAddr points a backend's server at addr ("ip:port") with "set
// server <backend>/<server> addr <ip> port <port>" and reads it back. New
// connections go to addr; idle connections HAProxy keeps to the old address
// are not reused for it (HAProxy 2.6 ties them to the old target; the live
// tests check it).
func (d *Driver) SetServerAddr(ctx context.Context, backend, addr string) error {
	if d.closed.Load() {
		return errClosed
	}
	srv, err := d.server(backend)
	if err != nil {
		return err
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("haproxy driver: address %q for backend %q: want ip:port: %w", addr, backend, err)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return fmt.Errorf("haproxy driver: address %q for backend %q: %q is not an IP address", addr, backend, host)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("haproxy driver: address %q for backend %q: port %q is not 1..65535", addr, backend, port)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cmd := fmt.Sprintf("set server %s/%s addr %s port %s", d.cfg.Backend, srv, ip.String(), port)
	ans, err := d.api.do(ctx, cmd)
	if err != nil {
		return fmt.Errorf("haproxy driver: set address of backend %q (server %s/%s): %w", backend, d.cfg.Backend, srv, err)
	}
	// HAProxy answers a change with a sentence ("IP changed from ...",
	// "no need to change the addr, port changed from ..."), and a refusal
	// with another one ("Invalid addr ...", "No such server."): the
	// read-back below is what decides.
	ans = strings.TrimSpace(ans)
	if _, known := knownAnswers[ans]; known || strings.HasPrefix(ans, "Invalid") {
		return fmt.Errorf("haproxy driver: set address of backend %q: %w", backend, answerError(cmd, ans))
	}
	state, err := d.serversState(ctx)
	if err != nil {
		return err
	}
	want := net.JoinHostPort(ip.String(), port)
	if got := state[srv].Addr; got != want {
		return fmt.Errorf("haproxy driver: set address of backend %q (server %s/%s) to %s: HAProxy answered %q and has %q: %w",
			backend, d.cfg.Backend, srv, want, head(ans), got, ErrRefused)
	}
	return nil
}
