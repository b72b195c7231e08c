package agent

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/haproxyproc"
	"github.com/switchyard/switchyard/internal/sketch"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// testBackend is a tiny HTTP backend on 127.0.0.1 whose behaviour a test
// changes while it runs: it answers its name, after delay, and 503 for every
// errEvery-th request; /healthz answers 200 "ok" while healthy, else 500.
type testBackend struct {
	name     string
	srv      *httptest.Server
	delay    atomic.Int64 // nanoseconds
	errEvery atomic.Int64
	healthy  atomic.Bool
	requests atomic.Int64 // not counting /healthz, /login, /account
}

func startBackend(t testing.TB, name string) *testBackend {
	t.Helper()
	b := &testBackend{name: name}
	b.healthy.Store(true)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !b.healthy.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		io.WriteString(w, "ok")
	})
	// A two-step synthetic transaction: /login sets a cookie that /account
	// requires.
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, _ *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "session", Value: b.name})
		io.WriteString(w, "welcome")
	})
	mux.HandleFunc("/account", func(w http.ResponseWriter, r *http.Request) {
		if c, err := r.Cookie("session"); err != nil || c.Value != b.name || !b.healthy.Load() {
			http.Error(w, "no session", http.StatusUnauthorized)
			return
		}
		io.WriteString(w, "account of "+b.name)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		n := b.requests.Add(1)
		if d := b.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		if e := b.errEvery.Load(); e > 0 && n%e == 0 {
			http.Error(w, "injected", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, b.name)
	})
	b.srv = httptest.NewServer(mux)
	t.Cleanup(b.srv.Close)
	return b
}

func (b *testBackend) addr() string { return b.srv.Listener.Addr().String() }
func (b *testBackend) url() string  { return b.srv.URL }

// shortDir is a directory short enough for HAProxy's admin socket path
// (97 bytes), removed at the end of the test; t.TempDir() carries the test
// name and can be too deep.
func shortDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sya")
	if err != nil {
		t.Fatal(err)
	}
	if len(dir) > 60 {
		os.RemoveAll(dir)
		if dir, err = os.MkdirTemp("/tmp", "sya"); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// liveProxy is a real HAProxy fronting a blue and a green test backend.
type liveProxy struct {
	proc      *haproxyproc.Process
	cfg       haproxyproc.Config
	blue      *testBackend
	green     *testBackend
	frontend  string // http://127.0.0.1:port/
	logSocket string // "" when started without one
}

// startProxy starts HAProxy with blue at weight 100 and green at 0. With
// logs, it sends its request log to a socket the agent will create.
func startProxy(t testing.TB, logs bool) *liveProxy {
	t.Helper()
	dir := shortDir(t)
	blue, green := startBackend(t, "blue"), startBackend(t, "green")
	cfg := haproxyproc.Config{
		Dir:          filepath.Join(dir, "hap"),
		FrontendAddr: "127.0.0.1:0", // Start picks a free port
		Backend:      "web",
		Servers: []haproxyproc.Server{
			{Name: "blue", Addr: blue.addr(), Weight: 100},
			{Name: "green", Addr: green.addr(), Weight: 0},
		},
	}
	lp := &liveProxy{cfg: cfg, blue: blue, green: green}
	if logs {
		lp.logSocket = filepath.Join(dir, "log.sock")
		lp.cfg.LogSocket = lp.logSocket
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var err error
	lp.proc, err = haproxyproc.Start(ctx, lp.cfg)
	if err != nil {
		t.Fatal(err)
	}
	lp.frontend = "http://" + lp.proc.FrontendAddr() + "/"
	t.Cleanup(func() {
		if err := lp.proc.Stop(); err != nil {
			t.Error(err)
		}
	})
	return lp
}

// serviceConfig is the agent's view of this proxy.
func (lp *liveProxy) serviceConfig() ServiceConfig {
	return ServiceConfig{Proxy: &haproxy.Section{
		Socket:    lp.proc.SocketPath(),
		Backend:   "web",
		Servers:   map[string]string{"blue": "blue", "green": "green"},
		LogSocket: lp.logSocket,
	}}
}

// driver is a driver of its own, for the test to read HAProxy with.
func (lp *liveProxy) driver(t testing.TB) *haproxy.Driver {
	t.Helper()
	d, err := haproxyDriver("web", lp.serviceConfig())
	if err != nil {
		t.Fatal(err)
	}
	return d.(*haproxy.Driver)
}

// weights reads HAProxy's weights.
func (lp *liveProxy) weights(t testing.TB) map[string]uint32 {
	t.Helper()
	w, err := lp.driver(t).Weights(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// waitWeights polls HAProxy until it has want.
func (lp *liveProxy) waitWeights(t *testing.T, timeout time.Duration, want map[string]uint32) {
	t.Helper()
	d := lp.driver(t)
	waitFor(t, timeout, fmt.Sprintf("HAProxy weights %v", want), func() error {
		got, err := d.Weights(context.Background())
		if err != nil {
			return err
		}
		if !maps.Equal(got, want) {
			return fmt.Errorf("HAProxy has %v", got)
		}
		return nil
	})
}

// haproxyDriver is a runtime API driver of its own, for the test to read HAProxy with.
func haproxyDriver(_ string, svc ServiceConfig) (driver.Driver, error) {
	return haproxy.New(haproxy.Config{
		Socket:  hapSection(svc).Socket,
		Backend: hapSection(svc).Backend,
		Servers: hapSection(svc).Servers,
		Timeout: hapSection(svc).Timeout,
	})
}

// liveConfig is an agent config for node edge-1 (region eu) driving lp.
func liveConfig(t *testing.T, natsURL string, lp *liveProxy) *Config {
	t.Helper()
	return &Config{
		Node:              "edge-1",
		Labels:            map[string]string{"region": "eu"},
		NATS:              natsURL,
		StateDir:          t.TempDir(),
		Heartbeat:         maxHeartbeat,
		Resync:            time.Hour,
		Trust:             testTrust(),
		TelemetryInterval: 250 * time.Millisecond,
		Services:          map[string]ServiceConfig{"web": lp.serviceConfig()},
	}
}

func startLiveAgent(t *testing.T, cfg *Config) *runningAgent {
	t.Helper()
	ra, err := runAgentWith(t, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ra
}

// loadResult counts the answers a load generator got.
type loadResult struct {
	mu       sync.Mutex
	byBody   map[string]int // 200 answers by backend name
	byStatus map[int]int
	failures int // no HTTP answer at all
	// latencies of the answered requests, as the clients saw them.
	latencies []time.Duration
}

// quantile is the q-quantile of the latencies the clients saw.
func (r *loadResult) quantile(q float64) time.Duration {
	r.mu.Lock()
	l := slices.Clone(r.latencies)
	r.mu.Unlock()
	if len(l) == 0 {
		return 0
	}
	slices.Sort(l)
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

func (r *loadResult) snapshot() (byBody map[string]int, byStatus map[int]int, failures int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.byBody), maps.Clone(r.byStatus), r.failures
}

// load drives requests through HAProxy with keep-alive clients.
type load struct {
	res    *loadResult
	cancel context.CancelFunc
	done   chan struct{}
	sent   atomic.Int64
}

// startLoad runs workers that make requests to url until total requests
// were made (0: until stopped). It stops at the end of the test at the
// latest.
func startLoad(t testing.TB, url string, workers int, total int64) *load {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{res: &loadResult{byBody: map[string]int{}, byStatus: map[int]int{}}, cancel: cancel, done: make(chan struct{})}
	tr := &http.Transport{MaxIdleConnsPerHost: workers, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				if total > 0 && l.sent.Add(1) > total {
					return
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				began := time.Now()
				resp, err := client.Do(req)
				l.res.mu.Lock()
				if err != nil {
					if ctx.Err() == nil {
						l.res.failures++
					}
					l.res.mu.Unlock()
					continue
				}
				l.res.mu.Unlock()
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				took := time.Since(began)
				l.res.mu.Lock()
				l.res.latencies = append(l.res.latencies, took)
				l.res.byStatus[resp.StatusCode]++
				if resp.StatusCode == http.StatusOK {
					l.res.byBody[string(body)]++
				}
				l.res.mu.Unlock()
			}
		})
	}
	go func() {
		wg.Wait()
		tr.CloseIdleConnections()
		close(l.done)
	}()
	t.Cleanup(l.stop)
	return l
}

// wait waits for a bounded load to finish.
func (l *load) wait(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-l.done:
	case <-time.After(timeout):
		t.Fatalf("load did not finish within %s", timeout)
	}
}

func (l *load) stop() {
	l.cancel()
	<-l.done
}

// telemetry subscribes to a service's HealthReports from edge-1.
func (b *testBus) telemetry(t *testing.T, service string) <-chan *sv1.HealthReport {
	t.Helper()
	ch := make(chan *sv1.HealthReport, 4096)
	sub, err := b.nc.Subscribe(bus.TelemetrySubject(service, "edge-1"), func(m *nats.Msg) {
		var r sv1.HealthReport
		if err := proto.Unmarshal(m.Data, &r); err != nil {
			t.Errorf("undecodable health report: %v", err)
			return
		}
		select {
		case ch <- &r:
		default:
			t.Errorf("test fell behind on health reports")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := b.nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	return ch
}

// backendHealth returns a report's entry for backend.
func backendHealth(r *sv1.HealthReport, backend string) *sv1.BackendHealth {
	for _, b := range r.GetBackends() {
		if b.GetBackend() == backend {
			return b
		}
	}
	return nil
}

// trafficTotals sums a backend's real traffic over reports, merging the
// latency sketches as a coordinator would.
type trafficTotals struct {
	requests, errors uint64
	latency          *sketch.Sketch
	maxConns         uint32
	reports          int
}

func (tt *trafficTotals) add(t *testing.T, r *sv1.HealthReport, backend string) {
	t.Helper()
	if tt.latency == nil {
		tt.latency = sketch.New()
	}
	tt.reports++
	bh := backendHealth(r, backend)
	if bh == nil {
		return
	}
	tt.requests += bh.GetRequests()
	tt.errors += bh.GetErrors()
	tt.maxConns = max(tt.maxConns, bh.GetCurrentConnections())
	if l := bh.GetLatency(); l != nil {
		// Requests are whole: their bins go out in the compact form.
		if len(l.GetCounts()) > 0 {
			t.Fatalf("report carries %d latency bins as doubles, want whole_counts", len(l.GetCounts()))
		}
		s, err := sketch.FromProto(l)
		if err != nil {
			t.Fatalf("report carries an invalid sketch: %v", err)
		}
		tt.latency.Merge(s)
	}
}

// stopServer shuts the test bus's server down (and the test's client) and
// returns its port, so that startServer can bring it back with the same
// store: the bucket's content survives.
func (b *testBus) stopServer() (port int) {
	port = b.srv.Addr().(*net.TCPAddr).Port
	b.nc.Close()
	b.srv.Shutdown()
	b.srv.WaitForShutdown()
	return port
}

// startServer starts a server on port (0: any) with storeDir and connects
// the test's client.
func (b *testBus) startServer(t *testing.T, storeDir string, port int) {
	t.Helper()
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: storeDir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	b.srv, b.url = srv, srv.ClientURL()
	b.connect(t)
}

// startBusAt is startBus with a store directory the test keeps, so that the
// server can be restarted with its content.
func startBusAt(t *testing.T, storeDir string) *testBus {
	t.Helper()
	b := &testBus{}
	b.startServer(t, storeDir, 0)
	return b
}

// progressing is a document of rollout r1, in progress, whose one wave takes
// every node in region eu.
func progressing(gen uint64, weights map[string]uint32) *sv1.DesiredState {
	return &sv1.DesiredState{
		Service: "web", Generation: gen, RolloutId: "r1", Phase: sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING,
		Waves: []*sv1.WaveWeights{{
			Index: 0, Name: "eu", Selector: map[string]string{"region": "eu"},
			BasisPoints: 10000, Weights: weights,
		}},
	}
}
