package coordinator

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/internal/certs"
)

// securedBus is the embedded NATS server in operator mode with the roles'
// permission templates and TLS, the way `switchyard dev` runs it: tests
// connect with the credentials a role's holder (a node, an operator) has.
type securedBus struct {
	url   string
	setup *auth.Setup
	ca    *certs.CA
	dir   string
}

func startSecuredBus(t *testing.T) *securedBus {
	t.Helper()
	dir := t.TempDir()
	setup, err := auth.Init(filepath.Join(dir, "auth"), "test")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(filepath.Join(dir, "tls"), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue("nats", []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "nats")
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: store, AuthConfig: setup.ServerConfig(filepath.Join(store, "jwt")), TLS: cert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return &securedBus{url: ns.ClientURL(), setup: setup, ca: ca, dir: dir}
}

// connect issues credentials of role to name and connects with them.
func (b *securedBus) connect(t *testing.T, role bus.Role, name string) *nats.Conn {
	t.Helper()
	opts, err := bus.Security{Creds: b.credsFile(t, role, name), CA: b.ca.CAPath()}.Options("")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(b.url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// credsFile issues credentials of role to name and returns their path.
func (b *securedBus) credsFile(t *testing.T, role bus.Role, name string) string {
	t.Helper()
	creds, err := b.setup.Issue(role, name)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(b.dir, name+".creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
