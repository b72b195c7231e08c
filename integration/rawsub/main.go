// Command rawsub is the raw NATS comparator of the process-agent scale
// benchmark: a process that connects to the bus as an agent would (its own
// identity, TLS), subscribes to one core subject and, for every message,
// writes the message's sequence number, its send time and its own receive
// time to stdout. Many of them side by side measure what one core publish
// to that many separate processes costs on the machine, with nothing of
// Switchyard's work in between.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "rawsub:", err)
		os.Exit(1)
	}
}

// MessageSize is the payload: a big-endian sequence number and the sender's
// clock in Unix nanoseconds.
const MessageSize = 16

func run() error {
	var (
		url     = flag.String("nats", "", "NATS URL (required)")
		creds   = flag.String("nats-creds", "", "NATS .creds file")
		ca      = flag.String("nats-ca", "", "CA of the NATS servers' certificates")
		subject = flag.String("subject", "", "core subject to subscribe to (required)")
		name    = flag.String("name", "rawsub", "connection name")
	)
	flag.Parse()
	if *url == "" {
		return errors.New("--nats is required")
	}
	if *subject == "" {
		return errors.New("--subject is required")
	}
	opts, err := bus.Security{Creds: *creds, CA: *ca}.Options("--nats-")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// Hundreds of these start at once on a loaded machine: a handshake the
	// server gave up on is tried again, as an agent's would be.
	var nc *nats.Conn
	for attempt := 1; ; attempt++ {
		nc, err = nats.Connect(*url, append(opts, nats.Name(*name), nats.Timeout(time.Minute))...)
		if err == nil {
			break
		}
		if attempt == 10 {
			return fmt.Errorf("connect to %s (%d attempts): %w", *url, attempt, err)
		}
		fmt.Fprintf(os.Stderr, "rawsub: connect to %s: %v; trying again\n", *url, err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
		}
	}
	defer nc.Close()
	_, err = nc.Subscribe(*subject, func(m *nats.Msg) {
		received := time.Now().UnixNano()
		if len(m.Data) != MessageSize {
			fmt.Fprintf(os.Stderr, "rawsub: message of %d bytes, want %d\n", len(m.Data), MessageSize)
			return
		}
		seq := binary.BigEndian.Uint64(m.Data)
		sent := int64(binary.BigEndian.Uint64(m.Data[8:]))
		fmt.Printf("%d %d %d\n", seq, sent, received)
	})
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", *subject, err)
	}
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Println("ready")
	<-ctx.Done()
	return nil
}
