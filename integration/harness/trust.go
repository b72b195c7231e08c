package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/internal/certs"
)

// Bus is a NATS deployment as its clients see it: the URL, the CA that
// signed the servers' certificates (empty: no TLS) and the auth directory
// identities are issued from (empty: no authorization).
type Bus struct {
	URL     string
	CA      string
	AuthDir string
	// JetStreamDomain is the domain clients of this URL reach JetStream
	// through (a leaf server's clients name the hub's); empty: none.
	JetStreamDomain string
}

// issueMu serialises issuing, which rewrites the auth directory's index.
var issueMu sync.Mutex

// Creds returns a .creds file for role/name in the bus's auth directory,
// issuing it on first use; "" when the bus has no authorization.
func (b Bus) Creds(role bus.Role, name string) (string, error) {
	if b.AuthDir == "" {
		return "", nil
	}
	issueMu.Lock()
	defer issueMu.Unlock()
	path := filepath.Join(b.AuthDir, auth.CredsDir, name+".creds")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	setup, err := auth.Load(b.AuthDir)
	if err != nil {
		return "", err
	}
	creds, err := setup.Issue(role, name)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// Security is what a process of role/name connects with.
func (b Bus) Security(role bus.Role, name string) (bus.Security, error) {
	creds, err := b.Creds(role, name)
	if err != nil {
		return bus.Security{}, fmt.Errorf("creds for %s %s: %w", role, name, err)
	}
	return bus.Security{Creds: creds, CA: b.CA, JetStreamDomain: b.JetStreamDomain}, nil
}

// Connect opens a connection as role/name.
func (b Bus) Connect(role bus.Role, name string, opts ...nats.Option) (*nats.Conn, error) {
	sec, err := b.Security(role, name)
	if err != nil {
		return nil, err
	}
	so, err := sec.Options("")
	if err != nil {
		return nil, err
	}
	return nats.Connect(b.URL, append(so, opts...)...)
}

// IntentSigner is the key the harness's operator identity (the one CLIEnv
// gives, the clusters' first admin) signs intents with; nil on a bus
// without authorization.
func (b Bus) IntentSigner() (*bus.IntentSigner, error) {
	creds, err := b.Creds(bus.RoleOperator, "operator")
	if err != nil || creds == "" {
		return nil, err
	}
	return bus.LoadIntentSigner(creds)
}

// CLIEnv is the environment a CLI run as an operator needs.
func (b Bus) CLIEnv() ([]string, error) {
	sec, err := b.Security(bus.RoleOperator, "operator")
	if err != nil {
		return nil, err
	}
	env := []string{"SWITCHYARD_NATS=" + b.URL}
	if sec.Creds != "" {
		env = append(env, "SWITCHYARD_NATS_CREDS="+sec.Creds)
	}
	if sec.CA != "" {
		env = append(env, "SWITCHYARD_NATS_CA="+sec.CA)
	}
	return env, nil
}

// SecuredBus makes, in dir, what a secured NATS server needs: an
// operator/account setup and a development CA with a certificate for
// 127.0.0.1. The caller runs the server with Server's options.
type SecuredBus struct {
	Setup  *auth.Setup
	Server certs.Files
}

// NewSecuredBus creates the auth directory and CA in dir.
func NewSecuredBus(dir string) (*SecuredBus, error) {
	setup, err := auth.Init(filepath.Join(dir, "auth"), "switchyard-test")
	if err != nil {
		return nil, err
	}
	ca, err := certs.NewCA(filepath.Join(dir, "tls"), "Switchyard test CA")
	if err != nil {
		return nil, err
	}
	srv, err := ca.Issue("nats", []string{"127.0.0.1", "localhost"})
	if err != nil {
		return nil, err
	}
	return &SecuredBus{Setup: setup, Server: srv}, nil
}

// EmbeddedOptions are the options of a server with this setup and TLS.
func (s *SecuredBus) EmbeddedOptions(storeDir string) bus.EmbeddedOptions {
	return bus.EmbeddedOptions{
		StoreDir:   storeDir,
		AuthConfig: s.Setup.ServerConfig(filepath.Join(storeDir, "jwt")),
		TLS:        s.Server,
	}
}

// Bus is the client view of a server started with EmbeddedOptions.
func (s *SecuredBus) Bus(url string) Bus {
	return Bus{URL: url, CA: s.Server.CA, AuthDir: s.Setup.Dir()}
}
