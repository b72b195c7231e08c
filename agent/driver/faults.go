package driver

import "context"

// Optional driver capabilities chaos drills use. A driver that lacks one
// cannot inject the faults that need it; the agent refuses such a drill on
// this node and says so.

// StateSetter puts a backend's server in "ready", "drain" or "maint".
type StateSetter interface {
	SetState(ctx context.Context, backend, state string) error
}

// ServerAddresser reads and changes the address the proxy connects to for a
// backend, so a fault proxy can be put in front of it and taken out again.
type ServerAddresser interface {
	// ServerAddr is the backend's current address, "ip:port".
	ServerAddr(ctx context.Context, backend string) (string, error)
	// SetServerAddr points the backend at addr ("ip:port") for new
	// connections and returns once the proxy reports that address.
	SetServerAddr(ctx context.Context, backend, addr string) error
}
