// Command load sends steady HTTP traffic through an edge node's HAProxy and
// prints, every few seconds, which backend answered how many requests and how
// many of them failed: the traffic a canary's analysis needs to decide, for
// the README tour and for trying a rollout by hand.
//
//	go run ./integration/load --url http://127.0.0.1:8080/ --rate 50
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(2)
	}
}

type urls []string

func (u *urls) String() string     { return fmt.Sprint(*u) }
func (u *urls) Set(v string) error { *u = append(*u, v); return nil }

func run() error {
	var targets urls
	flag.Var(&targets, "url", "URL to send requests to (repeat for several nodes); only 127.0.0.1 makes sense here")
	rate := flag.Int("rate", 50, "requests per second to each URL")
	every := flag.Duration("every", 10*time.Second, "how often to print the counts")
	duration := flag.Duration("duration", 0, "stop after this long (default: until interrupted)")
	flag.Parse()
	if len(targets) == 0 {
		return fmt.Errorf("--url is required")
	}
	if *rate <= 0 || *rate > 10000 {
		return fmt.Errorf("--rate %d: want 1..10000 requests per second", *rate)
	}
	if *every <= 0 {
		return fmt.Errorf("--every %v: want a positive duration", *every)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	l := harness.StartLoad(ctx, targets, *rate)
	tick := time.NewTicker(*every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			l.Stop()
			fmt.Println("load: done;", harness.FormatCounts(l.Counts()))
			return nil
		case <-tick.C:
			fmt.Println("load:", harness.FormatCounts(l.Counts()))
		}
	}
}
