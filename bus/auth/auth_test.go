package auth_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/internal/certs"
)

// securedServer runs the embedded server in operator mode with the setup's
// full resolver and TLS, the way `switchyard dev` does.
type securedServer struct {
	ns    *server.Server
	setup *auth.Setup
	ca    *certs.CA
	dir   string
}

func startSecured(t *testing.T) *securedServer {
	t.Helper()
	dir := t.TempDir()
	setup, err := auth.Init(filepath.Join(dir, "auth"), "test")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(filepath.Join(dir, "tls"), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Issue("nats", []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "nats")
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{
		StoreDir:   store,
		AuthConfig: setup.ServerConfig(filepath.Join(store, "jwt")),
		TLS:        srvCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return &securedServer{ns: ns, setup: setup, ca: ca, dir: dir}
}

// issue writes creds for role/name and returns the client security.
func (s *securedServer) issue(t *testing.T, role bus.Role, name string) bus.Security {
	t.Helper()
	creds, err := s.setup.Issue(role, name)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.dir, name+".creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return bus.Security{Creds: path, CA: s.ca.CAPath()}
}

// client connects with sec and records the asynchronous errors the server
// sends (permission violations).
type client struct {
	nc   *nats.Conn
	mu   sync.Mutex
	errs []error
}

func (c *client) violations() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, err := range c.errs {
		if errors.Is(err, nats.ErrPermissionViolation) {
			out = append(out, err.Error())
		}
	}
	return out
}

func (s *securedServer) connect(t *testing.T, sec bus.Security) *client {
	t.Helper()
	opts, err := sec.Options("--nats-")
	if err != nil {
		t.Fatal(err)
	}
	c := &client{}
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		c.mu.Lock()
		c.errs = append(c.errs, err)
		c.mu.Unlock()
	}), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	nc, err := nats.Connect(s.ns.ClientURL(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	return c
}

func waitFor(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAuth_AgentHasLeastPrivilege(t *testing.T) {
	s := startSecured(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "coord-1"))
	cjs, err := jetstream.New(coord.nc)
	if err != nil {
		t.Fatal(err)
	}
	desired, err := bus.EnsureDesiredBucket(ctx, cjs, 1)
	if err != nil {
		t.Fatalf("coordinator creates the desired bucket: %v", err)
	}
	drills, err := bus.EnsureDrillsBucket(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	intents, err := bus.EnsureIntentStream(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := desired.Put(ctx, "web", []byte("doc-1")); err != nil {
		t.Fatal(err)
	}
	if _, err := drills.Put(ctx, "d1", []byte("drill-1")); err != nil {
		t.Fatal(err)
	}
	// The coordinator hears telemetry and status of every node.
	heard, err := coord.nc.SubscribeSync(bus.TelemetryAll())
	if err != nil {
		t.Fatal(err)
	}
	statusHeard, err := coord.nc.SubscribeSync(bus.StatusAll())
	if err != nil {
		t.Fatal(err)
	}
	if err := coord.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	agent := s.connect(t, s.issue(t, bus.RoleAgent, "edge-1"))
	ajs, err := jetstream.New(agent.nc)
	if err != nil {
		t.Fatal(err)
	}
	// What an agent does: open both buckets, get its document, read the
	// drills, follow the key subjects, publish its own telemetry and
	// status.
	akv, err := bus.DesiredBucketHandle(ctx, ajs)
	if err != nil {
		t.Fatalf("agent opens the desired bucket: %v", err)
	}
	if e, err := akv.Get(ctx, "web"); err != nil || string(e.Value()) != "doc-1" {
		t.Fatalf("agent gets its document: %v", err)
	}
	adr, err := ajs.KeyValue(ctx, bus.DrillsBucket)
	if err != nil {
		t.Fatalf("agent opens the drills bucket: %v", err)
	}
	// Its resync reads them all without a consumer.
	if docs, err := bus.ReadAll(ctx, ajs, adr); err != nil || len(docs) != 1 || string(docs["d1"]) != "drill-1" {
		t.Fatalf("agent reads every drill in one batch: %v %v", docs, err)
	}
	push, err := agent.nc.SubscribeSync(bus.DesiredKeySubject("web"))
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := desired.Put(ctx, "web", []byte("doc-2")); err != nil {
		t.Fatal(err)
	}
	if m, err := push.NextMsg(5 * time.Second); err != nil || string(m.Data) != "doc-2" {
		t.Fatalf("agent is pushed the new document: %v", err)
	}
	// Behind a leaf server it follows the copies the coordinator publishes
	// on the push subjects instead.
	for _, subj := range []string{bus.DesiredPushSubject("web"), bus.DrillPushSubject("d1")} {
		copies, err := agent.nc.SubscribeSync(subj)
		if err != nil {
			t.Fatal(err)
		}
		if err := agent.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := coord.nc.Publish(subj, []byte("copy")); err != nil {
			t.Fatal(err)
		}
		if m, err := copies.NextMsg(5 * time.Second); err != nil || string(m.Data) != "copy" {
			t.Fatalf("agent is pushed the copy on %s: %v", subj, err)
		}
	}
	if err := agent.nc.Publish(bus.TelemetrySubject("web", "edge-1"), []byte("own")); err != nil {
		t.Fatal(err)
	}
	if err := agent.nc.Publish(bus.StatusSubject("edge-1"), []byte("own")); err != nil {
		t.Fatal(err)
	}
	if m, err := heard.NextMsg(5 * time.Second); err != nil || string(m.Data) != "own" {
		t.Fatalf("own telemetry reaches the coordinator: %v", err)
	}
	if m, err := statusHeard.NextMsg(5 * time.Second); err != nil || string(m.Data) != "own" {
		t.Fatalf("own status reaches the coordinator: %v", err)
	}
	if v := agent.violations(); len(v) != 0 {
		t.Fatalf("the agent's own work was refused: %v", v)
	}

	// What it must not do.
	forbidden := []string{
		bus.TelemetrySubject("web", "edge-2"),
		bus.StatusSubject("edge-2"),
		bus.IntentSubject(bus.IntentKindRollout),
		bus.IntentSubject(bus.IntentKindChaos),
		bus.DesiredKeySubject("web"),
		bus.DrillKeySubject("d1"),
		bus.DesiredPushSubject("web"),
		bus.DrillPushSubject("d1"),
		bus.QuerySubject(bus.QueryFleet),
	}
	for _, subj := range forbidden {
		if err := agent.nc.Publish(subj, []byte("forged")); err != nil {
			t.Fatal(err)
		}
	}
	// A KV write and an intent through JetStream fail too.
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := akv.Put(wctx, "web", []byte("forged")); err == nil {
		t.Fatal("agent wrote to the desired bucket")
	}
	if _, err := ajs.Publish(wctx, bus.IntentSubject(bus.IntentKindRollout), []byte("forged")); err == nil {
		t.Fatal("agent published an intent")
	}
	wcancel()
	refusesDesiredConsumers(t, ctx, "agent", ajs, akv)
	lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := adr.ListKeys(lctx); err == nil {
		t.Fatal("agent listed the drills bucket through a consumer")
	}
	lcancel()
	// Reading another inbox (another identity's answers) is refused.
	if _, err := agent.nc.SubscribeSync(bus.InboxPrefix("coord-1") + ".>"); err != nil {
		t.Fatal(err)
	}
	if err := agent.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a permission violation for every forbidden subject", 5*time.Second, func() bool {
		got := strings.Join(agent.violations(), "\n")
		for _, subj := range append(forbidden, bus.InboxPrefix("coord-1")+".>", "$JS.API.CONSUMER.CREATE.KV_"+bus.DesiredBucket+".squatter") {
			if !strings.Contains(got, subj) {
				return false
			}
		}
		return true
	})
	// Nothing stored: the document, the drill and the intent stream are as
	// the coordinator left them, and no forged telemetry arrived.
	if e, err := desired.Get(ctx, "web"); err != nil || string(e.Value()) != "doc-2" {
		t.Fatalf("desired bucket after the forgeries: %v %q", err, e.Value())
	}
	if e, err := drills.Get(ctx, "d1"); err != nil || string(e.Value()) != "drill-1" {
		t.Fatalf("drills bucket after the forgeries: %v", err)
	}
	info, err := intents.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("intent stream holds %d messages, want 0", info.State.Msgs)
	}
	if m, err := heard.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("forged telemetry reached the coordinator on %s", m.Subject)
	}
}

// refusesDesiredConsumers checks that who cannot add a consumer to the
// desired-state bucket's stream: not the ordered one a watch takes, not a
// durable one.
func refusesDesiredConsumers(t *testing.T, ctx context.Context, who string, js jetstream.JetStream, kv jetstream.KeyValue) {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if w, err := kv.Watch(cctx, "web"); err == nil {
		_ = w.Stop()
		t.Fatalf("%s watched the desired-state bucket through a consumer", who)
	}
	cctx, cancel = context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := js.CreateOrUpdateConsumer(cctx, "KV_"+bus.DesiredBucket, jetstream.ConsumerConfig{Durable: "squatter"}); err == nil {
		t.Fatalf("%s created a durable consumer on the desired-state bucket", who)
	}
}

func TestAuth_OperatorAndViewerRoles(t *testing.T) {
	s := startSecured(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "coord-1"))
	cjs, _ := jetstream.New(coord.nc)
	intents, err := bus.EnsureIntentStream(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	// A query answered by the coordinator reaches both roles.
	if _, err := coord.nc.QueueSubscribe(bus.QuerySubject(bus.QueryFleet), bus.QueryQueue, func(m *nats.Msg) {
		_ = m.Respond([]byte("fleet"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := coord.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	op := s.connect(t, s.issue(t, bus.RoleOperator, "ci"))
	viewer := s.connect(t, s.issue(t, bus.RoleViewer, "dashboard"))
	for _, c := range []*client{op, viewer} {
		m, err := c.nc.RequestWithContext(ctx, bus.QuerySubject(bus.QueryFleet), nil)
		if err != nil || string(m.Data) != "fleet" {
			t.Fatalf("query: %v", err)
		}
	}
	ojs, _ := jetstream.New(op.nc)
	if _, err := ojs.Publish(ctx, bus.IntentSubject(bus.IntentKindRollout), []byte("intent")); err != nil {
		t.Fatalf("operator publishes an intent: %v", err)
	}
	// The operator reads the desired-state bucket (a command says whether
	// its change reached the bus) and cannot write it.
	desired, err := bus.EnsureDesiredBucket(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := desired.Put(ctx, "web", []byte("document")); err != nil {
		t.Fatal(err)
	}
	okv, err := ojs.KeyValue(ctx, bus.DesiredBucket)
	if err != nil {
		t.Fatalf("operator opens the desired-state bucket: %v", err)
	}
	if e, err := okv.Get(ctx, "web"); err != nil || string(e.Value()) != "document" {
		t.Fatalf("operator reads the desired-state bucket: %v", err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := okv.Put(pctx, "web", []byte("forged")); err == nil {
		t.Fatal("operator wrote the desired-state bucket")
	}
	pcancel()
	refusesDesiredConsumers(t, ctx, "operator", ojs, okv)
	// Reading every document takes no consumer either.
	if docs, err := bus.LastValues(ctx, ojs, bus.DesiredBucket); err != nil || len(docs) != 1 || string(docs["web"]) != "document" {
		t.Fatalf("operator reads the desired-state bucket in one batch: %v %v", docs, err)
	}
	if e, err := desired.Get(ctx, "web"); err != nil || string(e.Value()) != "document" {
		t.Fatalf("desired-state bucket after the operator's put: %v %q", err, e.Value())
	}
	vjs, _ := jetstream.New(viewer.nc)
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := vjs.Publish(wctx, bus.IntentSubject(bus.IntentKindRollout), []byte("intent")); err == nil {
		t.Fatal("viewer published an intent")
	}
	wcancel()
	info, err := intents.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("intent stream holds %d messages, want the operator's 1", info.State.Msgs)
	}
	waitFor(t, "the viewer's violation", 5*time.Second, func() bool { return len(viewer.violations()) > 0 })

	// Both read the audit stream record by record, and neither may add a
	// consumer to it.
	if _, err := bus.EnsureAuditStream(ctx, cjs, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := cjs.Publish(ctx, bus.AuditSubject(), []byte("record-1")); err != nil {
		t.Fatal(err)
	}
	for name, js := range map[string]jetstream.JetStream{"operator": ojs, "viewer": vjs} {
		st, err := js.Stream(ctx, bus.AuditStream)
		if err != nil {
			t.Fatalf("%s opens the audit stream: %v", name, err)
		}
		if m, err := st.GetMsg(ctx, 1); err != nil || string(m.Data) != "record-1" {
			t.Fatalf("%s reads audit record 1: %v", name, err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		if _, err := st.OrderedConsumer(cctx, jetstream.OrderedConsumerConfig{}); err == nil {
			t.Fatalf("%s added a consumer to the audit stream", name)
		}
		ccancel()
	}
	for _, c := range []*client{op, viewer} {
		waitFor(t, "a permission violation for the audit stream's consumer", 5*time.Second, func() bool {
			return strings.Contains(strings.Join(c.violations(), "\n"), "$JS.API.CONSUMER.CREATE."+bus.AuditStream)
		})
	}
}

func TestAuth_UnauthenticatedForeignAndPlainClientsAreRefused(t *testing.T) {
	s := startSecured(t)
	url := s.ns.ClientURL()
	if !strings.HasPrefix(url, "tls://") {
		t.Fatalf("server URL %s, want tls://", url)
	}
	tlsOnly, err := bus.Security{CA: s.ca.CAPath()}.Options("--nats-")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, tlsOnly...); err == nil {
		nc.Close()
		t.Fatal("a client without credentials connected")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("no credentials: %v, want an authorization error", err)
	}
	// Credentials from another operator.
	other, err := auth.Init(filepath.Join(s.dir, "other"), "other")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := other.Issue(bus.RoleAgent, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(s.dir, "foreign.creds")
	if err := os.WriteFile(foreign, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	fopts, err := bus.Security{Creds: foreign, CA: s.ca.CAPath()}.Options("--nats-")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, fopts...); err == nil {
		nc.Close()
		t.Fatal("credentials of another operator were accepted")
	}
	// Good credentials without TLS.
	good := s.issue(t, bus.RoleAgent, "edge-2")
	plain, err := bus.Security{Creds: good.Creds}.Options("--nats-")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(strings.Replace(url, "tls://", "nats://", 1), plain...); err == nil {
		nc.Close()
		t.Fatal("a client without TLS connected")
	}
	// A server certificate from a CA the client does not trust.
	otherCA, err := certs.NewCA(filepath.Join(s.dir, "other-ca"), "other CA")
	if err != nil {
		t.Fatal(err)
	}
	wrongCA, err := bus.Security{Creds: good.Creds, CA: otherCA.CAPath()}.Options("--nats-")
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(url, wrongCA...); err == nil {
		nc.Close()
		t.Fatal("a client trusting another CA accepted the server")
	}
	// The same credentials with TLS connect.
	s.connect(t, good)
}

func TestAuth_RevokedNodeIsCutOff(t *testing.T) {
	s := startSecured(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	edge := s.connect(t, s.issue(t, bus.RoleAgent, "edge-1"))
	keep := s.connect(t, s.issue(t, bus.RoleAgent, "edge-2"))

	sys, err := nats.Connect(s.ns.ClientURL(), mustOptions(t, bus.Security{
		Creds: filepath.Join(s.setup.Dir(), auth.SystemCredsFile), CA: s.ca.CAPath(),
	})...)
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	token, err := s.setup.Revoke("edge-1", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.Push(ctx, sys, token); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the revoked node to be disconnected", 10*time.Second, func() bool {
		return !edge.nc.IsConnected()
	})
	// It stays out: reconnects are refused while the other node stays on.
	time.Sleep(300 * time.Millisecond) // several reconnect attempts at 50 ms
	if edge.nc.IsConnected() {
		t.Fatal("the revoked node reconnected")
	}
	if !keep.nc.IsConnected() {
		t.Fatal("revoking edge-1 disconnected edge-2")
	}
	if _, err := nats.Connect(s.ns.ClientURL(), mustOptions(t, bus.Security{Creds: filepath.Join(s.dir, "edge-1.creds"), CA: s.ca.CAPath()})...); err == nil {
		t.Fatal("a new connection with revoked creds was accepted")
	}
	// Revoking a name never issued says so.
	if _, err := s.setup.Revoke("nobody", time.Now()); !errors.Is(err, auth.ErrUnknownName) {
		t.Fatalf("revoke unknown: %v", err)
	}
	// A reloaded setup keeps the revocation (and a server restarted from
	// its snippet would too).
	again, err := auth.Load(s.setup.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if again.AccountJWT != token {
		t.Fatal("the revocation was not saved")
	}
}

func mustOptions(t *testing.T, sec bus.Security) []nats.Option {
	t.Helper()
	o, err := sec.Options("--nats-")
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestAuth_InitRefusesAnExistingSetupAndBadInput(t *testing.T) {
	dir := t.TempDir()
	s, err := auth.Init(dir, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.Init(dir, "x"); !errors.Is(err, auth.ErrExists) {
		t.Fatalf("second init: %v", err)
	}
	if _, err := auth.Load(t.TempDir()); !errors.Is(err, auth.ErrNoSetup) {
		t.Fatalf("load empty: %v", err)
	}
	if _, err := s.Issue(bus.RoleAgent, "bad.name"); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := s.Issue("admin", "x"); err == nil || !strings.Contains(err.Error(), "--role") {
		t.Fatalf("bad role: %v", err)
	}
	if _, err := (bus.Security{Creds: filepath.Join(dir, "missing.creds")}).Options("--nats-"); err == nil || !strings.Contains(err.Error(), "--nats-creds") {
		t.Fatalf("missing creds: %v", err)
	}
	if _, err := (bus.Security{Creds: filepath.Join(dir, "account.jwt")}).Options("natsClient."); err == nil || !strings.Contains(err.Error(), "natsClient.creds") {
		t.Fatalf("not creds: %v", err)
	}
	if _, err := (bus.Security{CA: filepath.Join(dir, "operator.jwt")}).Options("--nats-"); err == nil || !strings.Contains(err.Error(), "--nats-ca") {
		t.Fatalf("not a CA: %v", err)
	}
}

// TestAuth_NameHeldByAnotherRoleIsNotIssued: permissions let an identity
// subscribe to _INBOX.<its name>.> only, so two live identities of one
// name share their inboxes. An agent issued under a coordinator's name
// would read the coordinator's replies (its JetStream answers, the intents
// it fetches). Issuing a name another role holds is refused; issuing it
// again in the same role (a new key for the same node), or once the other
// is revoked, is not.
func TestAuth_NameHeldByAnotherRoleIsNotIssued(t *testing.T) {
	s := startSecured(t)
	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "c1"))

	creds, err := s.setup.Issue(bus.RoleAgent, "c1")
	if err == nil {
		// Show what the agent can do with them.
		path := filepath.Join(s.dir, "agent-c1.creds")
		if err := os.WriteFile(path, creds, 0o600); err != nil {
			t.Fatal(err)
		}
		agent := s.connect(t, bus.Security{Creds: path, CA: s.ca.CAPath()})
		sub, err := agent.nc.SubscribeSync(bus.InboxPrefix("c1") + ".>")
		if err != nil {
			t.Fatal(err)
		}
		if err := agent.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := coord.nc.Request("$JS.API.INFO", nil, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if m, err := sub.NextMsg(5 * time.Second); err == nil {
			t.Fatalf("an agent was issued the coordinator's name and read its reply on %s", m.Subject)
		}
		t.Fatal("an agent was issued the name a coordinator holds")
	}
	if !errors.Is(err, auth.ErrNameTaken) {
		t.Fatalf("agent named like a coordinator: %v, want %v", err, auth.ErrNameTaken)
	}
	if _, err := s.setup.IssueLeaf("c1"); !errors.Is(err, auth.ErrNameTaken) {
		t.Fatalf("leaf named like a coordinator: %v, want %v", err, auth.ErrNameTaken)
	}
	if _, err := s.setup.Issue(bus.RoleCoordinator, "c1"); err != nil {
		t.Fatalf("a second key for the coordinator's name: %v", err)
	}
	if _, err := s.setup.Revoke("c1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.setup.Issue(bus.RoleAgent, "c1"); err != nil {
		t.Fatalf("the name of a revoked coordinator for an agent: %v", err)
	}
}

// TestAuth_AgentCannotMakeTheServersPublishForIt: a push consumer's
// deliver subject is in the request's body, which no subject permission
// sees, and JetStream delivers on it whatever the creator may publish. An
// agent allowed to create consumers on the drills bucket's stream could
// make the servers publish every drill on another node's status or
// telemetry, on the desired-state key subjects every agent follows, or
// into the intent stream. Agents read the bucket with batched direct gets
// only, past MaxBatchKeys keys too; creating a consumer is refused.
func TestAuth_AgentCannotMakeTheServersPublishForIt(t *testing.T) {
	s := startSecured(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "coord-1"))
	cjs, err := jetstream.New(coord.nc)
	if err != nil {
		t.Fatal(err)
	}
	drills, err := bus.EnsureDrillsBucket(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range bus.MaxBatchKeys + 1 {
		if _, err := drills.PutString(ctx, fmt.Sprintf("d%d", i), "drill"); err != nil {
			t.Fatal(err)
		}
	}
	heard, err := coord.nc.SubscribeSync(bus.StatusSubject("edge-2"))
	if err != nil {
		t.Fatal(err)
	}
	if err := coord.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	agent := s.connect(t, s.issue(t, bus.RoleAgent, "edge-1"))
	ajs, err := jetstream.New(agent.nc)
	if err != nil {
		t.Fatal(err)
	}
	akv, err := ajs.KeyValue(ctx, bus.DrillsBucket)
	if err != nil {
		t.Fatal(err)
	}
	// What an agent's resync does with more drills than one batch holds.
	if all, err := bus.ReadAll(ctx, ajs, akv); err != nil || len(all) != bus.MaxBatchKeys+1 {
		t.Fatalf("agent reads %d drills: %d, %v", bus.MaxBatchKeys+1, len(all), err)
	}

	stream := "KV_" + bus.DrillsBucket
	req := fmt.Sprintf(`{"stream_name":%q,"config":{"name":"relay","deliver_subject":%q,"deliver_policy":"all","ack_policy":"none"},"action":"create"}`,
		stream, bus.StatusSubject("edge-2"))
	if m, err := agent.nc.Request("$JS.API.CONSUMER.CREATE."+stream+".relay", []byte(req), 2*time.Second); err == nil {
		t.Logf("consumer create answered: %s", m.Data)
	}
	if m, err := heard.NextMsg(2 * time.Second); err == nil {
		t.Fatalf("the servers published drill %q on %s for an agent", m.Data, m.Subject)
	}
}

// rewriteAccount edits the account of the auth directory dir and signs it
// again with its operator key, as an earlier release would have made it.
func rewriteAccount(t *testing.T, dir string, edit func(*jwt.AccountClaims)) {
	t.Helper()
	seed, err := os.ReadFile(filepath.Join(dir, "operator.nk"))
	if err != nil {
		t.Fatal(err)
	}
	operator, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "account.jwt"))
	if err != nil {
		t.Fatal(err)
	}
	ac, err := jwt.DecodeAccountClaims(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	edit(ac)
	token, err := ac.Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "account.jwt"), []byte(token), 0o644); err != nil {
		t.Fatal(err)
	}
}

// An auth directory made by an earlier release keeps that release's role
// templates in its account: one whose agent template still allowed
// consumers on the drills bucket's stream. auth push (Refresh, then Push)
// re-signs the account with this release's templates, keeping every
// signing key, so the agent issued before, still connected, is refused the
// consumer from then on, and a second push finds nothing to change.
func TestAuth_PushBringsAnOldAccountToThisReleasesTemplates(t *testing.T) {
	dir := t.TempDir()
	authDir := filepath.Join(dir, "auth")
	if _, err := auth.Init(authDir, "test"); err != nil {
		t.Fatal(err)
	}
	// The earlier release's agent template.
	old := "$JS.API.CONSUMER.CREATE.KV_" + bus.DrillsBucket + ".>"
	rewriteAccount(t, authDir, func(ac *jwt.AccountClaims) {
		for key := range ac.SigningKeys {
			if sc, _ := ac.SigningKeys.GetScope(key); sc != nil && sc.(*jwt.UserScope).Role == string(bus.RoleAgent) {
				sc.(*jwt.UserScope).Template.Pub.Allow.Add(old)
			}
		}
	})
	setup, err := auth.Load(authDir)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := certs.NewCA(filepath.Join(dir, "tls"), "test CA")
	if err != nil {
		t.Fatal(err)
	}
	srvCert, err := ca.Issue("nats", []string{"127.0.0.1", "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(dir, "nats")
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: store, AuthConfig: setup.ServerConfig(filepath.Join(store, "jwt")), TLS: srvCert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	s := &securedServer{ns: ns, setup: setup, ca: ca, dir: dir}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "coord-1"))
	cjs, _ := jetstream.New(coord.nc)
	if _, err := bus.EnsureDrillsBucket(ctx, cjs, 1); err != nil {
		t.Fatal(err)
	}
	agentSec := s.issue(t, bus.RoleAgent, "edge-1")
	stream := "KV_" + bus.DrillsBucket
	// One connection throughout: the servers apply the new template to
	// the identities already connected.
	agent := s.connect(t, agentSec)
	createConsumer := func(name string) error {
		req := fmt.Sprintf(`{"stream_name":%q,"config":{"name":%q,"ack_policy":"none"},"action":"create"}`, stream, name)
		m, err := agent.nc.Request("$JS.API.CONSUMER.CREATE."+stream+"."+name, []byte(req), 2*time.Second)
		if err != nil {
			return err
		}
		if strings.Contains(string(m.Data), `"error"`) {
			return fmt.Errorf("%s", m.Data)
		}
		return nil
	}
	if err := createConsumer("before"); err != nil {
		t.Fatalf("the earlier release's template does not allow the consumer, so this test proves nothing: %v", err)
	}

	pushed, changed, err := setup.Refresh()
	if err != nil || !changed {
		t.Fatalf("refresh of an old account: changed %v, %v", changed, err)
	}
	sys := s.connect(t, bus.Security{Creds: filepath.Join(authDir, auth.SystemCredsFile), CA: ca.CAPath()})
	if err := auth.Push(ctx, sys.nc, pushed); err != nil {
		t.Fatal(err)
	}
	if err := createConsumer("after"); err == nil {
		t.Fatal("after the push the agent issued before may still create consumers")
	}
	if again, err := auth.Load(authDir); err != nil {
		t.Fatal(err)
	} else if _, changed, err := again.Refresh(); err != nil || changed {
		t.Fatalf("a second refresh: changed %v, %v; want nothing to change", changed, err)
	}
}

// A role this release has and an older auth directory lacks (no signing
// key, no scope in the account) is added by Refresh, and identities of it
// can then be issued.
func TestAuth_RefreshAddsARoleTheDirectoryLacks(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	if _, err := auth.Init(dir, "test"); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "signing", string(bus.RoleViewer)+".nk")
	seed, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	viewer, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		t.Fatal(err)
	}
	viewerKey, _ := viewer.PublicKey()
	rewriteAccount(t, dir, func(ac *jwt.AccountClaims) { delete(ac.SigningKeys, viewerKey) })
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	setup, err := auth.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	pushed, changed, err := setup.Refresh()
	if err != nil || !changed {
		t.Fatalf("refresh of a directory without the viewer role: changed %v, %v", changed, err)
	}
	ac, err := jwt.DecodeAccountClaims(pushed)
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]bool{}
	for key := range ac.SigningKeys {
		if sc, _ := ac.SigningKeys.GetScope(key); sc != nil {
			roles[sc.(*jwt.UserScope).Role] = true
		}
	}
	if !roles[string(bus.RoleViewer)] {
		t.Fatalf("the refreshed account has scopes for %v, no viewer", roles)
	}
	if _, err := setup.Issue(bus.RoleViewer, "val"); err != nil {
		t.Fatalf("issue a viewer after the refresh: %v", err)
	}
}

// TestAuth_OnlyCoordinatorsSpeakToTheFleet: the leader's beacon tells a
// node whether the coordinators can see and steer it, and the status ask
// makes every agent publish its status; a node's, an operator's or a
// viewer's credentials publishing either are refused, and no agent hears
// them.
func TestAuth_OnlyCoordinatorsSpeakToTheFleet(t *testing.T) {
	s := startSecured(t)
	agent := s.connect(t, s.issue(t, bus.RoleAgent, "edge-1"))
	heard, err := agent.nc.SubscribeSync(bus.FleetAll())
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "coord-1"))
	for name, c := range map[string]*client{
		"agent":    s.connect(t, s.issue(t, bus.RoleAgent, "edge-2")),
		"operator": s.connect(t, s.issue(t, bus.RoleOperator, "ci")),
		"viewer":   s.connect(t, s.issue(t, bus.RoleViewer, "dashboard")),
	} {
		for _, subj := range []string{bus.BeaconSubject, bus.StatusAskSubject} {
			if err := c.nc.Publish(subj, []byte("forged by "+name)); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.nc.Flush(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the "+name+"'s violations", 5*time.Second, func() bool {
			got := strings.Join(c.violations(), "\n")
			return strings.Contains(got, bus.BeaconSubject) && strings.Contains(got, bus.StatusAskSubject)
		})
	}
	// The coordinator's word arrives, and only it.
	if err := coord.nc.Publish(bus.BeaconSubject, []byte("leader")); err != nil {
		t.Fatal(err)
	}
	if m, err := heard.NextMsg(5 * time.Second); err != nil || string(m.Data) != "leader" {
		t.Fatalf("the agent heard %v, %v; want the leader's beacon first", m, err)
	}
	if m, err := heard.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("the agent heard %q on %s", m.Data, m.Subject)
	}
}
