package main

import (
	"context"
	"fmt"
	"io"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/switchyard/switchyard/coordinator"
)

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func runCoordinator(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlags("coordinator", stderr)
	var (
		cfg  coordinator.Config
		logf logFlags
	)
	fs.StringVar(&cfg.NodeID, "node-id", "", "this coordinator's id in the cluster (required)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log and snapshots (required)")
	fs.StringVar(&cfg.RaftAddr, "raft-addr", "127.0.0.1:7000", "address Raft listens on")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", "127.0.0.1:7070", "address for /metrics, /healthz and the read API; empty disables")
	fs.StringVar(&cfg.NATSURL, "nats", envOr("SWITCHYARD_NATS", "nats://127.0.0.1:4222"), "NATS URL (env SWITCHYARD_NATS)")
	fs.IntVar(&cfg.BootstrapExpect, "bootstrap-expect", 1, "number of coordinators to bootstrap the cluster with")
	logf.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageErr(stderr, "switchyard coordinator: unexpected argument %q", fs.Arg(0))
	}
	if cfg.BootstrapExpect != 1 {
		return fmt.Errorf("--bootstrap-expect %d: only single-node clusters (1) are supported by this build", cfg.BootstrapExpect)
	}
	log, err := logf.logger(stderr)
	if err != nil {
		return usageErr(stderr, "switchyard coordinator: %v", err)
	}
	reg := newRegistry()
	cfg.Logger, cfg.Registerer, cfg.Gatherer = log, reg, reg
	srv, err := coordinator.New(cfg)
	if err != nil {
		return err
	}
	return srv.Run(ctx)
}
