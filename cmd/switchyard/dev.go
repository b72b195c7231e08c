package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
)

// runDev runs an embedded NATS server with JetStream and one coordinator in
// one process: the whole control plane for trying Switchyard on one machine.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dev", stderr)
	var (
		dataDir  = fs.String("data-dir", "", "directory for NATS and Raft data (default: a new temporary directory, removed on exit)")
		natsPort = fs.Int("nats-port", 4222, "NATS port on 127.0.0.1; 0 picks a free one")
		httpAddr = fs.String("http-addr", "127.0.0.1:7070", "coordinator HTTP address; port 0 picks a free one")
		raftAddr = fs.String("raft-addr", "127.0.0.1:0", "coordinator Raft address; port 0 picks a free one")
		validity = fs.Duration("signing-validity", 0, "how long a signed document stays current on the agents (default 1h)")
		logf     logFlags
	)
	logf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	log, err := logf.logger(stderr)
	if err != nil {
		return usageErr(stderr, "switchyard dev: %v", err)
	}
	dir := *dataDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "switchyard-dev-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Port: *natsPort, StoreDir: filepath.Join(dir, "nats"), Logger: log.With("component", "nats")})
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	nc, err := bus.Connect(ns.ClientURL(), "switchyard-dev", log)
	if err != nil {
		return err
	}
	defer nc.Close()

	// dev signs with its own key, kept in the data dir so that agents
	// configured against one run trust the next.
	keyPath := filepath.Join(dir, "keys", "coordinator.key")
	if _, err := os.Stat(keyPath); os.IsNotExist(err) {
		if _, err := bus.GenerateSigningKey(keyPath); err != nil {
			return err
		}
	}
	key, err := bus.LoadSigningKey(keyPath)
	if err != nil {
		return err
	}
	reg := newRegistry()
	srv, err := coordinator.New(coordinator.Config{
		Signing:         coordinator.Signing{Key: key, Validity: *validity},
		NodeID:          "dev",
		DataDir:         filepath.Join(dir, "coordinator"),
		RaftAddr:        *raftAddr,
		HTTPAddr:        *httpAddr,
		Conn:            nc,
		BootstrapExpect: 1,
		Logger:          log,
		Registerer:      reg,
		Gatherer:        reg,
	})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	// Scripts and tests read this line to find the bus.
	fmt.Fprintf(stdout, "SWITCHYARD_NATS=%s\n", ns.ClientURL())
	fmt.Fprintf(stdout, "SWITCHYARD_HTTP=http://%s\n", srv.HTTPAddr())
	// Agents list this file (or its one line) under trust.keys.
	fmt.Fprintf(stdout, "SWITCHYARD_TRUST_KEY=%s.pub\n", keyPath)
	log.Info("dev control plane ready", "nats", ns.ClientURL(), "data", dir, "signing_key", keyPath, "trust_key", keyPath+".pub")
	return <-done
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
