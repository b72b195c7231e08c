package coordinator

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// startLeaderless runs a coordinator that waits for a second one that never
// comes: it knows no leader, as a follower does whose leader died.
func startLeaderless(t *testing.T, natsURL string) *Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	srv, err := New(Config{NodeID: "c2", DataDir: filepath.Join(t.TempDir(), "data"), RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
		NATSURL: natsURL, BootstrapExpect: 2, RetryJoin: []string{freeAddr(t)}, Registerer: reg, Gatherer: reg,
		TickInterval: 50 * time.Millisecond, Signing: testSigning})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, "the HTTP API", 10*time.Second, func() bool {
		if srv.HTTPAddr() == "" {
			return false
		}
		resp, err := http.Get("http://" + srv.HTTPAddr() + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return srv
}

// A coordinator that cannot confirm its replica current refuses the
// overview (503); asked with ?stale=true it answers from its replica, and
// the answer itself says it is stale and why, as the event stream does: a
// client of /v1/overview reads the body, not only the header.
func TestAPI_StaleOverviewSaysItIsStale(t *testing.T) {
	_, url := startNATS(t)
	srv := startLeaderless(t, url)
	base := "http://" + srv.HTTPAddr()

	if code, body := getAPI(t, base+"/v1/overview", nil); code != http.StatusServiceUnavailable || !strings.Contains(body, "knows no leader") {
		t.Fatalf("current overview on a coordinator without a leader: %d %s", code, body)
	}
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/overview?stale=true", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get(bus.StaleHeader) != "c2" {
		t.Fatalf("stale header %q", resp.Header.Get(bus.StaleHeader))
	}
	var ov sv1.Overview
	if code, body := getAPI(t, base+"/v1/overview?stale=true", &ov); code != http.StatusOK {
		t.Fatalf("stale overview: %d %s", code, body)
	}
	if !ov.GetStale() || !strings.Contains(ov.GetStaleReason(), "knows no leader") {
		t.Fatalf("overview asked with ?stale=true on a coordinator without a leader says stale=%v reason %q; want stale with the reason",
			ov.GetStale(), ov.GetStaleReason())
	}
}

// A leader that lost NATS still confirms its replica with Raft, but hears
// no agent: every node ages into stale whatever it does. The overview (and
// so the dashboard) must say that this coordinator cannot tell, rather than
// show a live view of a fleet that went silent.
func TestAPI_OverviewOffTheBusSaysItCannotSeeTheFleet(t *testing.T) {
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	c := startCoordinator(t, ns.ClientURL(), t.TempDir())
	base := "http://" + c.srv.HTTPAddr()
	waitFor(t, "the fleet view to settle", 10*time.Second, c.srv.fleet.Settled)

	var ov sv1.Overview
	if code, body := getAPI(t, base+"/v1/overview", &ov); code != http.StatusOK || ov.GetStale() {
		t.Fatalf("overview on a leader on the bus: %d stale=%v %s", code, ov.GetStale(), body)
	}
	ns.Shutdown()
	ns.WaitForShutdown()
	waitFor(t, "the coordinator to notice NATS is gone", 10*time.Second, func() bool { return !c.srv.nc.IsConnected() })

	ov.Reset()
	if code, body := getAPI(t, base+"/v1/overview", &ov); code != http.StatusOK {
		t.Fatalf("overview off the bus: %d %s", code, body)
	}
	if !ov.GetStale() || !strings.Contains(ov.GetStaleReason(), "not connected to NATS") {
		t.Fatalf("overview of a leader off the bus: stale=%v reason %q; want stale, saying it is not connected to NATS", ov.GetStale(), ov.GetStaleReason())
	}
	ev, err := c.srv.liveEvent()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ev.data), "not connected to NATS") {
		t.Fatalf("live event off the bus does not say so: %s", ev.data)
	}
}

// The authentication scheme is case-insensitive (RFC 9110 11.1): a client
// that sends "bearer TOKEN" carries the right token and must be let in.
func TestAPI_ViewerTokenSchemeIsCaseInsensitive(t *testing.T) {
	_, url := startNATS(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "viewer.token")
	const token = "case-viewer-token-0123456789"
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startCoordinatorWith(t, url, filepath.Join(dir, "data"), func(cfg *Config) { cfg.ViewerTokenFile = tokenFile })
	base := "http://" + c.srv.HTTPAddr()
	for _, scheme := range []string{"Bearer", "bearer", "BEARER"} {
		if code, body := getAPI(t, base+"/v1/overview", nil, "Authorization", scheme+" "+token); code != http.StatusOK {
			t.Fatalf("Authorization: %s TOKEN: %d %s", scheme, code, body)
		}
	}
	if code, _ := getAPI(t, base+"/v1/overview", nil, "Authorization", "bearer wrong-token-wrong-token"); code != http.StatusUnauthorized {
		t.Fatalf("wrong token with a lower-case scheme: %d", code)
	}
}

// A leader that started, or came back on the bus, moments ago has heard
// from only some of the fleet: its counts would call a rollout converged on
// the nodes it heard. Reads that count nodes (rollouts, the fleet) decline
// until it asked every agent and they had the grace to answer; the client
// asks again and gets the whole view. Other reads are answered meanwhile.
func TestQuery_FleetReadsWaitForAWholeViewOfTheFleet(t *testing.T) {
	nc, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	waitFor(t, "a whole view of the fleet", 10*time.Second, c.srv.fleet.Settled)
	c.srv.fleet.relisten() // as when it comes back on the bus

	if err := c.srv.readCurrent(); err != nil {
		t.Fatalf("a current leader declines reads that count no node: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	var ans sv1.FleetStatus
	if err := bus.Query(ctx, nc, bus.QueryFleetStatus, &sv1.FleetStatusQuery{}, &ans); err == nil || !strings.Contains(err.Error(), "still hearing from the fleet") {
		t.Fatalf("fleet status from a leader still hearing from the fleet: %v", err)
	}
	base := "http://" + c.srv.HTTPAddr()
	for _, path := range []string{"/v1/rollouts", "/v1/fleet"} {
		if code, body := getAPI(t, base+path, nil); code != http.StatusServiceUnavailable || !strings.Contains(body, "still hearing from the fleet") {
			t.Fatalf("GET %s from a leader still hearing from the fleet: %d %s", path, code, body)
		}
		if code, body := getAPI(t, base+path+"?stale=true", nil); code != http.StatusOK {
			t.Fatalf("GET %s?stale=true: %d %s", path, code, body)
		}
	}

	c.srv.fleet.asked()
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bus.Query(ctx, nc, bus.QueryFleetStatus, &sv1.FleetStatusQuery{}, &ans); err != nil {
		t.Fatalf("fleet status once the agents had the grace to answer: %v", err)
	}
}
