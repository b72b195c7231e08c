package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator"
)

const keysUsage = `Usage:
  switchyard keys generate --out FILE    create a coordinator signing key pair:
                                         FILE (private, for signing.key) and FILE.pub
`

func runKeys(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "help" {
		fmt.Fprint(stdout, keysUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	switch args[0] {
	case "generate":
		fs := newFlags("keys generate", stderr)
		out := fs.String("out", "", "path of the private key to write (mode 0600; FILE.pub gets the public key); it must not exist")
		if err := parse(fs, args[1:]); err != nil {
			return err
		}
		if *out == "" || fs.NArg() > 0 {
			return usageErr(stderr, "switchyard keys generate: want --out FILE and nothing else\n\n%s", keysUsage)
		}
		pub, err := bus.GenerateSigningKey(*out)
		if err != nil {
			return fmt.Errorf("--out %s: %w", *out, err)
		}
		fmt.Fprintf(stdout, "signing key: %s (private: give it to the coordinators as signing.key)\n", *out)
		fmt.Fprintf(stdout, "public key:  %s.pub\n", *out)
		fmt.Fprintf(stdout, "key id:      %s\n", bus.KeyID(pub))
		fmt.Fprintf(stdout, "trust line:  %s\n", bus.FormatPublicKey(pub))
		return nil
	}
	return usageErr(stderr, "switchyard keys: unknown verb %q\n\n%s", args[0], keysUsage)
}

// signingFlags are the coordinator's signing settings on the command line
// and in its config file.
type signingFlags struct {
	Key      string        `yaml:"key"`
	Trusted  []string      `yaml:"trusted"`
	Validity time.Duration `yaml:"validity"`
}

// load reads the key files into the coordinator's config.
func (s signingFlags) load() (coordinator.Signing, error) {
	var out coordinator.Signing
	if s.Key == "" {
		return out, fmt.Errorf("coordinator: --signing-key (signing.key) is required; create one with `switchyard keys generate --out FILE`")
	}
	key, err := bus.LoadSigningKey(s.Key)
	if err != nil {
		return out, fmt.Errorf("coordinator: --signing-key: %w", err)
	}
	out.Key, out.Validity = key, s.Validity
	for i, t := range s.Trusted {
		pub, err := bus.LoadPublicKey(t)
		if err != nil {
			return out, fmt.Errorf("coordinator: signing.trusted[%d]: %w", i, err)
		}
		out.Trusted = append(out.Trusted, pub)
	}
	return out, nil
}

const raiseEpochUsage = `Usage:
  switchyard coordinator raise-epoch --http ADDR[,ADDR...] [--cluster-ca FILE --cluster-cert FILE --cluster-key FILE] --reason TEXT
`

// coordinatorRaiseEpoch is the disaster-recovery step: the leader raises the
// cluster epoch above every verified document in the buckets.
func coordinatorRaiseEpoch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("coordinator raise-epoch", stderr)
	var addrs stringList
	fs.Var(&addrs, "http", "HTTP address of a coordinator (repeatable); the leader among them raises the epoch")
	reason := fs.String("reason", "", "why, kept in the Raft log (required)")
	var cluster clusterTLSFlags
	cluster.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(addrs) == 0 || *reason == "" || fs.NArg() > 0 {
		return usageErr(stderr, "switchyard coordinator raise-epoch: want --http ADDR and --reason TEXT\n\n%s", raiseEpochUsage)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	client, err := cluster.client()
	if err != nil {
		return err
	}
	ch, err := client.RaiseEpoch(ctx, addrs, *reason)
	if err != nil {
		return fmt.Errorf("raise epoch: %w", err)
	}
	fmt.Fprintf(stdout, "cluster epoch raised from %d to %d (highest verified epoch in the buckets: %d; by %s)\n", ch.From, ch.To, ch.HighestSeen, ch.AnsweredBy)
	return nil
}
