// Command switchyard is the one Switchyard binary: the coordinator, the edge
// agent, a development fleet in one process, and the operator verbs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchyard/switchyard/bus"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed, or the request was refused
	exitUsage   = 2 // the command line was wrong
	// exitNotPublished: the coordinators committed the change, but the
	// desired state did not reach the bus, so no proxy follows it yet.
	exitNotPublished = 3
)

// version is stamped at build time (make build: -ldflags "-X main.version=…"
// from git describe); "dev" otherwise. Agents report it in their status.
var version = "dev"

// errUsage marks command-line mistakes; the message has been printed.
var errUsage = errors.New("usage")

const usage = `switchyard: safe blue-green and canary releases for edge fleets

Usage:
  switchyard dev          [flags]   embedded NATS and one coordinator, for trying things
  switchyard coordinator  [flags]   run a coordinator
  switchyard agent --config FILE    run the agent of one edge node
  switchyard rollout apply -f FILE  start a rollout
  switchyard rollout status [NAME]  show rollouts and how far the fleet followed
  switchyard rollout ...            plan, watch, pause, resume, approve, promote, abort, undo,
                                    retry, list, history, series, simulate (see 'switchyard rollout help')
  switchyard fleet status [SERVICE] the fleet by service, wave and node
  switchyard chaos run -f FILE      schedule a chaos drill (see 'switchyard chaos help')
  switchyard coordinator members    the coordinator cluster
  switchyard auth ...               NATS identities (init, issue, revoke, push, list) and
                                    development TLS certificates (see 'switchyard auth help')
  switchyard keys generate --out F  a coordinator signing key pair (agents trust F.pub), or an
                                    operator's intent signing key
  switchyard intent sign            sign an intent read as JSON, for pipelines (see 'switchyard intent help')
  switchyard acl ...                roles and policies: list, grant, revoke, policy, bootstrap
  switchyard audit log | verify     the audit trail of every decision, and its hash chain
  switchyard --version              the version this binary was built as

Run 'switchyard <command> -h' for a command's flags.
Client commands take --nats URL, --nats-creds FILE and --nats-ca FILE, or the
SWITCHYARD_NATS, SWITCHYARD_NATS_CREDS and SWITCHYARD_NATS_CA environment variables.
Read verbs print tables, or with -o json what the read API answers (docs/api.md).
The web dashboard is at https://COORDINATOR-HTTP-ADDRESS/ui/ (docs/dashboard.md).
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	var err error
	switch args[0] {
	case "dev":
		err = runDev(ctx, args[1:], stdout, stderr)
	case "coordinator":
		err = runCoordinator(ctx, args[1:], stdout, stderr)
	case "agent":
		err = runAgent(ctx, args[1:], stderr)
	case "rollout":
		err = runRollout(ctx, args[1:], stdout, stderr)
	case "keys":
		err = runKeys(ctx, args[1:], stdout, stderr)
	case "intent":
		err = runIntent(ctx, args[1:], os.Stdin, stdout, stderr)
	case "acl":
		err = runAcl(ctx, args[1:], stdout, stderr)
	case "audit":
		err = runAudit(ctx, args[1:], stdout, stderr)
	case "chaos":
		err = runChaos(ctx, args[1:], stdout, stderr)
	case "fleet":
		err = runFleet(ctx, args[1:], stdout, stderr)
	case "auth":
		err = runAuth(ctx, args[1:], stdout, stderr)
	case "--version", "-version", "version":
		fmt.Fprintf(stdout, "switchyard %s\n", version)
		return exitOK
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "switchyard: unknown command %q\n\n%s", args[0], usage)
		return exitUsage
	}
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		return exitUsage
	case errors.Is(err, bus.ErrNotPublished):
		fmt.Fprintf(stderr, "error: %v\n", err)
		return exitNotPublished
	default:
		fmt.Fprintf(stderr, "error: %v\n", err)
		return exitFailure
	}
}

// newFlags returns a flag set that reports mistakes as errUsage.
func newFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("switchyard "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// flagSet reports whether the command line gave flag name.
func flagSet(fs *flag.FlagSet, name string) bool {
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == name })
	return given
}

// parse parses args, mapping flag errors to errUsage (flag has printed them).
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	return nil
}

func usageErr(stderr io.Writer, format string, args ...any) error {
	fmt.Fprintf(stderr, format+"\n", args...)
	return errUsage
}
