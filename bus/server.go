package bus

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/switchyard/switchyard/internal/certs"
)

// EmbeddedOptions configure an in-process NATS server with JetStream.
type EmbeddedOptions struct {
	// Host to listen on; 127.0.0.1 when empty.
	Host string
	// Port to listen on; 0 picks a free port.
	Port int
	// StoreDir holds the JetStream file store. Required.
	StoreDir string
	// Logger receives the server's log lines at debug level; nil is silent.
	Logger *slog.Logger
	// AuthConfig is a NATS server configuration with the operator, system
	// account and resolver (bus/auth's ServerConfig), parsed by the server
	// exactly as a production server parses its file. Empty runs the server
	// without authorization.
	AuthConfig string
	// TLS is the server's certificate, key and CA; when set, every client
	// must speak TLS.
	TLS certs.Files
	// VerifyClients also requires client certificates signed by the CA.
	VerifyClients bool
}

// RunEmbedded starts a NATS server with JetStream inside this process and
// waits until it accepts connections. The caller shuts it down with
// Shutdown and WaitForShutdown.
func RunEmbedded(o EmbeddedOptions) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, fmt.Errorf("embedded nats: store directory is required")
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{}
	if o.AuthConfig != "" {
		if err := os.MkdirAll(o.StoreDir, 0o700); err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		path := filepath.Join(o.StoreDir, "auth.conf")
		if err := os.WriteFile(path, []byte(o.AuthConfig), 0o600); err != nil {
			return nil, fmt.Errorf("embedded nats: %w", err)
		}
		var err error
		if opts, err = server.ProcessConfigFile(path); err != nil {
			return nil, fmt.Errorf("embedded nats: auth config: %w", err)
		}
	}
	opts.ServerName = "switchyard-embedded"
	opts.Host, opts.Port = host, port
	opts.JetStream, opts.StoreDir = true, o.StoreDir
	opts.NoSigs = true
	// The HTTP monitor is off; Switchyard serves its own /metrics.
	opts.HTTPPort = 0
	if o.TLS.Cert != "" || o.TLS.CA != "" {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: o.TLS.Cert, KeyFile: o.TLS.Key, CaFile: o.TLS.CA, Verify: o.VerifyClients,
		})
		if err != nil {
			return nil, fmt.Errorf("embedded nats: tls: %w", err)
		}
		// Generous handshake and auth timeouts: a thousand agents
		// reconnecting at once to a busy server must not be cut off
		// halfway and retry, which only adds load.
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = tc, true, o.VerifyClients, 5
		opts.AuthTimeout = 5
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if o.Logger != nil {
		s.SetLoggerV2(&serverLogger{l: o.Logger}, false, false, false)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats: not ready after 10s")
	}
	return s, nil
}

// serverLogger adapts nats-server's logger to slog.
type serverLogger struct{ l *slog.Logger }

func (s *serverLogger) Noticef(format string, v ...any) { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Warnf(format string, v ...any)   { s.l.Warn(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Fatalf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Errorf(format string, v ...any)  { s.l.Error(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Debugf(format string, v ...any)  { s.l.Debug(fmt.Sprintf(format, v...)) }
func (s *serverLogger) Tracef(format string, v ...any)  {}
