package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/state"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/internal/haproxyproc"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// drillsKV ensures the drills bucket on the test bus, as the leader does.
func (b *testBus) drillsKV(t *testing.T) jetstream.KeyValue {
	t.Helper()
	js, err := jetstream.New(b.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := bus.EnsureDrillsBucket(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// putDrill writes a drill document as the leader does, fenced.
func (b *testBus) putDrill(t *testing.T, doc *sv1.DrillDocument) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := testPublisher.PutDrill(ctx, b.drillsKV(t), doc, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// drillDoc is a running drill of service web targeting edge-1 from start
// for d.
func drillDoc(name string, gen uint64, fault *sv1.Fault, start time.Time, d time.Duration) *sv1.DrillDocument {
	sp := &sv1.DrillSpec{
		Name: name, Service: "web", Selector: map[string]string{"region": "eu"},
		MaxNodes: 1, MaxBasisPoints: 10000, Duration: durationpb.New(d), Fault: fault,
	}
	chaos.DefaultDrill(sp)
	return &sv1.DrillDocument{
		Drill: name, Generation: gen, Spec: sp, Targets: []string{"edge-1"},
		StartAt: timestamppb.New(start), EndAt: timestamppb.New(start.Add(d)),
	}
}

func httpFault(f *sv1.HTTPFault) *sv1.Fault { return &sv1.Fault{Kind: &sv1.Fault_Http{Http: f}} }
func tcpFault(f *sv1.TCPFault) *sv1.Fault   { return &sv1.Fault{Kind: &sv1.Fault_Tcp{Tcp: f}} }
func stateFaultOf(backend, st string) *sv1.Fault {
	return &sv1.Fault{Kind: &sv1.Fault_BackendState{BackendState: &sv1.BackendStateFault{Backend: backend, State: st}}}
}

// waitFault waits until the agent reports drill's fault active (want true)
// or gone, and returns when it saw that.
func (ra *runningAgent) waitFault(t *testing.T, timeout time.Duration, drill string, want bool) time.Time {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("fault of %s active=%v", drill, want), func() error {
		active := slices.ContainsFunc(ra.Status().GetFaults(), func(f *sv1.ActiveFault) bool { return f.GetDrill() == drill })
		if active != want {
			return fmt.Errorf("status faults %v", ra.Status().GetFaults())
		}
		return nil
	})
	return time.Now()
}

// sample is what a batch of requests through HAProxy got.
type sample struct {
	n         int
	byStatus  map[int]int
	byBody    map[string]int // 200 answers
	failures  int            // no HTTP answer
	latencies []time.Duration
	start     time.Time
	end       time.Time
}

func (s *sample) share(status int) float64 { return float64(s.byStatus[status]) / float64(s.n) }

// p50 is the median latency of the answered requests.
func (s *sample) p50() time.Duration {
	l := slices.Clone(s.latencies)
	if len(l) == 0 {
		return 0
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l[len(l)/2]
}

// fastest is the lowest latency of the answered requests.
func (s *sample) fastest() time.Duration {
	if len(s.latencies) == 0 {
		return 0
	}
	return slices.Min(s.latencies)
}

func (s *sample) String() string {
	return fmt.Sprintf("%d requests: statuses %v, bodies %v, %d failures, p50 %v", s.n, s.byStatus, s.byBody, s.failures, s.p50())
}

// measure makes n requests to url with workers clients, each request on a
// new connection (so HAProxy chooses a server connection afresh), and
// timeout per request.
func measure(t *testing.T, url string, n, workers int, timeout time.Duration) *sample {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true, DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	s := &sample{n: n, byStatus: map[int]int{}, byBody: map[string]int{}, start: time.Now()}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range workers {
		wg.Go(func() {
			for range next {
				began := time.Now()
				resp, err := client.Get(url)
				if err != nil {
					mu.Lock()
					s.failures++
					mu.Unlock()
					continue
				}
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				took := time.Since(began)
				mu.Lock()
				if rerr != nil {
					s.failures++
				} else {
					s.byStatus[resp.StatusCode]++
					if resp.StatusCode == http.StatusOK {
						s.byBody[string(body)]++
					}
					s.latencies = append(s.latencies, took)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	s.end = time.Now()
	return s
}

// journal reads the agent's fault journal from its state directory (the
// agent must be stopped).
func readJournal(t *testing.T, dir string) []state.FaultRecord {
	t.Helper()
	st, err := state.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	recs, damaged, err := st.LoadFaults()
	if err != nil {
		t.Fatal(err)
	}
	if len(damaged) > 0 {
		t.Fatalf("damaged journal records %+v", damaged)
	}
	return recs
}

// chaosProxy is a real HAProxy in front of a blue and a green backend that
// answer their name on / and 256 KiB on /big.
type chaosProxy struct {
	*liveProxy
	bigURL string
}

const bigBody = 256 << 10

func startChaosProxy(t *testing.T, greenAddr string) *chaosProxy {
	t.Helper()
	serve := func(name string) string {
		mux := http.NewServeMux()
		big := make([]byte, bigBody)
		mux.HandleFunc("/big", func(w http.ResponseWriter, _ *http.Request) { w.Write(big) })
		mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, name) })
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: mux}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().String()
	}
	if greenAddr == "" {
		greenAddr = serve("green")
	}
	dir := shortDir(t)
	cfg := haproxyproc.Config{
		Dir:          filepath.Join(dir, "hap"),
		FrontendAddr: "127.0.0.1:0",
		Backend:      "web",
		Servers: []haproxyproc.Server{
			{Name: "blue", Addr: serve("blue"), Weight: 100},
			{Name: "green", Addr: greenAddr, Weight: 0},
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
	lp := &liveProxy{proc: proc, cfg: cfg, frontend: "http://" + proc.FrontendAddr() + "/"}
	return &chaosProxy{liveProxy: lp, bigURL: lp.frontend + "big"}
}

// chaosAgent starts an agent on p for edge-1 with the given weights
// applied, and returns it with its config.
func chaosAgent(t *testing.T, b *testBus, p *chaosProxy, weights map[string]uint32) (*runningAgent, *Config) {
	t.Helper()
	cfg := liveConfig(t, b.url, p.liveProxy)
	cfg.Resync = 2 * time.Second
	ra := startLiveAgent(t, cfg)
	b.put(t, progressing(1, weights))
	ra.waitApplied(t, "web", 1)
	p.waitWeights(t, 5*time.Second, weights)
	return ra, cfg
}

// serverAddr reads where HAProxy sends a backend's traffic now.
func (lp *liveProxy) serverAddr(t *testing.T, backend string) string {
	t.Helper()
	addr, err := lp.driver(t).ServerAddr(context.Background(), backend)
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// pidFile writes pid to a file in dir.
func pidFile(t *testing.T, dir string, pid int) string {
	t.Helper()
	path := filepath.Join(dir, "green.pid")
	if err := os.WriteFile(path, []byte(fmt.Sprint(pid)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// publishDrillRaw publishes bytes on a drill's key subject, bypassing
// PutDrill's fencing, as a misbehaving or deposed writer could.
func (b *testBus) publishDrillRaw(t *testing.T, drill string, body []byte) {
	t.Helper()
	if err := b.nc.Publish(bus.DrillKeySubject(drill), body); err != nil {
		t.Fatal(err)
	}
	if err := b.nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}
