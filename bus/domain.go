package bus

import (
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ValidateDomain checks a JetStream domain name: empty, or one subject token
// (JetStream's API for domain d is $JS.d.API.>).
func ValidateDomain(domain string) error {
	if domain == "" {
		return nil
	}
	if strings.ContainsAny(domain, ".*> \t\r\n") {
		return fmt.Errorf("%q: a JetStream domain is one NATS subject token (no '.', '*', '>' or spaces)", domain)
	}
	return nil
}

// JetStream is the JetStream API as this process reaches it: through its
// JetStreamDomain when it has one.
func (s Security) JetStream(nc *nats.Conn) (jetstream.JetStream, error) {
	if s.JetStreamDomain == "" {
		return jetstream.New(nc)
	}
	if err := ValidateDomain(s.JetStreamDomain); err != nil {
		return nil, err
	}
	return jetstream.NewWithDomain(nc, s.JetStreamDomain)
}
