package bus

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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
	s, err := server.NewServer(&server.Options{
		ServerName: "switchyard-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		// The HTTP monitor is off; Switchyard serves its own /metrics.
		HTTPPort: 0,
	})
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
