package auth_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

func TestAuth_LeafIdentityIsListedRevocableAndValidated(t *testing.T) {
	setup, err := auth.Init(filepath.Join(t.TempDir(), "auth"), "test")
	if err != nil {
		t.Fatal(err)
	}
	creds, err := setup.IssueLeaf("pop-a")
	if err != nil {
		t.Fatal(err)
	}
	token, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		t.Fatal(err)
	}
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		t.Fatal(err)
	}
	// Signed by the account's leaf signing key, whose template holds it.
	ac, err := jwt.DecodeAccountClaims(setup.AccountJWT)
	if err != nil {
		t.Fatal(err)
	}
	scope, ok := ac.SigningKeys.GetScope(uc.Issuer)
	if uc.IssuerAccount != setup.Account() || uc.Name != "pop-a" || !ok || scope == nil || scope.(*jwt.UserScope).Role != auth.RoleLeaf {
		t.Fatalf("leaf user issued by %s for %s named %q; want the Switchyard account %s's leaf signing key, pop-a", uc.Issuer, uc.IssuerAccount, uc.Name, setup.Account())
	}
	list, err := setup.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "pop-a" || string(list[0].Role) != auth.RoleLeaf || list[0].PublicKey != uc.Subject {
		t.Fatalf("issued list %+v", list)
	}
	account, err := setup.Revoke("pop-a", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ac, err = jwt.DecodeAccountClaims(account)
	if err != nil {
		t.Fatal(err)
	}
	if !ac.IsClaimRevoked(uc) {
		t.Error("revoking pop-a left its leaf user valid")
	}
	if _, err := setup.IssueLeaf("pop.a"); err == nil || !strings.Contains(err.Error(), "--name") {
		t.Errorf("leaf name with a dot: %v, want an error naming --name", err)
	}
}

// issueLeaf writes a leaf identity's creds and returns the client security
// that connects with them.
func (s *securedServer) issueLeaf(t *testing.T, name string) bus.Security {
	t.Helper()
	creds, err := s.setup.IssueLeaf(name)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.dir, name+".creds")
	if err := os.WriteFile(path, creds, 0o600); err != nil {
		t.Fatal(err)
	}
	return bus.Security{Creds: path, CA: s.ca.CAPath()}
}

// TestAuth_LeafCredentialsCarryOnlyWhatAPoPNeeds: a PoP's leaf
// credentials (pop-a.creds on the PoP's host) carry the traffic of the
// agents, operators and viewers at the PoP, and nothing more. Whoever
// copies them and connects to the hub with them reads what an agent
// reads, and cannot speak as the coordinators (the leader's beacon, the
// status ask, audit records, replies to their requests), write or delete
// documents, streams or buckets, add consumers, or listen to the fleet's
// telemetry and queries. (It can speak for any node, as the agents of its
// PoP do: see docs/security.md.)
func TestAuth_LeafCredentialsCarryOnlyWhatAPoPNeeds(t *testing.T) {
	s := startSecured(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "coord-1"))
	cjs, err := jetstream.New(coord.nc)
	if err != nil {
		t.Fatal(err)
	}
	desired, err := bus.EnsureDesiredBucket(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	drills, err := bus.EnsureDrillsBucket(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	intents, err := bus.EnsureIntentStream(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := bus.EnsureAuditStream(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := desired.Put(ctx, "web", []byte("doc-1")); err != nil {
		t.Fatal(err)
	}
	if _, err := drills.Put(ctx, "d1", []byte("drill-1")); err != nil {
		t.Fatal(err)
	}
	// An agent hears what the coordinators say to the fleet; the
	// coordinator hears the fleet's statuses and the audit records.
	agent := s.connect(t, s.issue(t, bus.RoleAgent, "edge-1"))
	fleetHeard, err := agent.nc.SubscribeSync(bus.FleetAll())
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	auditHeard, err := coord.nc.SubscribeSync(bus.AuditSubjects())
	if err != nil {
		t.Fatal(err)
	}
	if err := coord.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	leaf := s.connect(t, s.issueLeaf(t, "pop-a"))
	ljs, err := jetstream.New(leaf.nc)
	if err != nil {
		t.Fatal(err)
	}
	// What the agents at a PoP read through it: their documents by key,
	// every drill in one batch.
	lkv, err := bus.DesiredBucketHandle(ctx, ljs)
	if err != nil {
		t.Fatalf("leaf opens the desired bucket: %v", err)
	}
	if e, err := lkv.Get(ctx, "web"); err != nil || string(e.Value()) != "doc-1" {
		t.Fatalf("leaf reads a document: %v", err)
	}
	ldr, err := ljs.KeyValue(ctx, bus.DrillsBucket)
	if err != nil {
		t.Fatalf("leaf opens the drills bucket: %v", err)
	}
	if docs, err := bus.ReadAll(ctx, ljs, ldr); err != nil || string(docs["d1"]) != "drill-1" {
		t.Fatalf("leaf reads every drill: %v %v", docs, err)
	}
	// An operator at the PoP sends intents and queries through it.
	if _, err := ljs.Publish(ctx, bus.IntentSubject(bus.IntentKindRollout), []byte("intent")); err != nil {
		t.Fatalf("an intent through the leaf: %v", err)
	}
	if v := leaf.violations(); len(v) != 0 {
		t.Fatalf("the work of a PoP's identities was refused: %v", v)
	}

	// Speaking as the coordinators.
	forbidden := []string{
		bus.BeaconSubject,
		bus.StatusAskSubject,
		bus.AuditSubject(),
		bus.DesiredKeySubject("web"),
		bus.DrillKeySubject("d1"),
		bus.DesiredPushSubject("web"),
		bus.DrillPushSubject("d1"),
		bus.InboxPrefix("coord-1") + ".forged-reply",
	}
	for _, subj := range forbidden {
		if err := leaf.nc.Publish(subj, []byte("forged")); err != nil {
			t.Fatal(err)
		}
	}
	// Deleting a document or a drill, purging or deleting the streams
	// behind the buckets, the intents and the audit.
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	_ = lkv.Delete(wctx, "web") // a publish on the key's subject; checked below
	wcancel()
	apiForbidden := []string{
		"$JS.API.STREAM.DELETE." + bus.IntentStream,
		"$JS.API.STREAM.PURGE.KV_" + bus.DesiredBucket,
		"$JS.API.STREAM.DELETE.KV_" + bus.DrillsBucket,
		"$JS.API.STREAM.PURGE." + bus.AuditStream,
		"$JS.API.STREAM.MSG.DELETE.KV_" + bus.DesiredBucket,
		"$JS.API.CONSUMER.CREATE.KV_" + bus.DesiredBucket + ".squatter",
		"$JS.API.STREAM.CREATE.SQUATTER",
	}
	for _, subj := range apiForbidden {
		if m, err := leaf.nc.Request(subj, []byte(`{}`), time.Second); err == nil {
			t.Logf("%s answered: %s", subj, m.Data)
		}
	}
	refusesDesiredConsumers(t, ctx, "leaf", ljs, lkv)
	// Listening to the fleet's telemetry or the queries (answering them
	// in the coordinators' place). Replies to any identity's inbox it may
	// receive: it carries those of every identity at its PoP, whose names
	// the hub cannot tell from others.
	for _, subj := range []string{bus.TelemetryAll(), bus.QuerySubject(bus.QueryFleet)} {
		if _, err := leaf.nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
	}
	if err := leaf.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a permission violation for every forbidden subject", 10*time.Second, func() bool {
		got := strings.Join(leaf.violations(), "\n")
		for _, subj := range append(append(forbidden, apiForbidden...), bus.TelemetryAll(), bus.QuerySubject(bus.QueryFleet)) {
			if !strings.Contains(got, subj) {
				return false
			}
		}
		return true
	})
	if m, err := fleetHeard.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("a forged %s reached the agents", m.Subject)
	}
	if m, err := auditHeard.NextMsg(100 * time.Millisecond); err == nil {
		t.Fatalf("a forged audit record reached the coordinator on %s", m.Subject)
	}
	// Everything is as the coordinator left it.
	if e, err := desired.Get(ctx, "web"); err != nil || string(e.Value()) != "doc-1" {
		t.Fatalf("desired bucket after the leaf's forgeries: %v", err)
	}
	if e, err := drills.Get(ctx, "d1"); err != nil || string(e.Value()) != "drill-1" {
		t.Fatalf("drills bucket after the leaf's forgeries: %v", err)
	}
	if info, err := intents.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("intent stream after the leaf's forgeries: %v; want the one intent", err)
	}
	if info, err := audit.Info(ctx); err != nil || info.State.Msgs != 0 {
		t.Fatalf("audit stream after the leaf's forgeries: %v %+v", err, info.State)
	}
	for _, name := range []string{"KV_" + bus.DesiredBucket, "KV_" + bus.DrillsBucket} {
		st, err := cjs.Stream(ctx, name)
		if err != nil {
			t.Fatalf("stream %s after the leaf's forgeries: %v", name, err)
		}
		if info, err := st.Info(ctx); err != nil || info.State.Consumers != 0 {
			t.Fatalf("stream %s after the leaf's forgeries: %v, %d consumers", name, err, info.State.Consumers)
		}
	}
}

// startHubForLeaves runs the embedded server as a hub: JetStream in the
// domain "hub", a leafnode port with the clients' TLS. It returns the
// server and the URL leaf servers connect to.
func startHubForLeaves(t *testing.T) (*securedServer, string) {
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
	conf := setup.ServerConfig(filepath.Join(store, "jwt")) + fmt.Sprintf(`
jetstream: { domain: hub }
leafnodes: {
  listen: "127.0.0.1:-1"
  tls: { cert_file: %q, key_file: %q, ca_file: %q }
}
`, srvCert.Cert, srvCert.Key, srvCert.CA)
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: store, AuthConfig: conf, TLS: srvCert})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	vz, err := ns.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &securedServer{ns: ns, setup: setup, ca: ca, dir: dir}, fmt.Sprintf("tls://127.0.0.1:%d", vz.LeafNode.Port)
}

// TestAuth_LeafServerWithStolenLeafCredentialsIsHeldToThem: whoever copies
// a PoP's leaf credentials runs a leaf server of their own with them, one
// that checks nothing of its own clients. The hub holds the leaf
// connection to the leaf identity's permissions: through it the agents'
// reads by key in the hub's JetStream domain and the coordinators' word to
// the fleet pass, the leader's beacon from elsewhere, deletes and purges of
// the streams, and new consumers do not.
func TestAuth_LeafServerWithStolenLeafCredentialsIsHeldToThem(t *testing.T) {
	s, leafURL := startHubForLeaves(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	coord := s.connect(t, s.issue(t, bus.RoleCoordinator, "coord-1"))
	cjs, err := jetstream.New(coord.nc)
	if err != nil {
		t.Fatal(err)
	}
	desired, err := bus.EnsureDesiredBucket(ctx, cjs, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bus.EnsureIntentStream(ctx, cjs, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := desired.Put(ctx, "web", []byte("doc-1")); err != nil {
		t.Fatal(err)
	}
	agent := s.connect(t, s.issue(t, bus.RoleAgent, "edge-1"))
	fleetHeard, err := agent.nc.SubscribeSync(bus.FleetAll())
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// The thief's leaf server: no authorization of its own.
	creds := s.issueLeaf(t, "pop-a")
	confPath := filepath.Join(s.dir, "thief-leaf.conf")
	conf := fmt.Sprintf(`
listen: "127.0.0.1:-1"
leafnodes: {
  remotes: [{ urls: [%q], credentials: %q, tls: { ca_file: %q } }]
}
`, leafURL, creds.Creds, creds.CA)
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	opts.NoSigs, opts.HTTPPort = true, 0
	leaf, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	leaf.Start()
	t.Cleanup(func() { leaf.Shutdown(); leaf.WaitForShutdown() })
	if !leaf.ReadyForConnections(10 * time.Second) {
		t.Fatal("leaf server not ready")
	}
	waitFor(t, "the leaf to attach to the hub", 10*time.Second, func() bool { return s.ns.NumLeafNodes() == 1 })
	nc, err := nats.Connect(leaf.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	// What the PoP's agents do passes: the leader's beacon reaches them,
	// their reads by key in the hub's domain are answered.
	beacons, err := nc.SubscribeSync(bus.BeaconSubject)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the leader's beacon through the leaf", 10*time.Second, func() bool {
		if err := coord.nc.Publish(bus.BeaconSubject, []byte("leader")); err != nil {
			t.Fatal(err)
		}
		m, err := beacons.NextMsg(100 * time.Millisecond)
		return err == nil && string(m.Data) == "leader"
	})
	if m, err := fleetHeard.NextMsg(time.Second); err != nil || string(m.Data) != "leader" {
		t.Fatalf("the agent on the hub hears the leader: %v", err)
	}
	// The copies of the documents the leader writes reach them too: the
	// buckets' own $KV.… subjects never cross a leaf connection.
	for _, subj := range []string{bus.DesiredPushSubject("web"), bus.DrillPushSubject("d1")} {
		pushes, err := nc.SubscribeSync(subj)
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the leader's push on "+subj+" through the leaf", 10*time.Second, func() bool {
			if err := coord.nc.Publish(subj, []byte("doc")); err != nil {
				t.Fatal(err)
			}
			m, err := pushes.NextMsg(100 * time.Millisecond)
			return err == nil && string(m.Data) == "doc"
		})
	}
	ljs, err := jetstream.NewWithDomain(nc, "hub")
	if err != nil {
		t.Fatal(err)
	}
	lkv, err := bus.DesiredBucketHandle(ctx, ljs)
	if err != nil {
		t.Fatalf("open the desired bucket through the leaf: %v", err)
	}
	if e, err := lkv.Get(ctx, "web"); err != nil || string(e.Value()) != "doc-1" {
		t.Fatalf("read a document through the leaf: %v", err)
	}

	// What the thief tries does not.
	cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := ljs.CreateOrUpdateConsumer(cctx, "KV_"+bus.DesiredBucket, jetstream.ConsumerConfig{Durable: "squatter"}); err == nil {
		t.Error("a consumer was created through the leaf")
	}
	ccancel()
	if err := nc.Publish(bus.BeaconSubject, []byte("forged")); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{
		"$JS.hub.API.STREAM.DELETE." + bus.IntentStream,
		"$JS.hub.API.STREAM.PURGE.KV_" + bus.DesiredBucket,
		"$JS.hub.API.STREAM.DELETE.KV_" + bus.DesiredBucket,
	} {
		if m, err := nc.Request(subj, nil, time.Second); err == nil {
			t.Errorf("%s through the leaf answered: %s", subj, m.Data)
		}
	}
	for {
		m, err := fleetHeard.NextMsg(300 * time.Millisecond)
		if err != nil {
			break
		}
		if string(m.Data) == "forged" {
			t.Error("a beacon from the thief's leaf reached the agent")
		}
	}
	if e, err := desired.Get(ctx, "web"); err != nil || string(e.Value()) != "doc-1" {
		t.Fatalf("desired bucket after the thief's leaf: %v", err)
	}
	if _, err := cjs.Stream(ctx, bus.IntentStream); err != nil {
		t.Fatalf("intent stream after the thief's leaf: %v", err)
	}
}

// An auth directory made by an earlier release has no leaf signing key,
// and its leaf identities were signed by the account key with no
// permissions. IssueLeaf says to push first (a user signed by a key the
// servers' account lacks would be refused only when the leaf connects);
// after the refresh it issues, and UnlimitedLeaves lists the earlier
// release's leaf identities until they are revoked.
func TestAuth_LeavesOfAnEarlierReleaseAreFoundAndReissued(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	if _, err := auth.Init(dir, "test"); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "signing", auth.RoleLeaf+".nk")
	seed, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := nkeys.FromSeed(bytes.TrimSpace(seed))
	if err != nil {
		t.Fatal(err)
	}
	leafPub, _ := leafKey.PublicKey()
	rewriteAccount(t, dir, func(ac *jwt.AccountClaims) { delete(ac.SigningKeys, leafPub) })
	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	// The earlier release's leaf identity, as its issued list has it.
	old, _ := nkeys.CreateUser()
	oldPub, _ := old.PublicKey()
	list := fmt.Sprintf(`[{"name":"pop-a","role":"leaf","publicKey":%q,"issuedAt":%d}]`, oldPub, time.Now().Add(-time.Hour).Unix())
	if err := os.WriteFile(filepath.Join(dir, "issued.json"), []byte(list), 0o600); err != nil {
		t.Fatal(err)
	}
	setup, err := auth.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := setup.IssueLeaf("pop-a-2"); !errors.Is(err, auth.ErrNoLeafScope) || !strings.Contains(err.Error(), "auth push") {
		t.Fatalf("issue a leaf before the account has a leaf signing key: %v, want %v", err, auth.ErrNoLeafScope)
	}
	if _, changed, err := setup.Refresh(); err != nil || !changed {
		t.Fatalf("refresh of a directory without the leaf signing key: changed %v, %v", changed, err)
	}
	if _, err := setup.IssueLeaf("pop-a-2"); err != nil {
		t.Fatalf("issue a leaf after the refresh: %v", err)
	}
	unlimited, err := setup.UnlimitedLeaves()
	if err != nil {
		t.Fatal(err)
	}
	if len(unlimited) != 1 || unlimited[0].Name != "pop-a" {
		t.Fatalf("unlimited leaves %+v, want the earlier release's pop-a alone", unlimited)
	}
	if _, err := setup.Revoke("pop-a", time.Now()); err != nil {
		t.Fatal(err)
	}
	if unlimited, err := setup.UnlimitedLeaves(); err != nil || len(unlimited) != 0 {
		t.Fatalf("unlimited leaves after revoking pop-a: %+v %v", unlimited, err)
	}
}
