package coordinator

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/switchyard/switchyard/internal/certs"
)

// Coordinators talk to each other over mutual TLS when the cluster CA is
// configured: Raft's transport and the cluster routes of the HTTP API both
// present this coordinator's certificate and accept only peers whose
// certificate the same CA signed. A coordinator with a certificate from any
// other CA can neither join nor take part in a vote.

// clusterTLS loads the mutual-TLS configuration, or nil when none is set.
func (c *Config) clusterTLS() (*tls.Config, error) {
	f := c.ClusterTLS
	if f.CA == "" && f.Cert == "" && f.Key == "" {
		return nil, nil
	}
	f.CALabel, f.CertLabel, f.KeyLabel = "--cluster-ca", "--cluster-cert", "--cluster-key"
	if f.CA == "" {
		return nil, fmt.Errorf("coordinator: --cluster-ca: required with --cluster-cert and --cluster-key")
	}
	cfg, err := f.Mutual()
	if err != nil {
		return nil, fmt.Errorf("coordinator: %w", err)
	}
	return cfg, nil
}

// raftStreamLayer is Raft's network: under mutual TLS, or plain TCP when
// its configuration is nil.
type raftStreamLayer struct {
	ln net.Listener
	// advertise is the address peers dial, when not the listener's.
	advertise net.Addr
	cfg       *tls.Config
	rejected  func(peer net.Addr, err error)
}

var _ raft.StreamLayer = (*raftStreamLayer)(nil)

func newRaftStreamLayer(addr, advertise string, cfg *tls.Config, rejected func(net.Addr, error)) (*raftStreamLayer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	l := &raftStreamLayer{ln: ln, cfg: cfg, rejected: rejected}
	if advertise != "" {
		l.advertise = advertiseAddr(advertise)
	} else if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("raft address %s: give an address other coordinators can reach, not an unspecified one (or set --raft-advertise)", addr)
	}
	return l, nil
}

// advertiseAddr is an advertised "host:port" as given: a host name stays a
// name, so the peers that dial it verify the certificate against it.
type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }

// checkRaftAdvertise validates --raft-advertise: empty, or host:port with
// a host other coordinators can dial and a port other than 0.
func checkRaftAdvertise(addr string) (string, error) {
	if addr == "" {
		return "", nil
	}
	if err := checkPeerAddr(addr); err != nil {
		return "", fmt.Errorf("coordinator: --raft-advertise %q: %w", addr, err)
	}
	return addr, nil
}

// checkPeerAddr checks that addr is a Raft address other coordinators can
// dial: host:port, with a host that is not unspecified and a port other
// than 0. Its errors say what is wrong, for the caller to name the field.
func checkPeerAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if host == "" {
		return errors.New("the host is missing")
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return errors.New("give an address other coordinators can reach, not an unspecified one")
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return fmt.Errorf("port %q: want 1..65535", port)
	}
	return nil
}

// Accept returns connections whose handshake runs on first use, so a slow
// or hostile peer never holds up the accept loop; a failed handshake is
// counted and logged through rejected.
func (l *raftStreamLayer) Accept() (net.Conn, error) {
	c, err := l.ln.Accept()
	if err != nil {
		return nil, err
	}
	if l.cfg == nil {
		return c, nil
	}
	return &handshakeConn{Conn: tls.Server(c, l.cfg), rejected: l.rejected}, nil
}

func (l *raftStreamLayer) Close() error { return l.ln.Close() }

// Addr is the address the transport advertises to peers.
func (l *raftStreamLayer) Addr() net.Addr {
	if l.advertise != nil {
		return l.advertise
	}
	return l.ln.Addr()
}

// Dial connects to a peer and completes the handshake, verifying the peer's
// certificate against the cluster CA and the address dialled.
func (l *raftStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	if l.cfg == nil {
		return net.DialTimeout("tcp", string(addr), timeout)
	}
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: timeout}, Config: l.cfg}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, "tcp", string(addr))
}

// handshakeConn runs the TLS handshake before the first read or write and
// reports a failure once.
type handshakeConn struct {
	*tls.Conn
	once     sync.Once
	err      error
	rejected func(net.Addr, error)
}

func (c *handshakeConn) handshake() error {
	c.once.Do(func() {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if c.err = c.Handshake(); c.err != nil {
			c.rejected(c.RemoteAddr(), c.err)
			return
		}
		_ = c.SetDeadline(time.Time{})
	})
	return c.err
}

func (c *handshakeConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *handshakeConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// errNoPeerCertificate answers cluster changes from a client without a
// certificate from the cluster CA.
var errNoPeerCertificate = errors.New("cluster changes need a coordinator certificate from the cluster CA")

// clusterPeer admits a cluster change: any caller without TLS, only a
// caller with a verified certificate with it; either way only a JSON body.
// A browser sends a form or text/plain across origins without asking the
// server first, so without that check any web page an operator opens could
// remove a coordinator or raise the epoch; JSON makes it ask, and the
// coordinator allows no other origin.
func (s *Server) clusterPeer(w http.ResponseWriter, r *http.Request) bool {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" {
		s.metrics.peerRejected.Inc()
		s.log.Warn("refused a cluster change not sent as JSON", "from", r.RemoteAddr, "path", r.URL.Path, "content_type", r.Header.Get("Content-Type"))
		http.Error(w, fmt.Sprintf("Content-Type %q: cluster changes take a JSON body sent as application/json", r.Header.Get("Content-Type")),
			http.StatusUnsupportedMediaType)
		return false
	}
	if s.clusterTLS == nil {
		return true
	}
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		s.metrics.peerRejected.Inc()
		s.log.Warn("refused a cluster change without a coordinator certificate", "from", r.RemoteAddr, "path", r.URL.Path)
		http.Error(w, errNoPeerCertificate.Error(), http.StatusForbidden)
		return false
	}
	return true
}

// httpTLS is the HTTP API's server configuration: a client certificate is
// optional (Prometheus and browsers read without one) but verified when
// given, and cluster changes require it.
func httpTLS(mutual *tls.Config) *tls.Config {
	c := mutual.Clone()
	c.ClientAuth = tls.VerifyClientCertIfGiven
	return c
}

// ClusterClientTLS loads the configuration a client of the coordinators'
// HTTP API uses (`switchyard coordinator members|remove-peer`): the CA, and
// the certificate that cluster changes need.
func ClusterClientTLS(f certs.Files) (*tls.Config, error) {
	if f.CA == "" && f.Cert == "" && f.Key == "" {
		return nil, nil
	}
	if f.CA == "" {
		return nil, fmt.Errorf("%s: required with %s and %s", f.CALabel, f.CertLabel, f.KeyLabel)
	}
	return f.Client()
}

// handshakeLog receives net/http's error log: a failed TLS handshake (a
// peer or client whose certificate the cluster CA did not sign, or that
// does not trust ours) is counted and logged as a refused peer.
type handshakeLog struct{ s *Server }

func (h *handshakeLog) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if strings.Contains(line, "TLS handshake error") {
		h.s.metrics.peerRejected.Inc()
		h.s.log.Warn("refused an https connection: TLS handshake failed", "detail", line)
	} else {
		h.s.log.Warn("http server", "detail", line)
	}
	return len(p), nil
}
