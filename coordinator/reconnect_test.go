package coordinator

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
)

// busLink is a TCP link between a coordinator and NATS that the test can
// cut and restore, as a network partition between them would.
type busLink struct {
	t      *testing.T
	addr   string // where the coordinator connects
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newBusLink(t *testing.T, natsURL string) *busLink {
	t.Helper()
	l := &busLink{t: t, addr: freeAddr(t), target: strings.TrimPrefix(natsURL, "nats://")}
	l.restore()
	t.Cleanup(l.cut)
	return l
}

func (l *busLink) url() string { return "nats://" + l.addr }

// restore listens again; the coordinator's reconnects get through.
func (l *busLink) restore() {
	l.t.Helper()
	ln, err := net.Listen("tcp", l.addr)
	if err != nil {
		l.t.Fatal(err)
	}
	l.mu.Lock()
	l.ln = ln
	l.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", l.target)
			if err != nil {
				c.Close()
				continue
			}
			l.mu.Lock()
			l.conns = append(l.conns, c, s)
			l.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
}

// cut closes the listener and every connection through it.
func (l *busLink) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ln != nil {
		l.ln.Close()
		l.ln = nil
	}
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

// A leader cut off from the bus for longer than the stale period sees every
// node go stale. Back on the bus, the first node it hears is not the
// fleet: it must hear the fleet again (ask, as at start) before it counts a
// step converged, or it moves the rollout on with nodes not heard from that
// have not applied.
func TestCoordinator_BackOnTheBusWaitsForTheWholeFleet(t *testing.T) {
	_, url := startNATS(t)
	link := newBusLink(t, url)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := startCoordinatorWith(t, link.url(), t.TempDir(), func(cfg *Config) { cfg.StaleAfter = time.Second })
	res := send(t, nc, applyIntent("i-1", "web-1"))
	if !res.GetAccepted() {
		t.Fatalf("apply: %v", res)
	}
	gen := res.GetIndex()
	publishStatus(t, nc, "edge-1", gen-1)
	publishStatus(t, nc, "edge-2", gen-1)

	link.cut()
	waitFor(t, "the coordinator to lose the bus", 10*time.Second, func() bool { return !c.srv.nc.IsConnected() })
	time.Sleep(1500 * time.Millisecond) // past the stale period: every node is stale

	// edge-2 has not applied; its heartbeat is far off, it answers asks.
	answerAsks(t, nc, "edge-2", gen-1)
	link.restore()
	waitFor(t, "the coordinator back on the bus", 10*time.Second, func() bool { return c.srv.nc.IsConnected() })
	heldForTheWholeFleet(t, nc, c, gen)
}

// While a coordinator is still hearing from the fleet (just started, or
// back on the bus), the nodes it lists are only those heard so far: the
// overview, and so the dashboard, must say so rather than show them as the
// fleet.
func TestAPI_OverviewWhileHearingTheFleetSaysSo(t *testing.T) {
	_, url := startNATS(t)
	c := startCoordinator(t, url, t.TempDir())
	waitFor(t, "the fleet view to settle", 10*time.Second, c.srv.fleet.Settled)
	ov, err := c.srv.Overview("")
	if err != nil {
		t.Fatal(err)
	}
	if ov.GetStale() {
		t.Fatalf("settled overview says stale: %q", ov.GetStaleReason())
	}
	c.srv.fleet.relisten() // as on reconnect, before the ask went out
	ov, err = c.srv.Overview("")
	if err != nil {
		t.Fatal(err)
	}
	if !ov.GetStale() || !strings.Contains(ov.GetStaleReason(), "still hearing from the fleet") {
		t.Fatalf("overview while hearing the fleet: stale=%v reason %q; want stale, saying it is still hearing from the fleet", ov.GetStale(), ov.GetStaleReason())
	}
}

// Off the bus a coordinator hears no report: the analysis store knows the
// span (from the last report heard), so that no window reaching into it
// passes, and the span ends when the coordinator is back.
func TestCoordinator_OffTheBusTheWindowsAreMissingData(t *testing.T) {
	_, url := startNATS(t)
	link := newBusLink(t, url)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	c := startCoordinatorWith(t, link.url(), t.TempDir(), func(*Config) {})
	// A report heard, then the link dies.
	if err := nc.Publish(bus.TelemetrySubject("web", "edge-1"), []byte{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the report heard", 5*time.Second, func() bool { _, ok := c.srv.intake.lastHeard(); return ok })
	heard, _ := c.srv.intake.lastHeard()
	time.Sleep(1100 * time.Millisecond)
	link.cut()
	waitFor(t, "the coordinator to lose the bus", 10*time.Second, func() bool { return !c.srv.nc.IsConnected() })
	// The client says so to its disconnect handler on a goroutine of its
	// own, a moment after the connection reads as lost.
	waitFor(t, "the store to know the coordinator stopped hearing reports at the last one heard", 5*time.Second,
		func() bool { return c.srv.analysis.DeafIn(heard, heard) })
	time.Sleep(1100 * time.Millisecond)
	link.restore()
	waitFor(t, "the coordinator back on the bus", 10*time.Second, func() bool { return c.srv.nc.IsConnected() })
	back := time.Now()
	time.Sleep(1100 * time.Millisecond)
	if !c.srv.analysis.DeafIn(back.Add(-2*time.Second), back.Add(-time.Second)) {
		t.Error("the span off the bus was forgotten")
	}
	if after := time.Now(); c.srv.analysis.DeafIn(after.Add(time.Second), after.Add(2*time.Second)) {
		t.Error("the coordinator is back on the bus and still counts itself deaf")
	}
}
