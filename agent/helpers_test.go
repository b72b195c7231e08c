package agent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// waitFor polls cond until it returns nil or the deadline passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s: %v", timeout, what, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fakeDriver records every Apply in order and can be told to fail.
type fakeDriver struct {
	mu       sync.Mutex
	applies  []map[string]uint32 // successful applies, in order
	tried    []map[string]uint32 // every Apply call, failed or not
	attempts int                 // len(tried)
	weightsN int                 // fail this many more Weights calls
	weights  map[string]uint32   // what the "proxy" has now
	failN    int                 // fail this many more Apply calls
	failErr  error
	closes   int
}

var _ driver.Driver = (*fakeDriver)(nil)

func newFakeDriver() *fakeDriver {
	return &fakeDriver{weights: map[string]uint32{}}
}

func (f *fakeDriver) Apply(_ context.Context, w map[string]uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	f.tried = append(f.tried, maps.Clone(w))
	if f.failN > 0 {
		f.failN--
		return f.failErr
	}
	f.applies = append(f.applies, maps.Clone(w))
	maps.Copy(f.weights, w)
	return nil
}

func (f *fakeDriver) Weights(context.Context) (map[string]uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.weightsN > 0 {
		f.weightsN--
		return nil, errProxyDown
	}
	return maps.Clone(f.weights), nil
}

func (f *fakeDriver) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closes++
	return nil
}

// failNext makes the next n Apply calls return err.
func (f *fakeDriver) failNext(n int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failN, f.failErr = n, err
}

// failWeights makes the next n Weights calls fail as if the proxy were down.
func (f *fakeDriver) failWeights(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.weightsN = n
}

// triedWeights reports whether Apply was ever called with w.
func (f *fakeDriver) triedWeights(w map[string]uint32) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.ContainsFunc(f.tried, func(t map[string]uint32) bool { return maps.Equal(t, w) })
}

// setWeights changes the proxy's weights behind the agent's back.
func (f *fakeDriver) setWeights(w map[string]uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.weights = maps.Clone(w)
}

func (f *fakeDriver) recorded() (applies []map[string]uint32, attempts int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.applies {
		applies = append(applies, maps.Clone(a))
	}
	return applies, f.attempts
}

// testBus is an embedded NATS server with the desired-state bucket.
type testBus struct {
	srv *server.Server
	url string
	nc  *nats.Conn
	kv  jetstream.KeyValue
}

func startBus(t *testing.T) *testBus {
	t.Helper()
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	b := &testBus{srv: srv, url: srv.ClientURL()}
	b.connect(t)
	return b
}

// connect (re)connects the test's own client and ensures the bucket.
func (b *testBus) connect(t *testing.T) {
	t.Helper()
	nc, err := nats.Connect(b.srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := bus.EnsureDesiredBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	b.nc, b.kv = nc, kv
}

// put writes ds to the bucket as the leader does.
func (b *testBus) put(t *testing.T, ds *sv1.DesiredState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := testPublisher.PutDesired(ctx, b.kv, ds, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// publishRaw publishes bytes on a service's key subject, bypassing
// PutDesired's fencing, as a misbehaving or deposed writer could.
func (b *testBus) publishRaw(t *testing.T, service string, body []byte, header nats.Header) {
	t.Helper()
	m := nats.NewMsg(bus.DesiredKeySubject(service))
	m.Data = body
	if header != nil {
		m.Header = header
	}
	if err := b.nc.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

// statuses subscribes to a node's status subject.
func (b *testBus) statuses(t *testing.T, node string) <-chan *sv1.AgentStatus {
	t.Helper()
	ch := make(chan *sv1.AgentStatus, 1024)
	sub, err := b.nc.Subscribe(bus.StatusSubject(node), func(m *nats.Msg) {
		var st sv1.AgentStatus
		if err := proto.Unmarshal(m.Data, &st); err != nil {
			t.Errorf("undecodable status: %v", err)
			return
		}
		select {
		case ch <- &st:
		default:
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

// waitStatus reads statuses until one satisfies match.
func waitStatus(t *testing.T, ch <-chan *sv1.AgentStatus, what string, match func(*sv1.AgentStatus) bool) *sv1.AgentStatus {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case st := <-ch:
			if match(st) {
				return st
			}
		case <-timeout:
			t.Fatalf("no status with %s within 10s", what)
		}
	}
}

func serviceStatus(st *sv1.AgentStatus, service string) *sv1.ServiceStatus {
	for _, s := range st.GetServices() {
		if s.GetService() == service {
			return s
		}
	}
	return nil
}

// testConfig is a one-service config (web) for node edge-1 in region eu.
func testConfig(t *testing.T, natsURL string) *Config {
	t.Helper()
	return &Config{
		Node:      "edge-1",
		Labels:    map[string]string{"region": "eu"},
		NATS:      natsURL,
		StateDir:  t.TempDir(),
		Heartbeat: maxHeartbeat,
		Resync:    time.Hour,
		Trust:     testTrust(),
		Services: map[string]ServiceConfig{
			"web": {Proxy: &haproxy.Section{
				Socket:  "/nonexistent/admin.sock",
				Backend: "web",
				Servers: map[string]string{"blue": "blue", "green": "green"},
			}},
		},
	}
}

// runningAgent is an Agent running in the background of a test.
type runningAgent struct {
	*Agent
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// startAgent runs an agent with the given fake drivers (by service) and waits
// until it is ready. The agent stops at the end of the test.
func startAgent(t *testing.T, cfg *Config, drivers map[string]*fakeDriver) *runningAgent {
	t.Helper()
	ra, err := runAgent(t, cfg, drivers)
	if err != nil {
		t.Fatal(err)
	}
	return ra
}

// runAgent starts an agent and returns Run's error if it fails to start.
func runAgent(t *testing.T, cfg *Config, drivers map[string]*fakeDriver) (*runningAgent, error) {
	t.Helper()
	return runAgentWith(t, cfg, func(service string, _ ServiceConfig) (driver.Driver, error) {
		d, ok := drivers[service]
		if !ok {
			return nil, fmt.Errorf("no fake driver for %s", service)
		}
		return d, nil
	})
}

// runAgentWith starts an agent with any driver factory.
func runAgentWith(t *testing.T, cfg *Config, factory DriverFactory) (*runningAgent, error) {
	t.Helper()
	return runAgentLogging(t, cfg, factory, t.Output())
}

// runAgentLogging is runAgentWith logging to log.
func runAgentLogging(t *testing.T, cfg *Config, factory DriverFactory, log io.Writer) (*runningAgent, error) {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := New(cfg, Options{
		Logger:        slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelInfo})),
		Registerer:    reg,
		DriverFactory: factory,
		Version:       "test",
		RetryMin:      10 * time.Millisecond,
		RetryMax:      100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{Agent: a, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { ra.done <- a.Run(ctx) }()
	select {
	case <-a.Ready():
	case err := <-ra.done:
		cancel()
		return nil, err
	case <-time.After(15 * time.Second):
		cancel()
		t.Fatal("agent not ready within 15s")
	}
	t.Cleanup(func() { ra.stop(t) })
	return ra, nil
}

// stop cancels the agent and waits for Run to return.
func (ra *runningAgent) stop(t *testing.T) {
	t.Helper()
	ra.once.Do(func() {
		ra.cancel()
		select {
		case err := <-ra.done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("Run did not return within 15s of cancel")
		}
	})
}

// metric returns the value of a counter or gauge series, 0 when absent.
func (ra *runningAgent) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := ra.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if got[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}

// waitMetric waits until a series reaches want.
func (ra *runningAgent) waitMetric(t *testing.T, want float64, name string, labels ...string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("%s%v = %v", name, labels, want), func() error {
		if got := ra.metric(t, name, labels...); got != want {
			return fmt.Errorf("got %v", got)
		}
		return nil
	})
}

// waitApplied waits until the agent has applied generation gen of service.
func (ra *runningAgent) waitApplied(t *testing.T, service string, gen uint64) map[string]uint32 {
	t.Helper()
	var weights map[string]uint32
	waitFor(t, 10*time.Second, fmt.Sprintf("%s generation %d applied", service, gen), func() error {
		var got uint64
		got, weights = ra.Applied(service)
		if got != gen {
			return fmt.Errorf("applied generation is %d", got)
		}
		return nil
	})
	return weights
}

// defaults is a document that gives every node the same weights.
func defaults(gen uint64, weights map[string]uint32) *sv1.DesiredState {
	return &sv1.DesiredState{Service: "web", Generation: gen, RolloutId: "r1", DefaultWeights: weights}
}

// mustMarshal seals ds with the test coordinator key, as the leader does.
func mustMarshal(t testing.TB, ds *sv1.DesiredState) []byte {
	t.Helper()
	b, err := testSigner.SealDesired(ds, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The test coordinator key: every test config trusts it. Its documents stay
// valid for years so that tests at a fake time can open them.
var (
	testKey       = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	testSigner    = mustSigner(testKey, 10*365*24*time.Hour)
	testRing, _   = bus.NewKeyring(testSigner.Public())
	testPublisher = &bus.Publisher{Signer: testSigner, Trusted: testRing}
	// strangerSigner is a key no test agent trusts.
	strangerSigner = mustSigner(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize)), time.Hour)
)

func mustSigner(key ed25519.PrivateKey, validity time.Duration) *bus.Signer {
	s, err := bus.NewSigner(key, validity)
	if err != nil {
		panic(err)
	}
	return s
}

// testTrust is the trust section of every test config.
func testTrust() TrustConfig {
	return TrustConfig{Keys: []string{bus.FormatPublicKey(testSigner.Public())}}
}

var errProxyDown = fmt.Errorf("dial admin socket: %w", driver.ErrUnavailable)

// hapSection is a service's HAProxy section.
func hapSection(svc ServiceConfig) *haproxy.Section { return svc.Proxy.(*haproxy.Section) }
