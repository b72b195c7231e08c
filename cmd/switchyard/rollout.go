package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const rolloutUsage = `Usage:
  switchyard rollout apply -f FILE          start a rollout
  switchyard rollout plan -f FILE           dry run: steps, nodes per wave, guardrails; changes nothing
  switchyard rollout status [NAME]          the rollouts, newest first, or one in detail
  switchyard rollout list                   the rollouts (status without a NAME); both take
                                            --service S and --limit N (default 100, 0: every one)
  switchyard rollout watch NAME             live view until the rollout ends or waits for an approval
                                            (exit 1 if rolled back; --through-approvals keeps watching)
  switchyard rollout history NAME           every committed change of a rollout
  switchyard rollout series NAME            per-backend error rate and latency quantiles over its life
  switchyard rollout pause NAME             stop advancing (guardrails still act)
  switchyard rollout resume NAME
  switchyard rollout approve NAME           pass the gate the rollout waits at
  switchyard rollout promote NAME [--full]  skip the current step, or every remaining one
  switchyard rollout abort NAME             send the service back to the old backend
  switchyard rollout undo NAME              roll back a completed rollout
  switchyard rollout retry NAME             issue the rollout's weights again, so nodes a failed
                                            pre-traffic hook kept on the old backend run it again
  switchyard rollout simulate -f FILE --telemetry FILE
                                            replay telemetry against a spec, offline
Common flags: --nats URL (env SWITCHYARD_NATS), --nats-creds FILE, --nats-ca FILE (env
SWITCHYARD_NATS_CREDS, SWITCHYARD_NATS_CA), --timeout D, -o table|json, --reason TEXT.
Verbs that change desired state (apply, abort, undo, pause, resume, approve, promote, retry) wait,
after the commit, until the bus carries it (--publish-timeout D, 0 to skip; exit 3 when it
does not get there) and, with --wait, until every live node's proxy is seen doing it.
`

// clientFlags are the flags of every verb that talks to the coordinators.
type clientFlags struct {
	nats     string
	timeout  time.Duration
	output   string
	operator string
	// signKey signs intents; the --nats-creds seed when empty.
	signKey  string
	security natsSecurityFlags
	// publishWait and converge are the intent verbs' waits (registerWaits);
	// zero for the others.
	publishWait time.Duration
	converge    bool
	// stale lets any coordinator answer from its own replica (--stale);
	// notice then receives a line saying so.
	stale  bool
	notice io.Writer
}

// defaultPublishWait is how long an intent verb waits, after the commit,
// for the bus to carry the new desired state.
const defaultPublishWait = 15 * time.Second

// registerWaits adds the flags of verbs that change desired state: how long
// to wait for the bus, and whether to wait for the fleet.
func (c *clientFlags) registerWaits(fs *flag.FlagSet) {
	fs.DurationVar(&c.publishWait, "publish-timeout", defaultPublishWait,
		"after the commit, how long to wait for the new desired state to reach the bus (0: do not wait)")
	fs.BoolVar(&c.converge, "wait", false, "after publishing, wait (up to --timeout) until every live node's proxy is seen doing it")
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.nats, "nats", envOr("SWITCHYARD_NATS", "nats://127.0.0.1:4222"), "NATS URL (env SWITCHYARD_NATS)")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "how long to wait for the coordinators")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	fs.StringVar(&c.operator, "operator", envOr("SWITCHYARD_OPERATOR", defaultOperator()), "who is asking, kept in the intent; history and audit show the verified signer's enrolled name")
	fs.StringVar(&c.signKey, "sign-key", envOr("SWITCHYARD_SIGN_KEY", ""), "key that signs intents: an enrolled Ed25519 key (switchyard keys generate) or a NATS creds file; default the --nats-creds user's nkey (env SWITCHYARD_SIGN_KEY)")
	c.security.register(fs)
	fs.StringVar(&c.security.sec.JetStreamDomain, "jetstream-domain", envOr("SWITCHYARD_JETSTREAM_DOMAIN", ""),
		"JetStream domain of the servers that hold the buckets and streams, when --nats is a PoP's leaf server: the hub's domain (env SWITCHYARD_JETSTREAM_DOMAIN)")
}

func (c *clientFlags) check(stderr io.Writer) error {
	if err := checkOutput(stderr, c.output); err != nil {
		return err
	}
	if c.timeout <= 0 {
		return usageErr(stderr, "--timeout %s: want a duration above zero, e.g. 30s", c.timeout)
	}
	if err := bus.ValidateDomain(c.security.sec.JetStreamDomain); err != nil {
		return usageErr(stderr, "--jetstream-domain: %v", err)
	}
	if c.publishWait < 0 {
		return usageErr(stderr, "--publish-timeout %s: want 0 (do not wait for the bus) or more, e.g. 15s", c.publishWait)
	}
	return nil
}

// checkOutput refuses an output format other than the two every verb
// prints.
func checkOutput(stderr io.Writer, output string) error {
	if output != "table" && output != "json" {
		return usageErr(stderr, "-o %q: want table or json", output)
	}
	return nil
}

// parse parses a client verb's flags, which may follow its positional
// arguments, checks the output format, and returns the positionals.
func (c *clientFlags) parse(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil, err
	}
	if err := c.check(stderr); err != nil {
		return nil, err
	}
	return pos, nil
}

// connectAttempt is how long the CLI first waits for one NATS server to
// take its connection (TCP, TLS, the server's INFO and the authentication)
// before it tries the next one in --nats: a server that stopped answering
// without closing its port (its host hung, a network cut) costs this much,
// not the whole --timeout.
const connectAttempt = 2 * time.Second

// connect dials the NATS servers in --nats (in random order, as every NATS
// client does) within --timeout, or ctx's deadline when that is sooner.
// While time is left it goes round again when the last server tried did
// not answer in time, giving each twice as long as the round before, so a
// server that is only slow (a loaded one doing TLS) gets in; a server that
// refuses the connection, credentials it does not take or a certificate
// that does not verify end it at once.
func (c *clientFlags) connect(ctx context.Context) (*nats.Conn, error) {
	sec, err := c.security.options()
	if err != nil {
		return nil, err
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	type dialed struct {
		nc  *nats.Conn
		err error
	}
	for round := 0; ; round++ {
		dl, _ := ctx.Deadline()
		attempt := min(connectAttempt<<min(round, 4), time.Until(dl))
		if attempt <= 0 {
			// The deadline passed; ctx says so in a moment, and a caller
			// that checks ctx.Err() must see it ended.
			<-ctx.Done()
			return nil, c.noServerInTime()
		}
		done := make(chan dialed, 1)
		go func() {
			nc, err := nats.Connect(c.nats, append(sec, nats.Name("switchyard-cli"), nats.Timeout(attempt))...)
			done <- dialed{nc, err}
		}()
		var d dialed
		select {
		case d = <-done:
		case <-ctx.Done():
			// Every server of a long list may take its attempt: the
			// dial still going is closed once it ends.
			go func() {
				if d := <-done; d.nc != nil {
					d.nc.Close()
				}
			}()
			if errors.Is(parent.Err(), context.Canceled) {
				return nil, fmt.Errorf("connect to nats at %s: %w", c.nats, parent.Err())
			}
			return nil, c.noServerInTime()
		}
		if d.err == nil {
			return d.nc, nil
		}
		if !timedOut(d.err) || ctx.Err() != nil {
			return nil, fmt.Errorf("connect to nats at %s (set --nats or SWITCHYARD_NATS): %w", c.nats, d.err)
		}
	}
}

func (c *clientFlags) noServerInTime() error {
	return fmt.Errorf("connect to nats at %s: no server took the connection within --timeout %s", c.nats, c.timeout)
}

// timedOut says whether a connect failed because a server did not answer
// in time (worth another try), rather than refused it or what it was sent.
func timedOut(err error) bool {
	var ne net.Error
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

func defaultOperator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		return name + "@" + h
	}
	return name
}

// parseInterleaved parses flags that may come after positional arguments
// ("status web-1 -o json"), returning the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parse(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runRollout(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, rolloutUsage)
		return errUsage
	}
	switch args[0] {
	case "apply":
		return rolloutApply(ctx, args[1:], stdout, stderr)
	case "status":
		return rolloutStatus(ctx, args[1:], stdout, stderr)
	case "list":
		return rolloutList(ctx, args[1:], stdout, stderr)
	case "series":
		return rolloutSeries(ctx, args[1:], stdout, stderr)
	case "abort", "undo", "pause", "resume", "approve", "promote", "retry":
		return rolloutControl(ctx, args[0], args[1:], stdout, stderr)
	case "plan":
		return rolloutPlan(ctx, args[1:], stdout, stderr)
	case "watch":
		return rolloutWatch(ctx, args[1:], stdout, stderr)
	case "history":
		return rolloutHistory(ctx, args[1:], stdout, stderr)
	case "simulate":
		return rolloutSimulate(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, rolloutUsage)
		return nil
	}
	return usageErr(stderr, "switchyard rollout: unknown verb %q\n\n%s", args[0], rolloutUsage)
}

func rolloutApply(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout apply", stderr)
	var c clientFlags
	c.register(fs)
	c.registerWaits(fs)
	file := fs.String("f", "", "rollout spec file (YAML); - reads standard input")
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if *file == "" || len(pos) > 0 {
		return usageErr(stderr, "switchyard rollout apply: want -f FILE and no other arguments")
	}
	sp, err := readSpec(*file)
	if err != nil {
		return err
	}
	in := &sv1.Intent{Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}
	return sendIntent(ctx, c, bus.IntentKindRollout, in, "rollout "+sp.GetName()+": apply", stdout)
}

// rolloutControl sends one of the verbs that act on a named rollout.
func rolloutControl(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout "+verb, stderr)
	var c clientFlags
	c.register(fs)
	c.registerWaits(fs)
	reason := fs.String("reason", "", "why, for the record")
	full := fs.Bool("full", false, "promote: skip every remaining step and wave")
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr(stderr, "switchyard rollout %s: want exactly one rollout NAME", verb)
	}
	if *full && verb != "promote" {
		return usageErr(stderr, "switchyard rollout %s: --full goes with promote", verb)
	}
	name := pos[0]
	ctl := &sv1.RolloutControl{Rollout: name, Reason: *reason}
	in := &sv1.Intent{}
	switch verb {
	case "abort":
		in.Action = &sv1.Intent_AbortRollout{AbortRollout: &sv1.AbortRollout{Rollout: name, Reason: *reason}}
	case "undo":
		in.Action = &sv1.Intent_UndoRollout{UndoRollout: ctl}
	case "retry":
		in.Action = &sv1.Intent_RetryRollout{RetryRollout: ctl}
	case "pause":
		in.Action = &sv1.Intent_PauseRollout{PauseRollout: ctl}
	case "resume":
		in.Action = &sv1.Intent_ResumeRollout{ResumeRollout: ctl}
	case "approve":
		in.Action = &sv1.Intent_ApproveRollout{ApproveRollout: ctl}
	case "promote":
		in.Action = &sv1.Intent_PromoteRollout{PromoteRollout: &sv1.PromoteRollout{Rollout: name, Full: *full, Reason: *reason}}
	}
	err = sendIntent(ctx, c, bus.IntentKindRollout, in, "rollout "+name+": "+verb, stdout)
	if verb == "abort" && errors.Is(err, errRefused) && alreadyBack(ctx, c, name) {
		// An abort run again (after one no coordinator answered in an
		// outage, or by a second operator) finds what it asked for: the
		// rollout is on its way back. That is not a failure to page on.
		if c.output != "json" {
			fmt.Fprintf(stdout, "rollout %s: already rolling back or rolled back; nothing more to do\n", name)
		}
		return nil
	}
	return err
}

// alreadyBack reports whether the coordinators say rollout name is rolling
// back or rolled back.
func alreadyBack(ctx context.Context, c clientFlags, name string) bool {
	ans, err := queryRollouts(ctx, c, &sv1.RolloutsQuery{Rollout: name, Summary: true})
	if err != nil || len(ans.GetRollouts()) != 1 {
		return false
	}
	switch ans.GetRollouts()[0].GetRollout().GetPhase() {
	case sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK:
		return true
	}
	return false
}

// errRefused is returned when the coordinators refused an intent.
var errRefused = errors.New("refused")

// sendIntent sends an intent of a kind, waits for the coordinators' answer
// and prints it; what names the change in the printed line.
func sendIntent(ctx context.Context, c clientFlags, kind string, in *sv1.Intent, what string, stdout io.Writer) error {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	nc, err := c.connect(ctx)
	if err != nil {
		return err
	}
	defer nc.Close()
	in.Id = nuid.Next()
	in.Operator = c.operator
	in.CreatedAt = timestamppb.Now()
	signer, err := c.signer()
	if err != nil {
		return err
	}
	res, err := bus.SendSignedIntent(ctx, nc, kind, in, signer)
	if errors.Is(err, bus.ErrNoResult) {
		res, err = whyNoResult(parent, nc, in, err)
	}
	if err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, res)
	} else if res.GetAccepted() {
		fmt.Fprintf(stdout, "%s committed at index %d\n", what, res.GetIndex())
		if res.GetDuplicate() {
			fmt.Fprintln(stdout, "(this intent had been applied before; nothing changed)")
		}
	}
	if !res.GetAccepted() {
		return fmt.Errorf("%w by the coordinator (%s):\n%s", errRefused, res.GetCode(), indent(errors.New(res.GetError())))
	}
	if res.GetService() == "" || res.GetGeneration() == 0 || c.publishWait <= 0 {
		return nil
	}
	if err := awaitPublished(ctx, c.security.sec, nc, res.GetService(), res.GetGeneration(), c.publishWait); err != nil {
		return err
	}
	if c.output != "json" {
		fmt.Fprintf(stdout, "published: the bus carries generation %d of %s\n", res.GetGeneration(), res.GetService())
	}
	if !c.converge {
		return nil
	}
	return awaitConverged(ctx, c, nc, res, stdout)
}

// whyNoResultAsk bounds the question whyNoResult asks after --timeout ran
// out.
const whyNoResultAsk = 2 * time.Second

// whyNoResult asks the coordinators, once, about an intent that the stream
// took but no coordinator answered within --timeout: its result when one
// applied it meanwhile, else an error that says why none could (no leader,
// no coordinator on the bus) and what becomes of the intent. For a chaos
// intent that ends drills (an abort, the kill switch) it says what ends
// their faults meanwhile.
func whyNoResult(ctx context.Context, nc *nats.Conn, in *sv1.Intent, noResult error) (*sv1.IntentResult, error) {
	id := in.GetId()
	ctx, cancel := context.WithTimeout(ctx, whyNoResultAsk)
	defer cancel()
	var res sv1.IntentResult
	err := bus.Query(ctx, nc, bus.QueryIntent, &sv1.IntentQuery{Id: id}, &res)
	if err == nil {
		return &res, nil
	}
	why := "the leader has not applied it yet (" + err.Error() + ")"
	if errors.Is(err, bus.ErrNoCurrentAnswer) {
		why = "no coordinator could answer as the leader: " + strings.TrimPrefix(err.Error(), "query "+bus.QueryIntent+": ") +
			". Without a leader (fewer than a quorum of coordinators running, or they cannot reach each other: see `switchyard coordinator members` " +
			"on each, and their logs) nothing changes on the fleet"
	}
	meanwhile := ""
	if in.GetAbortDrill() != nil || in.GetStopAllDrills() != nil {
		meanwhile = ". Meanwhile each drill's faults stay until its end, which every agent keeps by itself without the coordinators " +
			"(at most " + chaos.MaxDuration.String() + " after its start); to end the faults on a node now, restart its agent " +
			"(systemctl restart switchyard-agent): a stopping agent reverts its faults, and once started again does not inject those drills again"
	}
	return nil, fmt.Errorf("%w: %s. The intent waits on the intent stream: the next leader applies it while it is less than %s old; "+
		"`switchyard audit log` shows it once one has%s", noResult, why, coordinator.SignedIntentMaxAge, meanwhile)
}

// awaitPublished polls the desired-state bucket until it carries generation
// (or a newer one) of the cluster's current lineage for service. A committed
// decision that never reaches the bus has changed no proxy; that is an error
// of its own, with what the bucket holds and the last error reading it. A
// generation number alone is not enough: a cluster rebuilt from empty data
// numbers its generations from small Raft indexes again, and the document
// of the cluster it replaced, still in the bucket, has a larger one while
// it fences every document of the new cluster out.
func awaitPublished(ctx context.Context, sec bus.Security, nc *nats.Conn, service string, generation uint64, wait time.Duration) error {
	js, err := sec.JetStream(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var have, checked bus.Fence
	var lastErr, confirmErr error
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
		f, err := bus.PublishedFence(rctx, js, service)
		rcancel()
		if err == nil {
			have, lastErr = f, nil
			f.Epoch = max(f.Epoch, 1)
			if f != checked && f.Generation > 0 {
				checked = f
				// The bucket was read before the coordinators answer, so
				// a document they wrote is not above what they answer.
				cur, err := currentFence(ctx, nc, service, generation)
				confirmErr = err
				switch {
				case err != nil:
					// No coordinator answers as current (an election, a
					// cluster that has not heard its fleet yet): ask again
					// at the next tick. The generation alone is no proof:
					// a rebuilt cluster's is below the document it
					// replaced, which is still in the bucket.
					checked = bus.Fence{}
				case f.Compare(cur) > 0:
					return fmt.Errorf("%w: committed generation %d of %s did not reach the bus: the bus carries epoch %d generation %d, "+
						"above anything this cluster published (its current document is epoch %d generation %d). "+
						"Another coordinator cluster's documents, such as those of a cluster this one was rebuilt to replace, fence this cluster's out, "+
						"and agents refuse them as stale. If this cluster replaces that one, raise its epoch (switchyard coordinator raise-epoch, "+
						"docs/security.md); the leader then publishes every document again and the fleet follows",
						bus.ErrNotPublished, generation, service, f.Epoch, f.Generation, cur.Epoch, cur.Generation)
				case f.Epoch == cur.Epoch && f.Generation >= generation:
					return nil
				}
			}
		} else if ctx.Err() == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			why := fmt.Sprintf("the bus still carries epoch %d generation %d", max(have.Epoch, 1), have.Generation)
			if lastErr != nil {
				why = "reading the bus failed: " + lastErr.Error()
			} else if confirmErr != nil {
				why += fmt.Sprintf(", and no coordinator answered to confirm it is this cluster's (%v)", confirmErr)
			}
			return fmt.Errorf("%w: committed generation %d of %s did not reach the bus within %s (--publish-timeout); %s. "+
				"Agents read their desired state from the bus, so the fleet may not follow; the leader keeps retrying, see its /healthz and logs",
				bus.ErrNotPublished, generation, service, wait, why)
		case <-t.C:
		}
	}
}

// currentFence asks the coordinators the fence of service's current
// desired state: the cluster's epoch and its latest generation. It asks
// for the counts of the nodes that reached generation, not for every
// node's view: the fence comes with either.
func currentFence(ctx context.Context, nc *nats.Conn, service string, generation uint64) (bus.Fence, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var ans sv1.FleetStatus
	if err := bus.Query(ctx, nc, bus.QueryFleetStatus, &sv1.FleetStatusQuery{Service: service, ReachedGeneration: generation}, &ans); err != nil {
		return bus.Fence{}, err
	}
	for _, sf := range ans.GetServices() {
		if sf.GetService() == service {
			return bus.Fence{Epoch: max(sf.GetEpoch(), 1), Generation: sf.GetGeneration()}, nil
		}
	}
	return bus.Fence{}, fmt.Errorf("the coordinators know no service %q", service)
}

// awaitConverged polls the service's fleet until every live node's proxy
// is seen doing the published generation (or a newer one) of the cluster's
// current epoch, or --timeout. A node of another lineage (diverged, or left
// on the epoch before a raise) holds a generation number that says nothing
// of this cluster's documents, and a node whose local guard overrode its
// generation serves the old backend: neither counts. It asks on nc, the
// connection the intent went out on: a poll every 200 ms is no reason to
// dial the bus again each time.
func awaitConverged(ctx context.Context, c clientFlags, nc *nats.Conn, res *sv1.IntentResult, stdout io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	last, answered := "no answer", false
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		var ans sv1.FleetStatus
		err := bus.Query(ctx, nc, bus.QueryFleetStatus, &sv1.FleetStatusQuery{Service: res.GetService(), ReachedGeneration: res.GetGeneration()}, &ans)
		if err == nil && len(ans.GetServices()) == 1 {
			sf := ans.GetServices()[0]
			want := bus.Fence{Epoch: max(sf.GetEpoch(), 1), Generation: res.GetGeneration()}
			at, live, held := reached(sf, want)
			answered = true
			if live > 0 && at == live {
				if c.output != "json" {
					fmt.Fprintf(stdout, "converged: %d/%d live nodes' proxies do generation %d or newer\n", at-len(held), live, res.GetGeneration())
					if len(held) > 0 {
						// They took the generation, so the rollout goes on
						// without them; waiting longer changes nothing.
						sort.Strings(held)
						fmt.Fprintf(stdout, "held: %s applied it on the old backend: a pre-traffic hook failed (rollout status says why)\n", strings.Join(held, ", "))
					}
				}
				return nil
			}
			last = fmt.Sprintf("%d/%d live nodes' proxies seen doing generation %d of epoch %d or newer", at, live, res.GetGeneration(), want.Epoch)
		} else if err != nil && (ctx.Err() == nil || !answered) {
			// A query cut short by --timeout itself says nothing new:
			// the error keeps the last answer, if there was one.
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fleet not converged within %s (--timeout): %s", c.timeout, last)
		case <-t.C:
		}
	}
}

// reached counts the live nodes of a service's fleet whose proxies are seen
// doing the document of fence want or a newer one, and names those of them
// a failed pre-traffic hook holds on the old backend. The coordinators
// count them when asked (reached_generation, echoed); a coordinator of an
// earlier release answers with every node instead, counted here by the
// same rule.
func reached(sf *sv1.ServiceFleet, want bus.Fence) (at, live int, held []string) {
	if sf.GetReachedGeneration() == want.Generation {
		return int(sf.GetReached()), int(sf.GetLive()), sf.GetReachedHeld()
	}
	for _, w := range sf.GetWaves() {
		for _, n := range w.GetNodes() {
			if n.GetStale() {
				continue
			}
			live++
			have := bus.Fence{Epoch: max(n.GetAppliedEpoch(), 1), Generation: n.GetAppliedGeneration()}
			if !n.GetDiverged() && have.Compare(want) >= 0 && coordinator.NodeDoes(n) {
				at++
				if coordinator.NodeHeld(n) {
					held = append(held, n.GetNode())
				}
			}
		}
	}
	return at, live, held
}

// query asks the coordinators one read query.
func query(ctx context.Context, c clientFlags, name string, req, out proto.Message) error {
	s := &session{c: c}
	defer s.close()
	return s.query(ctx, name, req, out)
}

// queryOn asks the coordinators on a connection already made.
func (c clientFlags) queryOn(ctx context.Context, nc *nats.Conn, name string, req, out proto.Message) error {
	if !c.stale {
		return bus.Query(ctx, nc, name, req, out)
	}
	by, err := bus.QueryStale(ctx, nc, name, req, out)
	if err == nil && by != "" && c.notice != nil {
		fmt.Fprintf(c.notice, "note: --stale: answered by coordinator %s from its own replica, without checking that it is current\n", by)
	}
	return err
}

func rolloutStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return rolloutRead(ctx, "status", args, stdout, stderr)
}

// rolloutRead is rollout status (the newest rollouts, or one NAME in detail) and
// rollout list (the newest rollouts, or one service's).
func rolloutRead(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("rollout "+verb, stderr)
	var c clientFlags
	c.register(fs)
	c.registerStale(fs, stderr)
	service := fs.String("service", "", "list only this service's rollouts")
	limit := fs.Uint("limit", defaultListLimit, "list at most the newest N rollouts (0: every one)")
	pos, err := c.parse(fs, args, stderr)
	if err != nil {
		return err
	}
	if verb == "list" && len(pos) > 0 {
		return usageErr(stderr, "switchyard rollout list: takes no NAME (use rollout status NAME)")
	}
	if len(pos) > 1 {
		return usageErr(stderr, "switchyard rollout status: want at most one rollout NAME")
	}
	if *limit > math.MaxUint32 {
		return usageErr(stderr, "switchyard rollout %s: --limit %d: want at most %d", verb, *limit, uint32(math.MaxUint32))
	}
	// Every rollout is one line, with its nodes counted; only one
	// rollout in detail lists them.
	q := &sv1.RolloutsQuery{Summary: true, Service: *service, Limit: uint32(*limit)}
	if len(pos) == 1 {
		if flagSet(fs, "service") || flagSet(fs, "limit") {
			return usageErr(stderr, "switchyard rollout status NAME: --service and --limit are for the list of rollouts, not for one")
		}
		q = &sv1.RolloutsQuery{Rollout: pos[0]}
	}
	ans, err := queryRollouts(ctx, c, q)
	if err != nil {
		return err
	}
	if c.output == "json" {
		printJSON(stdout, ans)
		return nil
	}
	if q.Rollout != "" && len(ans.GetRollouts()) == 1 {
		printRolloutDetail(stdout, ans.GetRollouts()[0])
		return nil
	}
	printRolloutTable(stdout, ans.GetRollouts())
	printListFooter(stdout, ans)
	return nil
}

// printListFooter says what a list of rollouts leaves out.
func printListFooter(w io.Writer, ans *sv1.RolloutsAnswer) {
	if n := ans.GetOmitted(); n > 0 {
		fmt.Fprintf(w, "%d older rollouts not listed (--limit 0 lists every one)\n", n)
	}
	if n := ans.GetForgotten(); n > 0 {
		fmt.Fprintf(w, "%d finished rollouts forgotten by the retention (--forget-finished-after), not listed; what they did is in the audit trail (switchyard audit log)\n", n)
	}
}

// defaultListLimit is how many of the newest rollouts rollout list shows
// unless told: the coordinators keep every rollout for 90 days by default
// (--forget-finished-after), and a busy cluster holds thousands.
const defaultListLimit = 100

// rolloutList is status without a NAME: the newest rollouts, one line each.
func rolloutList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return rolloutRead(ctx, "list", args, stdout, stderr)
}

// session keeps one connection for a verb that asks again and again
// (rollout watch), instead of dialling the bus, with its TLS handshake
// and authentication, for every refresh.
type session struct {
	c  clientFlags
	nc *nats.Conn
}

// query asks on the session's connection, dialling first when there is
// none or the one there is not connected (its server went away and it has
// not found another yet). A query that fails drops the connection, so the
// next one dials again: it may have been on a server that stopped
// answering, which the client's own pings would notice only minutes later.
func (s *session) query(ctx context.Context, name string, req, out proto.Message) error {
	ctx, cancel := context.WithTimeout(ctx, s.c.timeout)
	defer cancel()
	if s.nc != nil && !s.nc.IsConnected() {
		s.close()
	}
	if s.nc == nil {
		nc, err := s.c.connect(ctx)
		if err != nil {
			return err
		}
		s.nc = nc
	}
	err := s.c.queryOn(ctx, s.nc, name, req, out)
	if err != nil {
		s.close()
	}
	return err
}

func (s *session) close() {
	if s.nc != nil {
		s.nc.Close()
		s.nc = nil
	}
}

func queryRollouts(ctx context.Context, c clientFlags, q *sv1.RolloutsQuery) (*sv1.RolloutsAnswer, error) {
	var ans sv1.RolloutsAnswer
	if err := query(ctx, c, bus.QueryRollouts, q, &ans); err != nil {
		return nil, err
	}
	return &ans, nil
}

func printJSON(w io.Writer, m proto.Message) {
	b, _ := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	fmt.Fprintln(w, string(b))
}

func printRolloutTable(w io.Writer, rs []*sv1.RolloutView) {
	if len(rs) == 0 {
		fmt.Fprintln(w, "no rollouts")
		return
	}
	// A rollout that a later one of its service replaced has no node at
	// its generation by design: "0/3" would read as a fleet that never
	// followed it.
	newest := map[string]uint64{}
	for _, v := range rs {
		r := v.GetRollout()
		newest[r.GetSpec().GetService()] = max(newest[r.GetSpec().GetService()], r.GetGeneration())
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLLOUT\tSERVICE\tFROM\tTO\tPHASE\tGENERATION\tCONVERGED\tUPDATED")
	for _, v := range rs {
		r := v.GetRollout()
		conv := convergence(v)
		if state.Terminal(r.GetPhase()) && r.GetGeneration() < newest[r.GetSpec().GetService()] {
			conv = "superseded"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.GetId(), r.GetSpec().GetService(), r.GetSpec().GetFrom(),
			r.GetSpec().GetTo(), state.PhaseName(r.GetPhase()), r.GetGeneration(), conv, ago(r.GetUpdatedAt()))
	}
	tw.Flush()
}

// convergence is "converged/live": the coordinators count only live nodes
// as converged, so stale ones are left out of both.
func convergence(v *sv1.RolloutView) string {
	return fmt.Sprintf("%d/%d", v.GetConverged(), liveNodes(v))
}

// liveNodes counts a rollout's nodes that are not stale: the answer's
// count, or, from a coordinator that sends none, its node list.
func liveNodes(v *sv1.RolloutView) int {
	if v.GetLive() > 0 || len(v.GetNodes()) == 0 {
		return int(v.GetLive())
	}
	live := 0
	for _, n := range v.GetNodes() {
		if !n.GetStale() {
			live++
		}
	}
	return live
}

func strategyName(sp *sv1.RolloutSpec) string {
	if sp.GetStrategy().GetCanary() != nil {
		return "canary"
	}
	return "blue-green"
}

func printRolloutDetail(w io.Writer, v *sv1.RolloutView) {
	r := v.GetRollout()
	sp := r.GetSpec()
	fmt.Fprintf(w, "Rollout:     %s\n", r.GetId())
	fmt.Fprintf(w, "Service:     %s (%s -> %s, %s)\n", sp.GetService(), sp.GetFrom(), sp.GetTo(), strategyName(sp))
	fmt.Fprintf(w, "Phase:       %s\n", phaseOf(r))
	// The answer's position, as the API and the dashboard show it: it
	// knows a rollout held before its first wave, which the rollout's
	// wave and step alone do not say.
	pos := v.GetPosition()
	if pos == "" {
		pos = position(r)
	}
	fmt.Fprintf(w, "Position:    %s\n", pos)
	if v.GetWaiting() != "" {
		fmt.Fprintf(w, "Waiting for: %s\n", v.GetWaiting())
	}
	if r.GetReason() != "" {
		fmt.Fprintf(w, "Reason:      %s\n", r.GetReason())
	}
	fmt.Fprintf(w, "Generation:  %d\n", r.GetGeneration())
	fmt.Fprintf(w, "Converged:   %s live nodes\n", convergence(v))
	if held := v.GetHeld(); len(held) > 0 {
		fmt.Fprintf(w, "Held:        %s (applied generation %d on %s: a pre-traffic hook failed; see MESSAGE; once fixed, switchyard rollout retry %s runs it again)\n",
			strings.Join(held, ", "), r.GetGeneration(), sp.GetFrom(), r.GetId())
	}
	fmt.Fprintf(w, "Operator:    %s\n\n", r.GetOperator())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAPPLIED (EPOCH/GEN)\tWEIGHTS\tOBSERVED\tDRIVER\tSEEN\tMESSAGE")
	for _, n := range v.GetNodes() {
		seen := seenAgo(n)
		msg := n.GetMessage()
		if d := n.GetDrift(); d != "" {
			msg = strings.TrimPrefix(msg+"; drift: "+d, "; ")
		}
		switch {
		case n.GetDiverged():
			msg = "DIVERGED: holds a newer document than this cluster published (epoch " + strconv.FormatUint(n.GetAppliedEpoch(), 10) +
				"); not counted as converged. " + msg
		case n.GetDocumentExpired():
			msg = "EXPIRED document, weights kept. " + msg
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\n", n.GetNode(), n.GetAppliedEpoch(), n.GetAppliedGeneration(), weights(n.GetWeights()),
			observedWeights(n), strings.TrimPrefix(strings.ToLower(n.GetDriver().String()), "driver_health_"), seen, strings.TrimSpace(msg))
	}
	tw.Flush()
	if v.GetAnalysis() != "" {
		fmt.Fprintf(w, "\nAnalysis: %s\n", v.GetAnalysis())
	}
	printHookCalls(w, v)
	if len(v.GetWindows()) > 0 {
		fmt.Fprintln(w, "\nAnalysis (latest windows):")
		printWindows(w, v.GetWindows())
	}
	if ev := r.GetEvidence(); ev != nil {
		printEvidence(w, ev)
	}
	fmt.Fprintln(w, "\nHistory:")
	printHistory(w, r)
}

// observedWeights shows what a node's proxy was read back doing: "-" when
// it could not be read, the weights otherwise, marked when they are not
// what the agent applied.
func observedWeights(n *sv1.NodeView) string {
	if len(n.GetObservedWeights()) == 0 {
		return "-"
	}
	s := weights(n.GetObservedWeights())
	if !n.GetObservedMatches() {
		s += " (differs)"
	}
	return s
}

func weights(w map[string]uint32) string {
	keys := make([]string, 0, len(w))
	for k := range w {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, w[k])
	}
	return strings.Join(parts, " ")
}

func ago(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return time.Since(ts.AsTime()).Round(time.Second).String() + " ago"
}

func indent(err error) error {
	return errors.New("  " + strings.ReplaceAll(err.Error(), "\n", "\n  "))
}
