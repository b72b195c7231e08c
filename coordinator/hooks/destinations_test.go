package hooks

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestDestinations_RefuseMetadataByDefaultAndAllOutsideTheNetworksGiven(t *testing.T) {
	internal, err := ParseNetworks("--webhook-networks", []string{"10.0.0.0/8", "192.0.2.7", "::ffff:198.51.100.0/120"})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		networks []netip.Prefix
		addr     string
		why      string // empty: allowed
	}{
		{nil, "169.254.169.254", "link-local"},
		{nil, "::ffff:169.254.169.254", "link-local"},
		{nil, "fe80::a9fe:a9fe%eth0", "link-local"},
		{nil, "fd00:ec2::254", "metadata"},
		{nil, "100.100.100.200", "metadata"},
		{nil, "0.0.0.0", "unspecified"},
		{nil, "::", "unspecified"},
		{nil, "224.0.0.1", "multicast"},
		{nil, "127.0.0.1", ""},
		{nil, "10.1.2.3", ""},
		{nil, "2001:db8::1", ""},
		{internal, "10.1.2.3", ""},
		{internal, "192.0.2.7", ""},
		{internal, "198.51.100.9", ""},
		{internal, "192.0.2.8", "outside the webhook networks"},
		{internal, "127.0.0.1", "outside the webhook networks"},
		{[]netip.Prefix{netip.MustParsePrefix("169.254.0.0/16")}, "169.254.10.1", ""},
	} {
		err := Destinations{Networks: c.networks}.Check(netip.MustParseAddr(c.addr))
		switch {
		case c.why == "" && err != nil:
			t.Errorf("%s with networks %v: %v, want it allowed", c.addr, c.networks, err)
		case c.why != "" && (err == nil || !strings.Contains(err.Error(), c.why)):
			t.Errorf("%s with networks %v: %v, want it refused as %s", c.addr, c.networks, err, c.why)
		}
	}
	for _, u := range []string{"http://169.254.169.254/latest/meta-data/", "http://[fe80::1%25eth0]:8080/", "https://[::ffff:a9fe:a9fe]/"} {
		if err := (Destinations{}).CheckURL(u); err == nil {
			t.Errorf("%s: allowed, want refused", u)
		}
	}
	if err := (Destinations{}).CheckURL("http://metadata.internal/"); err != nil {
		t.Errorf("a name is checked when it resolves, not before: %v", err)
	}
	if _, err := ParseNetworks("--webhook-networks", []string{"::ffff:0:0/80"}); err == nil || !strings.Contains(err.Error(), "IPv4-mapped") {
		t.Errorf("an IPv4-mapped network wider than IPv4: %v", err)
	}
	if _, err := ParseNetworks("--webhook-networks", []string{"10.0.0.0/8", "10.0.0.0/33"}); err == nil || !strings.Contains(err.Error(), `--webhook-networks[1]: "10.0.0.0/33" is not a network`) {
		t.Errorf("bad network: %v", err)
	}
}

// A name is checked for the address it resolves to, at the call: a webhook
// at a name that leads where the coordinator does not connect is refused
// before anything is sent, once (another attempt would go to the same
// place), and the refusal is what the history records.
func TestHooks_CallToARefusedDestinationIsRefusedOnceWithoutConnecting(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.WriteString(w, "secret")
	}))
	defer srv.Close()
	port := srv.URL[strings.LastIndex(srv.URL, ":"):]
	w := webhook("pager", sv1.HookPoint_HOOK_POINT_ROLLBACK, "http://localhost"+port+"/", false)
	w.Retries = 3
	m := newRaft(t, hookedSpec(w))
	r := m.st.Rollout("r1")
	m.st.ApplyRollback(m.next(), &sv1.RollbackEntry{Rollout: "r1", Generation: r.GetGeneration(), StampedAt: timestamppb.New(t0)})
	c := caller(m)
	c.Client = NewClient(Destinations{Networks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	settle(c)
	got := m.st.Rollout("r1").GetHookCalls()
	if len(got) != 1 || got[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_FAILED || got[0].GetAttempts() != 1 ||
		!strings.Contains(got[0].GetDetail(), "refused (outside the webhook networks)") {
		t.Fatalf("recorded calls %v; want one failed attempt naming the refusal", got)
	}
	if strings.Contains(got[0].GetDetail(), "secret") || calls.Load() != 0 {
		t.Fatalf("the webhook was reached %d times", calls.Load())
	}

	// The same client reaches what the networks allow.
	m = newRaft(t, hookedSpec(webhook("pager", sv1.HookPoint_HOOK_POINT_ROLLBACK, srv.URL, false)))
	m.st.ApplyRollback(m.next(), &sv1.RollbackEntry{Rollout: "r1", Generation: m.st.Rollout("r1").GetGeneration(), StampedAt: timestamppb.New(t0)})
	c = caller(m)
	c.Client = NewClient(Destinations{Networks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	settle(c)
	if got := m.st.Rollout("r1").GetHookCalls(); len(got) != 1 || got[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_SUCCEEDED {
		t.Fatalf("recorded calls %v; want the allowed call made", got)
	}
}
