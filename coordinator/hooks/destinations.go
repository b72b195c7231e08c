package hooks

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Destinations limits the addresses the leader's webhook calls connect to.
// A rollout's webhooks come from whoever may apply rollouts (an operator, a
// CI pipeline), and the leader records the first bytes of each answer in
// the history every viewer reads: without a limit a webhook could read,
// from the coordinators' place in the network, what only they should
// reach, the cloud's instance metadata (and its credentials) first.
type Destinations struct {
	// Networks, when set, are the only networks a webhook may connect to.
	// Empty: any address but those defaultRefused names.
	Networks []netip.Prefix
}

// defaultRefused are refused unless Networks allows them: link-local
// addresses, where cloud instance metadata services answer
// (169.254.169.254 and fe80::/10), the metadata addresses outside them
// (AWS's IPv6 fd00:ec2::254, Alibaba's 100.100.100.200), and addresses no
// webhook has: unspecified (0.0.0.0 reaches this host) and multicast.
var defaultRefused = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local, where cloud instance metadata answers"},
	{netip.MustParsePrefix("fe80::/10"), "link-local, where cloud instance metadata answers"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "a cloud instance metadata address"},
	{netip.MustParsePrefix("100.100.100.200/32"), "a cloud instance metadata address"},
	{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
	{netip.MustParsePrefix("::/128"), "unspecified"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// RefusedError is a webhook destination the coordinator does not connect
// to. It is final: attempting again reaches the same address.
type RefusedError struct {
	Addr netip.Addr
	Why  string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("destination %s refused (%s); a coordinator's --webhook-networks names the networks webhooks may reach", e.Addr, e.Why)
}

// ParseNetworks reads networks in CIDR notation (10.0.0.0/8, fd00::/8) or
// single addresses (10.1.2.3); field names the setting in errors.
func ParseNetworks(field string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range list {
		s = strings.TrimSpace(s)
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q is not a network (want CIDR such as 10.0.0.0/8, or an address)", field, i, s)
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return nil, fmt.Errorf("%s[%d]: %q mixes IPv4-mapped and other IPv6 addresses; give the IPv4 network (such as 10.0.0.0/8)", field, i, s)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// Check says whether a webhook may connect to a.
func (d Destinations) Check(a netip.Addr) error {
	a = a.Unmap().WithZone("") // a prefix holds no address with a zone
	if len(d.Networks) > 0 {
		for _, p := range d.Networks {
			if p.Contains(a) {
				return nil
			}
		}
		return &RefusedError{Addr: a, Why: "outside the webhook networks"}
	}
	for _, r := range defaultRefused {
		if r.prefix.Contains(a) {
			return &RefusedError{Addr: a, Why: r.why}
		}
	}
	return nil
}

// CheckURL refuses a webhook URL whose host is an address Check refuses; a
// name is checked when it is resolved, at each call.
func (d Destinations) CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return nil // the spec's own checks name it
	}
	a, err := netip.ParseAddr(u.Hostname())
	if err != nil {
		return nil
	}
	return d.Check(a)
}

// control refuses a connection to an address Check refuses, after the
// name was resolved and before anything is sent: a name that resolves to
// a refused address, at any call, is refused too.
func (d Destinations) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("destination %q: %w", address, err)
	}
	return d.Check(ap.Addr())
}

// NewClient is the HTTP client webhook calls go through: connections only
// to what d allows. Behind a proxy (HTTPS_PROXY and the like), the proxy
// is what the client connects to, and where destinations are limited.
func NewClient(d Destinations) *http.Client {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: d.control}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = dialer.DialContext
	return &http.Client{Transport: t}
}
