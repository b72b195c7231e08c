package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/internal/certs"
)

// runDev runs an embedded NATS server with JetStream and one coordinator in
// one process: the whole control plane for trying Switchyard on one machine,
// with the same NATS authorization and TLS as a production cluster.
func runDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("dev", stderr)
	var (
		dataDir  = fs.String("data-dir", "", "directory for NATS and Raft data (default: a new temporary directory, removed on exit)")
		natsPort = fs.Int("nats-port", 4222, "NATS port on 127.0.0.1; 0 picks a free one")
		httpAddr = fs.String("http-addr", "127.0.0.1:7070", "coordinator HTTP address; port 0 picks a free one")
		raftAddr = fs.String("raft-addr", "127.0.0.1:0", "coordinator Raft address; port 0 picks a free one")
		validity = fs.Duration("signing-validity", 0, "how long a signed document stays current on the agents (default 1h)")
		viewer   = fs.String("viewer-token-file", "", "file holding a token the read API and the dashboard then require (docs/dashboard.md)")
		logf     logFlags
		notifyF  notifyFlags
	)
	logf.register(fs)
	notifyF.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, "switchyard dev: unexpected argument %q; its flags: switchyard dev -h", fs.Arg(0))
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
	sec, err := devSecurity(dir)
	if err != nil {
		return err
	}
	storeDir := filepath.Join(dir, "nats")
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{
		Port: *natsPort, StoreDir: storeDir, Logger: log.With("component", "nats"),
		AuthConfig: sec.setup.ServerConfig(filepath.Join(storeDir, "jwt")),
		TLS:        sec.server,
	})
	if err != nil {
		return err
	}
	defer func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	}()
	opts, err := bus.Security{Creds: sec.coordinatorCreds, CA: sec.server.CA}.Options("--nats-")
	if err != nil {
		return err
	}
	nc, err := bus.Connect(ns.ClientURL(), "switchyard-dev", log, opts...)
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
	// The operator's creds are the development cluster's first admin, so
	// the CLI (which signs with them) may do everything.
	adminKey, err := resolveKey(sec.operatorCreds)
	if err != nil {
		return err
	}
	srv, err := coordinator.New(coordinator.Config{
		Signing:         coordinator.Signing{Key: key, Validity: *validity},
		AclBootstrap:    coordinator.AclBootstrap{Key: adminKey, Name: "operator"},
		NodeID:          "dev",
		DataDir:         filepath.Join(dir, "coordinator"),
		RaftAddr:        *raftAddr,
		HTTPAddr:        *httpAddr,
		Conn:            nc,
		BootstrapExpect: 1,
		Logger:          log,
		Registerer:      reg,
		Gatherer:        reg,
		ViewerTokenFile: *viewer,
		Notify:          notifyF.targets(),
	})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	// Scripts and tests read these lines to find the bus; a shell can
	// eval them, or source the env file written beside the data.
	env := []string{
		"SWITCHYARD_NATS=" + ns.ClientURL(),
		"SWITCHYARD_NATS_CA=" + sec.server.CA,
		"SWITCHYARD_NATS_CREDS=" + sec.operatorCreds,
		"SWITCHYARD_AUTH_DIR=" + sec.setup.Dir(),
		"SWITCHYARD_HTTP=http://" + srv.HTTPAddr(),
		"SWITCHYARD_DASHBOARD=http://" + srv.HTTPAddr() + "/ui/",
		// Agents list this file (or its one line) under trust.keys.
		"SWITCHYARD_TRUST_KEY=" + keyPath + ".pub",
	}
	envFile := filepath.Join(dir, "env")
	if err := writeEnvFile(envFile, env); err != nil {
		return err
	}
	for _, kv := range env {
		fmt.Fprintln(stdout, kv)
	}
	fmt.Fprintf(stdout, "# in another shell: source %s\n", envFile)
	log.Info("dev control plane ready", "nats", ns.ClientURL(), "data", dir,
		"auth_dir", sec.setup.Dir(), "operator_creds", sec.operatorCreds, "nats_ca", sec.server.CA,
		"signing_key", keyPath, "trust_key", keyPath+".pub")
	return <-done
}

// writeEnvFile writes the KEY=value lines as a file a shell can source,
// replacing it whole (a reader never sees half of it).
func writeEnvFile(path string, env []string) error {
	var b strings.Builder
	b.WriteString("# written by switchyard dev; source it to talk to this control plane\n")
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "export %s=%q\n", k, v)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// devTrust is what `switchyard dev` makes in its data directory on first
// start and reuses after: the operator/account setup, a development CA with
// the NATS server's certificate, the coordinator's creds and an operator's
// creds for the CLI. Agents get theirs with 'switchyard auth issue'.
type devTrust struct {
	setup            *auth.Setup
	server           certs.Files
	coordinatorCreds string
	operatorCreds    string
}

func devSecurity(dir string) (*devTrust, error) {
	setup, err := auth.LoadOrInit(filepath.Join(dir, "auth"), "switchyard-dev")
	if err != nil {
		return nil, err
	}
	ca, err := certs.LoadOrNewCA(filepath.Join(dir, "tls"), "Switchyard development CA")
	if err != nil {
		return nil, err
	}
	server, err := ca.Issue("nats", []string{"127.0.0.1", "localhost", "::1"})
	if err != nil {
		return nil, err
	}
	t := &devTrust{setup: setup, server: server}
	for _, c := range []struct {
		role bus.Role
		name string
		dst  *string
	}{
		{bus.RoleCoordinator, "dev", &t.coordinatorCreds},
		{bus.RoleOperator, "operator", &t.operatorCreds},
	} {
		path := filepath.Join(setup.Dir(), auth.CredsDir, c.name+".creds")
		*c.dst = path
		if _, err := os.Stat(path); err == nil {
			continue
		}
		creds, err := setup.Issue(c.role, c.name)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, creds, 0o600); err != nil {
			return nil, err
		}
	}
	return t, nil
}
