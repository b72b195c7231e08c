package bus

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/internal/certs"
)

// PingInterval and MaxPingsOut say when a connection is stale: a ping
// every PingInterval, and the connection dropped for another server when
// more than MaxPingsOut are unanswered, 10–15 s after its server stopped
// answering. A server whose host lost power, or that a network cut
// separates from its clients, closes nothing: without the pings its
// clients would wait on it for the NATS client's default of two pings two
// minutes apart, a leader coordinator reading no intent and writing no
// decision, an agent receiving none, all that time.
const (
	PingInterval = 5 * time.Second
	MaxPingsOut  = 2
)

// CoordinatorPingInterval is how often a coordinator pings its server, in
// place of PingInterval: with MaxPingsOut unanswered it leaves a server
// that went silent 4–6 s after, not 10–15. The leader reads intents and
// telemetry and writes decisions through its one connection, so every
// second it stays on a silent server is a second no rollback can happen;
// a handful of coordinators pinging faster costs the servers nothing,
// where the agents keep PingInterval (a fleet of them, many over links
// slower than a coordinator's).
const CoordinatorPingInterval = 2 * time.Second

// Connect dials NATS at url (comma-separated for a cluster) and keeps
// reconnecting for as long as the process lives: an edge node or a
// coordinator that loses the bus must come back by itself, and leaves a
// server that stopped answering (see PingInterval). The first dial
// fails fast, so a wrong URL is reported at start, unless the caller passes
// nats.RetryOnFailedConnect: agents do, to serve from local state while the
// bus is away.
func Connect(url, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.Timeout(5 * time.Second),
		nats.PingInterval(PingInterval),
		nats.MaxPingsOutstanding(MaxPingsOut),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			log.Info("nats reconnected", "url", c.ConnectedUrlRedacted())
		}),
		// Permission violations and the like arrive asynchronously.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			if sub != nil {
				log.Warn("nats error", "subject", sub.Subject, "err", err)
				return
			}
			log.Warn("nats error", "err", err)
		}),
	}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats at %s: %w", url, err)
	}
	return nc, nil
}

// Security is how a process proves itself to NATS and checks the server:
// a .creds file (its NATS user, see bus/auth), the CA that signed the
// server's certificate, and optionally a client certificate. The zero value
// connects without either.
type Security struct {
	Creds string `yaml:"creds"`
	CA    string `yaml:"ca"`
	Cert  string `yaml:"cert"`
	Key   string `yaml:"key"`
	// JetStreamDomain is the JetStream domain of the servers that hold the
	// streams, when the process connects to a server outside it: an edge
	// node attached to its PoP's leaf server names the hub's domain.
	// Empty: the servers it connects to hold JetStream themselves.
	JetStreamDomain string `yaml:"jetstreamDomain"`
}

// Options checks the files and returns the connection options for them.
// Errors name the setting as prefix+field (prefix "--nats-" gives
// "--nats-creds", "natsClient." gives "natsClient.creds").
func (s Security) Options(prefix string) ([]nats.Option, error) {
	var opts []nats.Option
	if err := ValidateDomain(s.JetStreamDomain); err != nil {
		return nil, fmt.Errorf("%sjetstreamDomain: %w", prefix, err)
	}
	if s.Creds != "" {
		b, err := os.ReadFile(s.Creds)
		if err != nil {
			return nil, fmt.Errorf("%screds: %w", prefix, err)
		}
		name, err := CredsName(b)
		if err != nil {
			return nil, fmt.Errorf("%screds %s: not a NATS .creds file: %w", prefix, s.Creds, err)
		}
		opts = append(opts, nats.UserCredentials(s.Creds), nats.CustomInboxPrefix(InboxPrefix(name)))
	}
	if s.CA != "" || s.Cert != "" || s.Key != "" {
		if s.CA == "" {
			return nil, fmt.Errorf("%sca: required with %scert and %skey", prefix, prefix, prefix)
		}
		tc, err := certs.Files{
			CA: s.CA, Cert: s.Cert, Key: s.Key,
			CALabel: prefix + "ca", CertLabel: prefix + "cert", KeyLabel: prefix + "key",
		}.Client()
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(tc))
	}
	return opts, nil
}

// CredsName reads the user name from a .creds file; the identity's
// permissions allow inboxes under InboxPrefix(name) only.
func CredsName(creds []byte) (string, error) {
	token, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return "", err
	}
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return "", err
	}
	if uc.Name == "" {
		return "", fmt.Errorf("user %s has no name", uc.Subject)
	}
	return uc.Name, nil
}
