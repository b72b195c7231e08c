// Command reportgen is the load generator of the telemetry ingest
// benchmark: a process of its own (so the coordinator's CPU is measured
// apart from the load's) that publishes health reports of many simulated
// nodes, each node one report a second on its own telemetry subject, as
// agents send them. Reports are encoded before the load starts (10
// backends with latency sketches by default, 256 bodies cycled over nodes
// and seconds); a publish only copies a node's pre-encoded report and
// appends the second's two pre-encoded window timestamps. It prints
// "report-bytes N" (a report's mean size) and "ready" once connected, then
// "published N" (the running total) every 100 ms.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/reports"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "reportgen:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		url        = flag.String("nats", "", "NATS URL (required)")
		creds      = flag.String("nats-creds", "", "NATS .creds file of an identity that may publish every node's reports")
		ca         = flag.String("nats-ca", "", "CA of the NATS servers' certificates")
		nodes      = flag.Int("nodes", 1000, "simulated nodes, each one report a second")
		backends   = flag.Int("backends", 10, "backends per report (the first two are --from and --to)")
		service    = flag.String("service", "web", "service the reports are for")
		from       = flag.String("from", "blue", "first backend's name")
		to         = flag.String("to", "green", "second backend's name")
		rollout    = flag.String("rollout", "", "rollout id the reports carry (none when empty)")
		generation = flag.Uint64("generation", 0, "generation the reports carry")
		conns      = flag.Int("conns", 4, "NATS connections, each publishing its share of the nodes")
	)
	flag.Parse()
	switch {
	case *url == "":
		return errors.New("--nats is required")
	case *nodes < 1:
		return fmt.Errorf("--nodes %d: want at least 1", *nodes)
	case *backends < 2:
		return fmt.Errorf("--backends %d: want at least 2 (--from and --to)", *backends)
	case *conns < 1:
		return fmt.Errorf("--conns %d: want at least 1", *conns)
	}
	bodies, err := reports.Bodies(*service, *from, *to, *rollout, *generation, *backends, 256)
	if err != nil {
		return err
	}
	// Each node's report without its window: its node field, then a body.
	type node struct {
		subject string
		prefix  []byte
	}
	all := make([]node, *nodes)
	for i := range all {
		name := fmt.Sprintf("sim-%06d", i)
		all[i] = node{subject: bus.TelemetrySubject(*service, name), prefix: reports.AppendNode(nil, name)}
	}
	// Options by hand: the identity may be the benchmark's wildcard agent
	// ("*"), which has no inbox to name; the generator only publishes.
	var opts []nats.Option
	if *creds != "" {
		opts = append(opts, nats.UserCredentials(*creds))
	}
	if *ca != "" {
		opts = append(opts, nats.RootCAs(*ca))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	ncs := make([]*nats.Conn, *conns)
	for i := range ncs {
		nc, err := nats.Connect(*url, append(opts, nats.Name(fmt.Sprintf("reportgen-%d", i)), nats.Timeout(time.Minute))...)
		if err != nil {
			return fmt.Errorf("connect to %s: %w", *url, err)
		}
		defer nc.Close()
		ncs[i] = nc
	}
	// The mean size of a report as published: what each report costs the
	// bus and the coordinators' reads.
	window := reports.AppendWindow(nil, time.Now().Unix())
	size := 0
	for _, b := range bodies {
		size += len(all[0].prefix) + len(b) + len(window)
	}
	fmt.Printf("report-bytes %d\n", size/len(bodies))
	fmt.Println("ready")

	var published atomic.Int64
	var wg sync.WaitGroup
	for g, nc := range ncs {
		wg.Go(func() {
			var mine []node
			for i := g; i < len(all); i += len(ncs) {
				mine = append(mine, all[i])
			}
			// The nodes of a connection report spread over the second, in
			// slices; a slice is never skipped: a generator that falls
			// behind publishes less than the target rate, and the total
			// says so.
			const slices = 50
			tick := time.NewTicker(time.Second / slices)
			defer tick.Stop()
			buf := make([]byte, 0, 8192)
			var window []byte
			windowSec := int64(0)
			for {
				for slice := range slices {
					if sec := time.Now().Unix(); sec != windowSec {
						windowSec = sec
						window = reports.AppendWindow(window[:0], sec)
					}
					from, to := len(mine)*slice/slices, len(mine)*(slice+1)/slices
					for j := from; j < to; j++ {
						n := &mine[j]
						buf = append(buf[:0], n.prefix...)
						buf = append(buf, bodies[(j*len(ncs)+g+int(windowSec))%len(bodies)]...)
						buf = append(buf, window...)
						if err := nc.Publish(n.subject, buf); err != nil {
							fmt.Fprintln(os.Stderr, "reportgen: publish:", err)
							return
						}
					}
					published.Add(int64(to - from))
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
					}
				}
			}
		})
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			fmt.Printf("published %d\n", published.Load())
			return nil
		case <-tick.C:
			fmt.Printf("published %d\n", published.Load())
		}
	}
}
