package main

import (
	"context"
	"io"
	"os"

	"github.com/switchyard/switchyard/agent"
	// The proxy drivers an agent config may name, each registered by its
	// package.
	_ "github.com/switchyard/switchyard/agent/driver/envoy"
	_ "github.com/switchyard/switchyard/agent/driver/haproxy"
)

func runAgent(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("agent", stderr)
	var (
		logf    logFlags
		natsSec natsSecurityFlags
	)
	configPath := fs.String("config", "", "agent config file (YAML; see examples/agent.yaml)")
	natsURL := fs.String("nats", os.Getenv("SWITCHYARD_NATS"), "NATS URL; overrides the config's nats (env SWITCHYARD_NATS)")
	natsSec.registerCreds(fs, "")
	natsSec.registerTLS(fs)
	logf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if _, err := natsSec.options(); err != nil {
		return err
	}
	if *configPath == "" || fs.NArg() > 0 {
		return usageErr(stderr, "switchyard agent: want --config FILE and no other arguments")
	}
	log, err := logf.logger(stderr)
	if err != nil {
		return usageErr(stderr, "switchyard agent: %v", err)
	}
	cfg, err := agent.LoadConfig(*configPath)
	if err != nil {
		return err
	}
	// Files named on the command line (or in the environment) replace the
	// config's.
	for _, f := range []struct {
		dst *string
		v   string
	}{
		{&cfg.NATSClient.Creds, natsSec.sec.Creds}, {&cfg.NATSClient.CA, natsSec.sec.CA},
		{&cfg.NATSClient.Cert, natsSec.sec.Cert}, {&cfg.NATSClient.Key, natsSec.sec.Key},
	} {
		if f.v != "" {
			*f.dst = f.v
		}
	}
	reg := newRegistry()
	a, err := agent.New(cfg, agent.Options{
		Logger:     log,
		Registerer: reg,
		Gatherer:   reg,
		NATSURL:    *natsURL,
		Version:    version,
	})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}
