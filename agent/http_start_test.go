package agent

import (
	"net"
	"strings"
	"testing"
)

// An httpAddr the agent cannot listen on (another process holds the port)
// stops it before it drives its proxy or reads the bus: before, it applied
// the bus's documents first and then exited, and under a supervisor that
// restarts it, did so again and again.
func TestAgent_HTTPAddrInUseStopsItBeforeAnything(t *testing.T) {
	b := startBus(t)
	b.put(t, defaults(3, map[string]uint32{"blue": 0, "green": 100}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t, b.url)
	cfg.HTTPAddr = ln.Addr().String()
	drv := newFakeDriver()
	_, err = runAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	if err == nil || !strings.Contains(err.Error(), "httpAddr "+cfg.HTTPAddr) {
		t.Fatalf("Run = %v; want the listen error naming httpAddr %s", err, cfg.HTTPAddr)
	}
	if applies, attempts := drv.recorded(); len(applies) > 0 || attempts > 0 {
		t.Fatalf("the proxy was driven (%d applies, %d attempts: %v) by an agent that could not start", len(applies), attempts, applies)
	}
}
