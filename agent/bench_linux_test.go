//go:build linux

package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/haproxyproc"
)

// benchHelperEnv makes the test binary a load helper (see TestMain): the
// backends, NATS and the load generator run in that second process so that
// the benchmark process's CPU and memory are the agent's alone. HAProxy is a
// child process and is not counted either.
const benchHelperEnv = "SWITCHYARD_AGENT_BENCH_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(benchHelperEnv) == "1" {
		os.Exit(runBenchHelper())
	}
	if os.Getenv(crashHelperEnv) != "" {
		os.Exit(runCrashHelper())
	}
	os.Exit(m.Run())
}

// benchHelperAddrs is what the helper prints on its first line.
type benchHelperAddrs struct {
	NATS  string `json:"nats"`
	Blue  string `json:"blue"`
	Green string `json:"green"`
}

// runBenchHelper serves two backends and NATS, then runs the load each
// "load <url> <rps> <seconds>" line on stdin asks for, answering
// "done <requests> <failures> <seconds>". It exits when stdin closes.
func runBenchHelper() int {
	dir, err := os.MkdirTemp("", "sybench")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer ns.Shutdown()
	backend := func(name string) (string, func()) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, name)
		})}
		go srv.Serve(ln)
		return ln.Addr().String(), func() { srv.Close() }
	}
	blue, stopBlue := backend("blue")
	defer stopBlue()
	green, stopGreen := backend("green")
	defer stopGreen()
	out := bufio.NewWriter(os.Stdout)
	json.NewEncoder(out).Encode(benchHelperAddrs{NATS: ns.ClientURL(), Blue: blue, Green: green})
	out.Flush()

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 4 || f[0] != "load" {
			fmt.Fprintf(os.Stderr, "bench helper: bad command %q\n", in.Text())
			return 1
		}
		rps, _ := strconv.Atoi(f[2])
		secs, _ := strconv.ParseFloat(f[3], 64)
		n, failed, took := paceLoad(f[1], rps, time.Duration(secs*float64(time.Second)))
		fmt.Fprintf(out, "done %d %d %f\n", n, failed, took.Seconds())
		out.Flush()
	}
	return 0
}

// paceLoad makes rps requests per second to url for d with keep-alive
// clients, each worker on its own schedule; a worker that falls behind
// catches up without bursting past the total.
func paceLoad(url string, rps int, d time.Duration) (n, failed int64, took time.Duration) {
	const workers = 32
	total := int64(float64(rps) * d.Seconds())
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	interval := time.Duration(float64(time.Second) * workers / float64(rps))
	start := time.Now()
	var sent, fails atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			next := start.Add(time.Duration(w) * interval / workers)
			for sent.Add(1) <= total {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				next = next.Add(interval)
				resp, err := client.Get(url)
				if err != nil {
					fails.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					fails.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return total, fails.Load(), time.Since(start)
}

// benchHelper is the running helper process.
type benchHelper struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	addrs benchHelperAddrs
}

func startBenchHelper(b *testing.B) *benchHelper {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), benchHelperEnv+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	h := &benchHelper{cmd: cmd, in: in, out: bufio.NewScanner(stdout)}
	b.Cleanup(func() {
		in.Close() // the helper exits when its stdin closes
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	if !h.out.Scan() {
		b.Fatalf("bench helper said nothing: %v", h.out.Err())
	}
	if err := json.Unmarshal(h.out.Bytes(), &h.addrs); err != nil {
		b.Fatalf("bench helper: %q: %v", h.out.Text(), err)
	}
	return h
}

// load runs rps requests per second for d through url and returns what the
// helper measured.
func (h *benchHelper) load(b *testing.B, url string, rps int, d time.Duration) (n, failed int64, took time.Duration) {
	b.Helper()
	fmt.Fprintf(h.in, "load %s %d %f\n", url, rps, d.Seconds())
	if !h.out.Scan() {
		b.Fatalf("bench helper: no answer: %v", h.out.Err())
	}
	var secs float64
	if _, err := fmt.Sscanf(h.out.Text(), "done %d %d %f", &n, &failed, &secs); err != nil {
		b.Fatalf("bench helper: %q: %v", h.out.Text(), err)
	}
	return n, failed, time.Duration(secs * float64(time.Second))
}

// processUsage is this process's CPU time and resident memory.
type processUsage struct {
	cpu    time.Duration
	rssKiB int64
	hwmKiB int64
}

func usage(b *testing.B) processUsage {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	u := processUsage{cpu: time.Duration(ru.Utime.Nano() + ru.Stime.Nano())}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			u.rssKiB = kib
		case "VmHWM":
			u.hwmKiB = kib
		}
	}
	return u
}

// BenchmarkAgent_ResourceUse measures the agent's own CPU and memory, idle
// and while ~5,000 requests per second go through its HAProxy with the
// request log on. It runs the scenario once, whatever b.N, and reports:
//
//	idle_cpu_ms/s, load_cpu_ms/s  CPU time of the agent process per second
//	idle_rss_MB, load_rss_MB      resident memory at the end of each phase
//	peak_rss_MB                   high-water mark
//	achieved_req/s                what the helper managed on this machine
//	log_lines/s                   request log lines the agent counted
//	dropped_lines                 lines HAProxy could not deliver
func BenchmarkAgent_ResourceUse(b *testing.B) {
	const (
		targetRPS = 5000
		idleFor   = 5 * time.Second
		loadFor   = 10 * time.Second
	)
	h := startBenchHelper(b)

	dir, err := os.MkdirTemp("", "syb")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	logSocket := filepath.Join(dir, "log.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	proc, err := haproxyproc.Start(ctx, haproxyproc.Config{
		Dir:          filepath.Join(dir, "hap"),
		FrontendAddr: "127.0.0.1:0",
		Backend:      "web",
		Servers: []haproxyproc.Server{
			{Name: "blue", Addr: h.addrs.Blue, Weight: 100},
			{Name: "green", Addr: h.addrs.Green, Weight: 0},
		},
		LogSocket: logSocket,
	})
	cancel()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proc.Stop() })

	cfg := &Config{
		Node:              "edge-1",
		Labels:            map[string]string{"region": "eu"},
		NATS:              h.addrs.NATS,
		StateDir:          filepath.Join(dir, "state"),
		TelemetryInterval: time.Second,
		Trust:             testTrust(),
		Services: map[string]ServiceConfig{"web": {Proxy: &haproxy.Section{
			Socket: proc.SocketPath(), Backend: "web",
			Servers:   map[string]string{"blue": "blue", "green": "green"},
			LogSocket: logSocket,
		}}},
	}
	reg := prometheus.NewRegistry()
	a, err := New(cfg, Options{Logger: slog.New(slog.DiscardHandler), Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	b.Cleanup(func() {
		acancel()
		<-done
	})
	select {
	case <-a.Ready():
	case err := <-done:
		b.Fatal(err)
	case <-time.After(15 * time.Second):
		b.Fatal("agent not ready")
	}
	counted := func() float64 {
		mfs, _ := reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() != "switchyard_agent_request_log_lines_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetValue() == haproxy.LogCounted {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
		return 0
	}
	dropped := func() uint64 {
		n, err := haproxyDroppedLogs(proc.SocketPath())
		if err != nil {
			b.Fatal(err)
		}
		return n
	}

	b.ResetTimer()
	for range b.N {
		// Let start-up settle, then measure an idle agent.
		time.Sleep(time.Second)
		u0, t0 := usage(b), time.Now()
		time.Sleep(idleFor)
		u1, t1 := usage(b), time.Now()

		lines0, drop0 := counted(), dropped()
		n, failed, took := h.load(b, "http://"+proc.FrontendAddr()+"/", targetRPS, loadFor)
		u2, t2 := usage(b), time.Now()
		// The last lines are still on their way; give them a telemetry window.
		time.Sleep(cfg.TelemetryInterval)
		lines, drops := counted()-lines0, dropped()-drop0

		b.ReportMetric(float64((u1.cpu-u0.cpu).Milliseconds())/t1.Sub(t0).Seconds(), "idle_cpu_ms/s")
		b.ReportMetric(float64(u1.rssKiB)/1024, "idle_rss_MB")
		b.ReportMetric(float64((u2.cpu-u1.cpu).Milliseconds())/t2.Sub(t1).Seconds(), "load_cpu_ms/s")
		b.ReportMetric(float64(u2.rssKiB)/1024, "load_rss_MB")
		b.ReportMetric(float64(u2.hwmKiB)/1024, "peak_rss_MB")
		b.ReportMetric(float64(n)/took.Seconds(), "achieved_req/s")
		b.ReportMetric(lines/took.Seconds(), "log_lines/s")
		b.ReportMetric(float64(drops), "dropped_lines")
		if failed > 0 {
			b.Logf("%d of %d requests failed", failed, n)
		}
	}
}

// haproxyDroppedLogs reads HAProxy's DroppedLogs counter.
func haproxyDroppedLogs(socket string) (uint64, error) {
	d, err := haproxy.New(haproxy.Config{Socket: socket, Backend: "web", Servers: map[string]string{"blue": "blue"}})
	if err != nil {
		return 0, err
	}
	return d.DroppedLogs(context.Background())
}

// BenchmarkRequestLog_SocketToWindow measures the agent's path from the
// log socket to the per-backend window: datagrams written to a real unix
// socket, read, parsed and counted into the latency sketch.
func BenchmarkRequestLog_SocketToWindow(b *testing.B) {
	dir, err := os.MkdirTemp("", "sylog")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "log.sock")
	ln, err := haproxy.ListenLog(path)
	if err != nil {
		b.Fatal(err)
	}
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	sink := haproxy.NewLogSink(ln, m.logLines, slog.New(slog.DiscardHandler))
	win := haproxy.NewRequestWindow(map[string]string{"blue": "blue", "green": "green"})
	sink.Route("web", win)
	var seen atomic.Int64
	served := make(chan struct{})
	go func() {
		defer close(served)
		ln.Serve(func(line []byte) {
			sink.Handle(line)
			seen.Add(1)
		})
	}()
	conn, err := net.Dial("unixgram", path)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	lines := [][]byte{
		[]byte("backend=web server=green status=200 tt=51 ta=51 tr=50 tw=0 tc=0 bytes=130 term=----\n"),
		[]byte("backend=web server=blue status=200 tt=3 ta=2 tr=1 tw=0 tc=0 bytes=128 term=----\n"),
		[]byte("backend=web server=green status=503 tt=50 ta=50 tr=50 tw=0 tc=0 bytes=99 term=----\n"),
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		// A blocking sender: the kernel makes it wait for room instead of
		// dropping, so every line is counted.
		if _, err := conn.Write(lines[i%len(lines)]); err != nil {
			b.Fatal(err)
		}
	}
	for seen.Load() < int64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lines/s")
	ln.Close()
	<-served
	var total uint64
	for _, bw := range win.Take() {
		total += bw.Requests
	}
	if total != uint64(b.N) {
		b.Fatalf("window counted %d requests of %d lines", total, b.N)
	}
}
