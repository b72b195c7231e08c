package driver

import (
	"context"
	"time"
)

// Optional driver capabilities chaos drills use. A driver that lacks one
// cannot inject the faults that need it; the agent refuses such a drill on
// this node and says so.

// StateSetter puts a backend's server in "ready", "drain" or "maint".
type StateSetter interface {
	SetState(ctx context.Context, backend, state string) error
}

// StateReader reads the state a backend's server is in: "ready", "drain"
// or "maint". A state fault reverts to it (an operator's drain outlives the
// drill); with a driver that cannot read it, a state fault reverts to
// "ready".
type StateReader interface {
	ServerState(ctx context.Context, backend string) (string, error)
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

// HTTPFault is an HTTP fault a proxy injects itself into one backend's
// requests (Envoy's fault filter), with no fault proxy in the path.
type HTTPFault struct {
	// ErrorPercent of requests (0..100) are answered with Status at once.
	ErrorPercent, Status uint32
	// DelayPercent of requests (0..100) wait Delay first.
	DelayPercent uint32
	Delay        time.Duration
}

// HTTPFaulter is implemented by drivers whose proxy injects HTTP faults
// itself. A drill's HTTP fault on such a driver goes to the proxy; on
// others it goes through a fault proxy the server is re-pointed at.
type HTTPFaulter interface {
	// SetHTTPFault injects f into backend's requests; nil removes it.
	SetHTTPFault(ctx context.Context, backend string, f *HTTPFault) error
}
