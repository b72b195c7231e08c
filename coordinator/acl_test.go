package coordinator

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/audit"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func newUser(t *testing.T) *bus.IntentSigner {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	s, err := bus.NewNkeyIntentSigner(kp)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func startCoordinatorWithAdmin(t *testing.T, natsURL, dataDir string, admin *bus.IntentSigner) *testCoordinator {
	t.Helper()
	c := startCoordinatorWith(t, natsURL, dataDir, func(c *Config) { c.AclBootstrap = AclBootstrap{Key: admin.Key(), Name: "root"} })
	waitFor(t, "the first admin", 10*time.Second, func() bool { return c.srv.fsm.State().Enforcing() })
	return c
}

func sendSigned(t *testing.T, nc *nats.Conn, s *bus.IntentSigner, kind string, in *sv1.Intent) *sv1.IntentResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := bus.SendSignedIntent(ctx, nc, kind, in, s)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func grantIntent(id string, who *bus.IntentSigner, name, role, services string) *sv1.Intent {
	return &sv1.Intent{Id: id, Action: &sv1.Intent_Acl{Acl: &sv1.AclChange{Change: &sv1.AclChange_Grant{
		Grant: &sv1.AclGrant{Key: who.Key(), Name: name, Role: role, Services: services}}}}}
}

// TestAcl_LeaderVerifiesSignaturesAndRolesAndAuditsEveryRefusal runs one
// coordinator with a bootstrapped admin on an embedded JetStream server.
func TestAcl_LeaderVerifiesSignaturesAndRolesAndAuditsEveryRefusal(t *testing.T) {
	nc, url := startNATS(t)
	admin, alice, viewer, stranger := newUser(t), newUser(t), newUser(t), newUser(t)
	c := startCoordinatorWithAdmin(t, url, t.TempDir(), admin)

	for _, g := range []*sv1.Intent{
		grantIntent("g1", alice, "alice", "deployer", "web"),
		grantIntent("g2", viewer, "val", "viewer", "*"),
	} {
		if res := sendSigned(t, nc, admin, bus.IntentKindAcl, g); !res.GetAccepted() {
			t.Fatalf("grant: %v", res)
		}
	}

	// Bad signature: the envelope's intent changed after signing.
	env, err := alice.Sign(applyIntent("forged", "web-1"))
	if err != nil {
		t.Fatal(err)
	}
	env.Intent = append(env.Intent, 0x08, 0x01) // a field appended: bytes differ
	forged, _ := proto.Marshal(env)

	stale := applyIntent("stale", "web-1")
	stale.CreatedAt = timestamppb.New(time.Now().Add(-2 * time.Hour))

	cases := []struct {
		name, code, text string
		res              func() *sv1.IntentResult
	}{
		{"unsigned", "unsigned", "not signed", func() *sv1.IntentResult { return send(t, nc, applyIntent("u1", "web-1")) }},
		{"unknown key", "unknown_key", "no principal holds key " + stranger.Key(), func() *sv1.IntentResult {
			return sendSigned(t, nc, stranger, bus.IntentKindRollout, applyIntent("u2", "web-1"))
		}},
		{"bad signature", "bad_signature", "does not match key", func() *sv1.IntentResult { return publishRaw(t, nc, "u3", forged) }},
		{"viewer applies", "forbidden", `val (` + viewer.Key()[:12] + `…) lacks role "deployer" on service "web"`, func() *sv1.IntentResult {
			return sendSigned(t, nc, viewer, bus.IntentKindRollout, applyIntent("u4", "web-1"))
		}},
		{"stale signature", "invalid", "intent.created_at", func() *sv1.IntentResult {
			return sendSigned(t, nc, alice, bus.IntentKindRollout, stale)
		}},
	}
	for _, cs := range cases {
		before := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues(cs.code))
		res := cs.res()
		if res.GetAccepted() || res.GetCode() != cs.code || !strings.Contains(res.GetError(), cs.text) {
			t.Fatalf("%s: %v; want refused %s saying %q", cs.name, res, cs.code, cs.text)
		}
		if got := testutil.ToFloat64(c.srv.metrics.intentsRejected.WithLabelValues(cs.code)); got != before+1 {
			t.Fatalf("%s: intents_rejected_total{reason=%s} %v, want %v", cs.name, cs.code, got, before+1)
		}
	}
	if rs := c.srv.fsm.State().Rollouts(); len(rs) != 0 {
		t.Fatalf("a refused intent made rollouts: %v", rs)
	}
	res := sendSigned(t, nc, alice, bus.IntentKindRollout, applyIntent("ok", "web-1"))
	if !res.GetAccepted() {
		t.Fatal(res)
	}
	if r := c.srv.fsm.State().Rollout("web-1"); r.GetOperator() != "alice" {
		t.Fatalf("rollout operator %q, want the verified alice", r.GetOperator())
	}

	// Every decision above is on the stream, once, and the chain verifies
	// and ends at the replicated head.
	js, _ := jetstream.New(nc)
	head := c.srv.fsm.State().AuditHead()
	var msgs []audit.Stored
	waitFor(t, "the audit export", 10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		msgs, _, err = audit.ReadStream(ctx, js, 0)
		return err == nil && uint64(len(msgs)) >= head.GetSeq()
	})
	v, err := audit.VerifyStored(msgs)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, r := range v.Records {
		if !r.GetAccepted() {
			kinds[r.GetCode()]++
		}
	}
	for _, cs := range cases {
		if kinds[cs.code] != 1 {
			t.Fatalf("refusals in the audit: %v; want one %s", kinds, cs.code)
		}
	}
	if last := v.Records[len(v.Records)-1]; last.GetActor() != "alice" || last.GetAction() != "apply_rollout" || !last.GetAccepted() {
		t.Fatalf("last record %v", last)
	}
	waitFor(t, "the export mark", 5*time.Second, func() bool {
		h := c.srv.fsm.State().AuditHead()
		return h.GetExported() == h.GetSeq()
	})
}

func publishRaw(t *testing.T, nc *nats.Conn, id string, body []byte) *sv1.IntentResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	js, _ := jetstream.New(nc)
	m := nats.NewMsg(bus.IntentSubject(bus.IntentKindRollout))
	m.Data = body
	m.Header.Set(bus.MsgIDHeader, id)
	m.Header.Set(bus.ReplyHeader, inbox)
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	reply, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var res sv1.IntentResult
	if err := proto.Unmarshal(reply.Data, &res); err != nil {
		t.Fatal(err)
	}
	return &res
}
