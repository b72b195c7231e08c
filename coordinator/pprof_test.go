package coordinator

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestPprof_AddressMustBeLoopback(t *testing.T) {
	for _, tc := range []struct {
		addr string
		ok   bool
	}{
		{"", true},
		{"127.0.0.1:6060", true},
		{"127.0.0.1:0", true},
		{"[::1]:6060", true},
		{"localhost:6060", true},
		{"0.0.0.0:6060", false},
		{":6060", false},
		{"10.0.0.5:6060", false},
		{"example.com:6060", false},
		{"127.0.0.1", false},
	} {
		err := checkPprofAddr(tc.addr)
		if (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok=%v", tc.addr, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--pprof-addr") {
			t.Errorf("%q: error %q does not name the flag", tc.addr, err)
		}
	}
	// A coordinator refuses to start on such an address.
	_, url := startNATS(t)
	_, err := New(Config{NodeID: "c1", DataDir: filepath.Join(t.TempDir(), "data"), RaftAddr: "127.0.0.1:0",
		NATSURL: url, BootstrapExpect: 1, Signing: testSigning, PprofAddr: "0.0.0.0:0"})
	if err == nil || !strings.Contains(err.Error(), "--pprof-addr") {
		t.Fatalf("New with a public --pprof-addr: %v", err)
	}
}

// Off by default: the HTTP API has no /debug/pprof/; with --pprof-addr a
// listener of its own serves the profiles, and the API still has none.
func TestPprof_ServedOnlyOnItsOwnListener(t *testing.T) {
	_, url := startNATS(t)
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, pprofAddr := range []string{"", "127.0.0.1:0"} {
		reg := prometheus.NewRegistry()
		srv, err := New(Config{NodeID: "c1", DataDir: filepath.Join(t.TempDir(), "data"), RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0",
			NATSURL: url, BootstrapExpect: 1, Registerer: reg, Gatherer: reg, Signing: testSigning, PprofAddr: pprofAddr})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Run(ctx) }()
		if code, _ := get("http://" + srv.HTTPAddr() + "/debug/pprof/"); code != http.StatusNotFound && code != http.StatusUnauthorized {
			t.Errorf("pprof %q: the HTTP API answers /debug/pprof/ with %d", pprofAddr, code)
		}
		if pprofAddr == "" {
			if srv.PprofAddr() != "" {
				t.Errorf("off by default, but listening on %s", srv.PprofAddr())
			}
		} else {
			code, body := get("http://" + srv.PprofAddr() + "/debug/pprof/cmdline")
			if code != http.StatusOK || body == "" {
				t.Errorf("cmdline: %d %q", code, body)
			}
			code, body = get("http://" + srv.PprofAddr() + "/debug/pprof/heap?debug=1")
			if code != http.StatusOK || !strings.Contains(body, "heap profile") {
				t.Errorf("heap: %d %.80q", code, body)
			}
		}
		cancel()
		<-done
	}
}
