package haproxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/internal/haproxyproc"
)

// live is a real HAProxy fronting two in-test backends that answer their
// own name, with a driver on its admin socket.
type live struct {
	proc     *haproxyproc.Process
	drv      *Driver
	frontend string
	client   *http.Client
}

func startLive(t testing.TB) *live {
	t.Helper()
	backend := func(body string) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, body)
		}))
		t.Cleanup(s.Close)
		return s.Listener.Addr().String()
	}
	cfg := haproxyproc.Config{
		Dir:          t.TempDir(),
		FrontendAddr: "127.0.0.1:0",
		Backend:      "web",
		Servers: []haproxyproc.Server{
			{Name: "blue", Addr: backend("blue"), Weight: 100},
			{Name: "green", Addr: backend("green"), Weight: 0},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	proc, err := haproxyproc.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proc.Stop(); err != nil {
			t.Error(err)
		}
	})
	transport := &http.Transport{MaxIdleConnsPerHost: 8}
	t.Cleanup(transport.CloseIdleConnections)
	return &live{
		proc:     proc,
		drv:      newDriver(t, blueGreen(proc.SocketPath())),
		frontend: "http://" + proc.FrontendAddr() + "/",
		client:   &http.Client{Timeout: 5 * time.Second, Transport: transport},
	}
}

// get makes one request through HAProxy and returns which backend answered.
func (l *live) get() (string, error) {
	resp, err := l.client.Get(l.frontend)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %q", resp.StatusCode, b)
	}
	return string(b), nil
}

// expectAll makes n requests and fails unless all reach want.
func (l *live) expectAll(t *testing.T, n int, want string) {
	t.Helper()
	for i := range n {
		got, err := l.get()
		if err != nil || got != want {
			t.Fatalf("request %d: got %q, %v; want %q", i, got, err, want)
		}
	}
}

func (l *live) expectWeights(t *testing.T, want map[string]uint32) {
	t.Helper()
	got, err := l.drv.Weights(context.Background())
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Weights = %v, %v; want %v", got, err, want)
	}
}

func TestLive_ApplySwitchesTraffic(t *testing.T) {
	l := startLive(t)
	ctx := context.Background()

	l.expectWeights(t, map[string]uint32{"blue": 100, "green": 0})
	l.expectAll(t, 10, "blue")

	if err := l.drv.Apply(ctx, map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	l.expectWeights(t, map[string]uint32{"blue": 0, "green": 100})
	l.expectAll(t, 20, "green")

	if err := l.drv.Apply(ctx, map[string]uint32{"blue": 100, "green": 0}); err != nil {
		t.Fatal(err)
	}
	l.expectWeights(t, map[string]uint32{"blue": 100, "green": 0})
	l.expectAll(t, 20, "blue")

	// A canary split reaches both.
	if err := l.drv.Apply(ctx, map[string]uint32{"blue": 50, "green": 50}); err != nil {
		t.Fatal(err)
	}
	l.expectWeights(t, map[string]uint32{"blue": 50, "green": 50})
	seen := map[string]int{}
	for range 20 {
		got, err := l.get()
		if err != nil {
			t.Fatal(err)
		}
		seen[got]++
	}
	if seen["blue"] == 0 || seen["green"] == 0 {
		t.Fatalf("50/50 split answered %v, want both", seen)
	}
}

func TestLive_RestartShowsDrift(t *testing.T) {
	l := startLive(t)
	if err := l.drv.Apply(context.Background(), map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	l.expectWeights(t, map[string]uint32{"blue": 0, "green": 100})

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := l.proc.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// Same driver, no reconnect: it reads the config's weights again.
	l.expectWeights(t, map[string]uint32{"blue": 100, "green": 0})
	l.expectAll(t, 5, "blue")
}

func TestLive_UnavailableWhileStopped(t *testing.T) {
	l := startLive(t)
	if err := l.proc.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := l.drv.Weights(ctx); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Weights: err = %v, want ErrUnavailable", err)
	}
	if err := l.drv.Apply(ctx, map[string]uint32{"green": 100}); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Apply: err = %v, want ErrUnavailable", err)
	}
	if _, err := l.drv.Stats(ctx); !errors.Is(err, driver.ErrUnavailable) {
		t.Fatalf("Stats: err = %v, want ErrUnavailable", err)
	}

	startCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := l.proc.Restart(startCtx); err != nil {
		t.Fatal(err)
	}
	l.expectWeights(t, map[string]uint32{"blue": 100, "green": 0})
}

func TestLive_UnknownNames(t *testing.T) {
	l := startLive(t)
	ctx := context.Background()

	if err := l.drv.Apply(ctx, map[string]uint32{"purple": 10}); !errors.Is(err, driver.ErrUnknownBackend) {
		t.Fatalf("Apply(purple): err = %v, want ErrUnknownBackend", err)
	}
	if err := l.drv.Apply(ctx, map[string]uint32{"green": 257}); err == nil || !strings.Contains(err.Error(), "green") {
		t.Fatalf("Apply(green: 257): err = %v, want an error naming green", err)
	}

	wrongServer := newDriver(t, Config{Socket: l.proc.SocketPath(), Backend: "web", Servers: map[string]string{"blue": "blue", "green": "nosuch"}})
	if err := wrongServer.SetState(ctx, "green", StateReady); !errors.Is(err, ErrNoSuchServer) || !strings.Contains(err.Error(), "web/nosuch") {
		t.Fatalf("SetState: err = %v, want ErrNoSuchServer naming web/nosuch", err)
	}
	if _, err := wrongServer.Weights(ctx); !errors.Is(err, ErrNoSuchServer) || !strings.Contains(err.Error(), "web/nosuch") {
		t.Fatalf("Weights: err = %v, want ErrNoSuchServer naming web/nosuch", err)
	}

	wrongBackend := newDriver(t, Config{Socket: l.proc.SocketPath(), Backend: "api", Servers: map[string]string{"blue": "blue"}})
	if _, err := wrongBackend.Weights(ctx); !errors.Is(err, ErrNoSuchBackend) {
		t.Fatalf("Weights: err = %v, want ErrNoSuchBackend", err)
	}
	if _, err := wrongBackend.Stats(ctx); !errors.Is(err, ErrNoSuchBackend) {
		t.Fatalf("Stats: err = %v, want ErrNoSuchBackend", err)
	}
	if err := wrongBackend.SetState(ctx, "blue", StateDrain); !errors.Is(err, ErrNoSuchBackend) {
		t.Fatalf("SetState: err = %v, want ErrNoSuchBackend", err)
	}
}

func stat(t *testing.T, d *Driver, backend string) ServerStat {
	t.Helper()
	stats, err := d.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stats {
		if s.Backend == backend {
			return s
		}
	}
	t.Fatalf("Stats has no %s: %+v", backend, stats)
	return ServerStat{}
}

func TestLive_StateAndStats(t *testing.T) {
	l := startLive(t)
	ctx := context.Background()

	l.expectAll(t, 7, "blue")
	if s := stat(t, l.drv, "blue"); s.Stot != 7 || s.Hrsp2xx != 7 || s.Weight != 100 || s.Server != "blue" {
		t.Fatalf("blue stat after 7 requests = %+v", s)
	}

	// ServerState reads back what SetState set (a state fault reverts to
	// it): ready, maint, drain.
	serverState := func(want string) {
		t.Helper()
		if got, err := l.drv.ServerState(ctx, "green"); err != nil || got != want {
			t.Fatalf("ServerState(green) = %q, %v; want %q", got, err, want)
		}
	}
	serverState(StateReady)
	if err := l.drv.SetState(ctx, "green", StateMaint); err != nil {
		t.Fatal(err)
	}
	if s := stat(t, l.drv, "green"); s.Status != "MAINT" {
		t.Fatalf("green status = %q, want MAINT", s.Status)
	}
	serverState(StateMaint)
	// Weight > 0 on a server in maintenance brings it back.
	if err := l.drv.Apply(ctx, map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatal(err)
	}
	if s := stat(t, l.drv, "green"); s.Status == "MAINT" || s.Weight != 100 {
		t.Fatalf("green after Apply = %+v, want out of MAINT at weight 100", s)
	}
	l.expectAll(t, 5, "green")

	// Weight 0 leaves blue up, not in maintenance.
	if s := stat(t, l.drv, "blue"); s.Status == "MAINT" || s.Status == "DRAIN" || s.Weight != 0 {
		t.Fatalf("blue at weight 0 = %+v, want up with weight 0", s)
	}

	if err := l.drv.SetState(ctx, "green", StateDrain); err != nil {
		t.Fatal(err)
	}
	if s := stat(t, l.drv, "green"); s.Status != "DRAIN" {
		t.Fatalf("green status = %q, want DRAIN", s.Status)
	}
	serverState(StateDrain)
	if err := l.drv.SetState(ctx, "green", StateReady); err != nil {
		t.Fatal(err)
	}
	serverState(StateReady)
	if _, err := l.drv.ServerState(ctx, "purple"); !errors.Is(err, driver.ErrUnknownBackend) {
		t.Fatalf("ServerState(purple): %v, want ErrUnknownBackend", err)
	}
	l.expectAll(t, 3, "green")
}

// loadResult counts the requests of switchUnderLoad.
type loadResult struct {
	ok, failed int64
	firstErr   string
	served     map[string]bool // which backends answered
}

// switchUnderLoad has clients send requests back to back while it calls
// switchTo(i) for i in 0..switches-1, letting at least one request per
// client through between switches so every switch happens under load.
func switchUnderLoad(t *testing.T, l *live, switches int, switchTo func(i int) error) loadResult {
	t.Helper()
	const clients = 4
	var (
		ok, failed atomic.Int64
		mu         sync.Mutex
		res        = loadResult{served: map[string]bool{}}
		stop       = make(chan struct{})
		wg         sync.WaitGroup
	)
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := l.get()
				mu.Lock()
				if err != nil {
					failed.Add(1)
					if res.firstErr == "" {
						res.firstErr = err.Error()
					}
				} else {
					ok.Add(1)
					res.served[got] = true
				}
				mu.Unlock()
			}
		}()
	}
	halt := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer halt()

	total := func() int64 { return ok.Load() + failed.Load() }
	for i := range switches {
		before := total()
		if err := switchTo(i); err != nil {
			t.Fatalf("switch %d: %v", i, err)
		}
		waitFor(t, 10*time.Second, func() bool { return total() >= before+clients })
	}
	halt()
	res.ok, res.failed = ok.Load(), failed.Load()
	return res
}

// TestLive_SwitchUnderLoadDropsNothing switches blue/green back and forth
// while clients send requests without pause: with the incoming server
// raised before the outgoing one is lowered, not one request may fail.
func TestLive_SwitchUnderLoadDropsNothing(t *testing.T) {
	l := startLive(t)
	targets := []map[string]uint32{
		{"blue": 0, "green": 100},
		{"blue": 100, "green": 0},
	}
	res := switchUnderLoad(t, l, 100, func(i int) error {
		return l.drv.Apply(context.Background(), targets[i%2])
	})
	t.Logf("raise first: 100 switches, %d requests served, %d failed", res.ok, res.failed)
	if res.failed != 0 {
		t.Fatalf("%d of %d requests failed during switches; first: %s", res.failed, res.failed+res.ok, res.firstErr)
	}
	if !res.served["blue"] || !res.served["green"] {
		t.Fatalf("served %v, want blue and green", res.served)
	}
}

// TestLive_LowerFirstDropsRequests shows the load test can see what the
// raise-first order prevents: lowering the outgoing server first leaves a
// moment with every weight at 0, and HAProxy answers 503 to what arrives
// then. (Measured on HAProxy 2.6: about a quarter of requests fail.)
func TestLive_LowerFirstDropsRequests(t *testing.T) {
	l := startLive(t)
	servers := []string{"blue", "green"}
	res := switchUnderLoad(t, l, 100, func(i int) error {
		out, in := servers[i%2], servers[(i+1)%2]
		if err := l.drv.api.set(context.Background(), "set weight web/"+out+" 0"); err != nil {
			return err
		}
		return l.drv.api.set(context.Background(), "set weight web/"+in+" 100")
	})
	t.Logf("lower first: 100 switches, %d requests served, %d failed (first: %s)", res.ok, res.failed, res.firstErr)
	if res.failed == 0 {
		t.Fatalf("no request failed with lower-first switches; the load test cannot detect dropped requests")
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v", timeout)
		}
		<-tick.C
	}
}

// TestLive_RedispatchedConnectFailuresAreErrorsOfTheServer: with another
// server in rotation, HAProxy ("option redispatch") sends a request whose
// connection the server refused to the other server at once, counting it
// in the refusing server's wredis only, neither in its econ nor in any of
// its responses. A green that refuses every connection must still show
// failed requests, not a quiet backend.
func TestLive_RedispatchedConnectFailuresAreErrorsOfTheServer(t *testing.T) {
	blue := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "blue") }))
	t.Cleanup(blue.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusing := ln.Addr().String() // nothing listens once closed
	ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	proc, err := haproxyproc.Start(ctx, haproxyproc.Config{
		Dir: t.TempDir(), FrontendAddr: "127.0.0.1:0", Backend: "web",
		Servers: []haproxyproc.Server{
			{Name: "blue", Addr: blue.Listener.Addr().String(), Weight: 50},
			{Name: "green", Addr: refusing, Weight: 50},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := proc.Stop(); err != nil {
			t.Error(err)
		}
	})
	l := &live{
		proc: proc, drv: newDriver(t, blueGreen(proc.SocketPath())),
		frontend: "http://" + proc.FrontendAddr() + "/",
		client:   &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
	}
	const n = 20
	l.expectAll(t, n, "blue") // every request green refused was redispatched to blue

	counters, err := l.drv.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]driver.BackendCounters{}
	for _, c := range counters {
		byName[c.Backend] = c
	}
	g, b := byName["green"], byName["blue"]
	st := stat(t, l.drv, "green")
	t.Logf("green: %+v; blue: %+v; green stat: econ %d wretr %d wredis %d", g, b, st.Econ, st.Wretr, st.Wredis)
	if st.Wredis == 0 {
		t.Fatalf("HAProxy redispatched nothing from green (%+v); the test does not test what it says", st)
	}
	if g.Errors == 0 || g.Errors != g.Requests {
		t.Fatalf("green refused every connection HAProxy tried (%d redispatched), but its counters say %d requests, %d errors",
			st.Wredis, g.Requests, g.Errors)
	}
	if b.Requests != n || b.Errors != 0 {
		t.Fatalf("blue answered all %d requests: counters say %d requests, %d errors", n, b.Requests, b.Errors)
	}
}

// TestLive_WatchersOfOneSocketLeaveRoomForCommands: HAProxy's admin socket
// takes 10 connections at a time unless its "stats socket" line says
// otherwise. An agent with a service per backend of one HAProxy watches
// that socket once per service; held connections must not take every slot,
// or no command gets an answer. Every watcher still hears HAProxy go away
// and come back.
func TestLive_WatchersOfOneSocketLeaveRoomForCommands(t *testing.T) {
	const services = 12
	l := startLive(t)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	ups := make([]atomic.Int32, services)
	downs := make([]atomic.Int32, services)
	for i := range services {
		d := newDriver(t, blueGreen(l.proc.SocketPath()))
		wg.Go(func() {
			d.Watch(ctx, func(up bool) {
				if up {
					ups[i].Add(1)
				} else {
					downs[i].Add(1)
				}
			})
		})
	}
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("waited 10s for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitUntil("every watcher up", func() bool {
		for i := range ups {
			if ups[i].Load() == 0 {
				return false
			}
		}
		return true
	})
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	d := newDriver(t, Config{Socket: l.proc.SocketPath(), Backend: "web", Servers: map[string]string{"blue": "blue", "green": "green"}, Timeout: 3 * time.Second})
	if err := d.Apply(cctx, map[string]uint32{"blue": 0, "green": 100}); err != nil {
		t.Fatalf("Apply with %d services watching the socket: %v", services, err)
	}
	if _, err := d.Observe(cctx); err != nil {
		t.Fatalf("Observe with %d services watching the socket: %v", services, err)
	}

	if err := l.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	waitUntil("every watcher told HAProxy went away", func() bool {
		for i := range downs {
			if downs[i].Load() == 0 {
				return false
			}
		}
		return true
	})
	before := make([]int32, services)
	for i := range ups {
		before[i] = ups[i].Load()
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer rcancel()
	if err := l.proc.Restart(rctx); err != nil {
		t.Fatal(err)
	}
	waitUntil("every watcher told HAProxy is back", func() bool {
		for i := range ups {
			if ups[i].Load() == before[i] {
				return false
			}
		}
		return true
	})
}

// TestLive_ServerNamedInAnotherCaseIsPointedAt: HAProxy's server names are
// case-sensitive. A config naming "Green" where haproxy.cfg has "green" is
// refused with the servers the backend does have, the near miss named.
func TestLive_ServerNamedInAnotherCaseIsPointedAt(t *testing.T) {
	l := startLive(t)
	ctx := context.Background()
	d := newDriver(t, Config{Socket: l.proc.SocketPath(), Backend: "web", Servers: map[string]string{"blue": "blue", "green": "Green"}})
	_, obsErr := d.Observe(ctx)
	_, statErr := d.Stats(ctx)
	for name, err := range map[string]error{
		"Apply":   d.Apply(ctx, map[string]uint32{"green": 10}),
		"Observe": obsErr,
		"Stats":   statErr,
	} {
		if !errors.Is(err, ErrNoSuchServer) || !strings.Contains(err.Error(), "web/Green") ||
			!strings.Contains(err.Error(), "web has blue, green") || !strings.Contains(err.Error(), `did you mean "green"`) {
			t.Errorf("%s: err = %v, want ErrNoSuchServer naming web/Green, the servers web has, and the near miss", name, err)
		}
	}
}
