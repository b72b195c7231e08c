// Command demo runs a blue-green release on a local three-node fleet and
// narrates it: real NATS, a coordinator, agents, HAProxy and HTTP backends,
// all on 127.0.0.1, all stopped again when it ends or on Ctrl-C. `make demo`
// runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// rolloutName is the name in examples/bluegreen.yaml.
const rolloutName = "web-green-1"

// perNode is how many requests the demo sends through each HAProxy to show
// who answers.
const perNode = 10

func main() {
	verbose := flag.Bool("v", false, "also print what the harness does, step by step")
	keep := flag.Bool("keep", false, "keep the fleet's directory (configs, data, logs) after the demo")
	stay := flag.Bool("keep-running", false, "after the demo, keep the fleet running (and its dashboard open) until Ctrl-C")
	timeout := flag.Duration("timeout", 3*time.Minute, "give up after this long")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// After the first Ctrl-C the demo is already cleaning up; let a
		// second one end it at once (children die with us: Pdeathsig).
		<-ctx.Done()
		stop()
	}()
	if err := run(ctx, *verbose, *keep, *stay, *timeout); err != nil {
		if ctx.Err() != nil {
			// Ctrl-C: the deferred shutdown has run; the step that was
			// cut short is no failure worth a page of logs.
			fmt.Fprintln(os.Stderr, "\ndemo interrupted; every process it started has been stopped")
			os.Exit(130)
		}
		fmt.Fprintln(os.Stderr, "\ndemo failed:", err)
		os.Exit(1)
	}
}

func run(interrupted context.Context, verbose, keep, stay bool, timeout time.Duration) (err error) {
	ctx, cancel := context.WithTimeout(interrupted, timeout)
	defer cancel()
	started := time.Now()

	root, err := harness.ModuleRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "switchyard-demo-")
	if err != nil {
		return err
	}
	fleetStarted := false
	defer func() {
		// A failed run keeps its logs: they are the only way to see why.
		// An interrupted one did not fail.
		if keep || (err != nil && fleetStarted && interrupted.Err() == nil) {
			fmt.Printf("\nThe fleet's configs, data and logs are in %s\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()
	binDir, err := os.MkdirTemp("", "switchyard-demo-bin-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(binDir)

	step("Building switchyard and the demo backend")
	sy, be, err := harness.BuildBinaries(ctx, binDir)
	if err != nil {
		return err
	}

	step("Starting a fleet of 3 edge nodes")
	say("switchyard dev runs NATS (JetStream) and one coordinator; every node gets")
	say("a blue and a green backend, a real HAProxy in front of them (blue weight")
	say("100, green weight 0) and a switchyard agent driving that HAProxy.")
	say("NATS runs in operator mode with TLS: every agent has its own creds,")
	say("allowed to read desired state and publish only its own telemetry and status.")
	var log io.Writer = io.Discard
	if verbose {
		log = os.Stderr
	}
	fleetStarted = true
	f, err := harness.StartFleet(ctx, harness.FleetOptions{
		Dir: dir, Nodes: 3, Service: "web", Switchyard: sy, Backend: be, Log: log,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println()
		step("Stopping every process")
		if cerr := f.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("shutdown: %w", cerr))
			return
		}
		say("done in %s", time.Since(started).Round(100*time.Millisecond))
	}()
	fmt.Println()
	say("SWITCHYARD_NATS=%s", f.NATSURL)
	say("SWITCHYARD_NATS_CA=%s", f.Bus.CA)
	say("identities (operator, coordinator, one agent creds per node): %s", f.Bus.AuthDir)
	say("coordinator metrics: http://%s/metrics", f.CoordinatorHTTP)
	say("dashboard: http://%s/ui/ (make demo KEEP=1 keeps it open after the demo)", f.CoordinatorHTTP)
	for _, n := range f.Nodes {
		say("%s  haproxy http://%s/   agent http://%s/healthz", n.ID, n.FrontendAddr, n.AgentHTTP)
	}

	step("Traffic before the rollout")
	if err := showTraffic(ctx, f); err != nil {
		return err
	}

	specPath := filepath.Join(root, "examples", "bluegreen.yaml")
	step("switchyard rollout apply -f examples/bluegreen.yaml")
	if err := printSpec(specPath); err != nil {
		return err
	}
	res, err := f.Apply(ctx, specPath)
	if err != nil {
		return err
	}
	printOutput(res.Stdout)

	step("Waiting until every node sends all traffic to green")
	if err := f.WaitAllServing(ctx, harness.Green, perNode); err != nil {
		return err
	}
	if _, err := f.WaitRollout(ctx, rolloutName, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED)); err != nil {
		return err
	}
	if err := showTraffic(ctx, f); err != nil {
		return err
	}

	step("switchyard rollout status " + rolloutName)
	if err := showStatus(ctx, f, rolloutName); err != nil {
		return err
	}

	step(`switchyard rollout abort ` + rolloutName + ` --reason "demo: back to blue"`)
	if res, err = f.Abort(ctx, rolloutName, "demo: back to blue"); err != nil {
		return err
	}
	printOutput(res.Stdout)

	step("Waiting until every node is back on blue")
	if err := f.WaitAllServing(ctx, harness.Blue, perNode); err != nil {
		return err
	}
	if _, err := f.WaitRollout(ctx, rolloutName, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		return err
	}
	if err := showTraffic(ctx, f); err != nil {
		return err
	}
	step("switchyard rollout status " + rolloutName)
	if err := showStatus(ctx, f, rolloutName); err != nil {
		return err
	}

	if err := badCanary(ctx, f, dir); err != nil {
		return err
	}
	if stay {
		step("The fleet keeps running; Ctrl-C ends it")
		say("dashboard: http://%s/ui/", f.CoordinatorHTTP)
		say("SWITCHYARD_NATS=%s SWITCHYARD_NATS_CA=%s SWITCHYARD_NATS_CREDS=%s", f.NATSURL, f.Bus.CA, filepath.Join(f.Bus.AuthDir, "creds", "operator.creds"))
		<-interrupted.Done()
		return nil
	}
	return nil
}

// canaryName is the demo's canary, and demoCanary its spec: green at 20%
// for long enough that only the judge can end it.
const (
	canaryName = "web-canary-demo"
	demoCanary = `version: v1
name: web-canary-demo
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {duration: 10m}
`
	// demoRate is the requests per second the demo sends through each node.
	demoRate = 100
	// badErrorRate is the share of requests the broken green fails.
	badErrorRate = 0.1
)

// badCanary shows what Switchyard is for: a canary under real traffic in
// which green starts failing, caught and reverted with nobody acting.
func badCanary(ctx context.Context, f *harness.Fleet, dir string) error {
	step("A canary that goes wrong, under real traffic")
	say("%d requests a second go through every node's HAProxy from now on.", demoRate)
	urls := make([]string, len(f.Nodes))
	for i, n := range f.Nodes {
		urls[i] = "http://" + n.FrontendAddr + "/"
	}
	load := harness.StartLoad(ctx, urls, demoRate)
	defer load.Stop()

	specPath := filepath.Join(dir, "canary-demo.yaml")
	if err := os.WriteFile(specPath, []byte(demoCanary), 0o644); err != nil {
		return err
	}
	step("switchyard rollout apply -f canary-demo.yaml")
	printOutput(demoCanary)
	fmt.Println()
	res, err := f.Apply(ctx, specPath)
	if err != nil {
		return err
	}
	printOutput(res.Stdout)
	if _, err := f.WaitRollout(ctx, canaryName, func(v *sv1.RolloutView) error {
		if v.GetRollout().GetStep() != 1 || v.GetConverged() != uint32(len(f.Nodes)) {
			return fmt.Errorf("not yet at 20%% on every node")
		}
		return nil
	}); err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // a few healthy reports on both backends
	say("every node sends 20%% to green; traffic so far: %s", harness.FormatCounts(load.Counts()))

	step(fmt.Sprintf("Green starts failing %.0f%% of its requests (a bad release)", 100*badErrorRate))
	for _, n := range f.Nodes {
		if err := setBehavior(ctx, n.GreenAddr, badErrorRate); err != nil {
			return err
		}
	}
	broke := time.Now()
	if err := f.WaitAllServing(ctx, harness.Blue, perNode); err != nil {
		return err
	}
	onBlue := time.Now()
	first := load.Counts()[harness.Green].FirstError
	if first.IsZero() || first.Before(broke) {
		first = broke
	}
	say("first bad request from green:   %s", first.Format("15:04:05.000"))
	say("every HAProxy back on blue:     %s", onBlue.Format("15:04:05.000"))
	say("caught and reverted in %s, with nobody acting", onBlue.Sub(first).Round(10*time.Millisecond))
	if _, err := f.WaitRollout(ctx, canaryName, f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		return err
	}
	say("traffic: %s", harness.FormatCounts(load.Counts()))
	step("switchyard rollout status " + canaryName + "   # the evidence")
	return showStatus(ctx, f, canaryName)
}

// setBehavior tells a demo backend what share of requests to fail.
func setBehavior(ctx context.Context, addr string, errorRate float64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("http://%s/behavior?error-rate=%v", addr, errorRate), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("set behavior of %s: %s", addr, resp.Status)
	}
	return nil
}

// showTraffic sends requests through every node's HAProxy, as curl would,
// and prints who answered.
func showTraffic(ctx context.Context, f *harness.Fleet) error {
	for i, n := range f.Nodes {
		counts := f.Sample(ctx, i, perNode)
		if err := ctx.Err(); err != nil {
			return err
		}
		names := make([]string, 0, len(counts))
		for name := range counts {
			names = append(names, name)
		}
		sort.Strings(names)
		var parts []string
		for _, name := range names {
			parts = append(parts, fmt.Sprintf("%s x%d", name, counts[name]))
		}
		say("$ curl -s http://%s/   # %d times, %s  ->  %s", n.FrontendAddr, perNode, n.ID, strings.Join(parts, ", "))
	}
	return nil
}

func showStatus(ctx context.Context, f *harness.Fleet, name string) error {
	res, err := f.Run(ctx, "rollout", "status", name)
	if err != nil {
		return err
	}
	if res.ExitCode != 0 {
		return &harness.CLIError{Result: res}
	}
	printOutput(res.Stdout)
	return nil
}

func printSpec(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	// The spec without its comments: the demo shows what is sent.
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if t := strings.TrimSpace(l); t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		lines = append(lines, l)
	}
	printOutput(strings.Join(lines, "\n"))
	fmt.Println()
	return nil
}

func step(title string) { fmt.Printf("\n== %s\n", title) }

func say(format string, args ...any) { fmt.Printf("   "+format+"\n", args...) }

func printOutput(s string) {
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Println("   | " + l)
	}
}
