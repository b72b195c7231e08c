// Package harnesstest adapts the harness to Go tests: fleets that stop with
// the test, log tails on failure, and race reports from child processes
// turned into test failures.
package harnesstest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
)

// KeepEnv names the environment variable that, when set to 1, keeps a test's
// fleet directory (configs, data, logs) instead of removing it, and prints
// where it is.
const KeepEnv = "SWITCHYARD_KEEP_TEST_DIR"

// Context returns a context that ends after d, or a little before the test
// binary's own deadline so a hung wait fails with its own message rather
// than a panic dump of every goroutine.
func Context(tb testing.TB, d time.Duration) context.Context {
	tb.Helper()
	deadline := time.Now().Add(d)
	if t, ok := tb.(interface{ Deadline() (time.Time, bool) }); ok {
		if td, ok := t.Deadline(); ok && td.Add(-10*time.Second).Before(deadline) {
			deadline = td.Add(-10 * time.Second)
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	tb.Cleanup(cancel)
	return ctx
}

// Dir returns a directory for a test's fleet: t.TempDir(), or a kept
// directory when KeepEnv is set.
func Dir(tb testing.TB) string {
	tb.Helper()
	if os.Getenv(KeepEnv) != "1" {
		return tb.TempDir()
	}
	dir, err := os.MkdirTemp("", "switchyard-"+strings.ReplaceAll(tb.Name(), "/", "_")+"-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Logf("keeping fleet directory %s", dir)
	return dir
}

// StartFleet starts a fleet for the test and stops it when the test ends.
// On failure the tails of all logs are printed first. Unclean exits on
// shutdown and data races reported by race-built children fail the test.
func StartFleet(tb testing.TB, ctx context.Context, o harness.FleetOptions) *harness.Fleet {
	tb.Helper()
	if o.Dir == "" {
		o.Dir = Dir(tb)
	}
	if o.Log == nil {
		o.Log = logWriter{tb}
	}
	f, err := harness.StartFleet(ctx, o)
	if err != nil {
		tb.Fatalf("start fleet: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("logs of the fleet in %s:\n%s", o.Dir, f.LogTails(60))
		}
		if err := f.Close(); err != nil {
			tb.Errorf("fleet shutdown was not clean: %v\n%s", err, f.LogTails(30))
		}
		for _, r := range f.RaceReports() {
			tb.Errorf("data race in a child process:\n%s", r)
		}
	})
	return f
}

// StartNATS runs a NATS server with JetStream inside the test process (the
// real nats-server code) on a random 127.0.0.1 port with its store in a
// temporary directory, in operator mode with its own operator/account setup
// and TLS from a CA made for the test, and shuts it down when the test ends.
// It returns the bus as clients see it.
func StartNATS(tb testing.TB) harness.Bus {
	tb.Helper()
	dir := tb.TempDir()
	sb, err := harness.NewSecuredBus(dir)
	if err != nil {
		tb.Fatalf("nats trust: %v", err)
	}
	ns, err := bus.RunEmbedded(sb.EmbeddedOptions(filepath.Join(dir, "nats")))
	if err != nil {
		tb.Fatalf("start nats: %v", err)
	}
	tb.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return sb.Bus(ns.ClientURL())
}

// StartCluster starts a coordinator cluster for the test and stops it when
// the test ends, with the same failure reporting as StartFleet. Start it
// before the fleet that uses it, so that the fleet's agents stop first.
func StartCluster(tb testing.TB, ctx context.Context, o harness.ClusterOptions) *harness.Cluster {
	tb.Helper()
	if o.Dir == "" {
		o.Dir = Dir(tb)
	}
	if o.Log == nil {
		o.Log = logWriter{tb}
	}
	c, err := harness.StartCluster(ctx, o)
	if err != nil {
		tb.Fatalf("start cluster: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("logs of the coordinators in %s:\n%s", o.Dir, c.LogTails(80))
		}
		if err := c.Close(); err != nil {
			tb.Errorf("cluster shutdown was not clean: %v\n%s", err, c.LogTails(30))
		}
		for _, r := range c.RaceReports() {
			tb.Errorf("data race in a coordinator:\n%s", r)
		}
	})
	return c
}

// logWriter sends the harness's progress lines to the test log, so they
// show up with -v and on failure, in order with the test's own lines.
type logWriter struct{ tb testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.tb.Helper()
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Must fails the test with err's message; for calls whose failure leaves
// nothing more to test.
func Must[T any](tb testing.TB, v T, err error) T {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

// Eventually polls cond until it returns nil or the context ends, failing
// the test with cond's last reason.
func Eventually(tb testing.TB, ctx context.Context, what string, cond func(ctx context.Context) error) {
	tb.Helper()
	if err := harness.Poll(ctx, 100*time.Millisecond, cond); err != nil {
		tb.Fatalf("%s: %v", what, err)
	}
}
