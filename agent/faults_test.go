package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/agent/driver/haproxy"
	"github.com/switchyard/switchyard/chaos"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Each injector the agent adds to chaos's is idempotent: applied twice (a
// reconnect), reverted twice, reverted without having been applied (after
// a crash, from the journal).

func TestFaults_ProxyFaultIdempotent(t *testing.T) {
	p := startChaosProxy(t, "")
	d := p.driver(t)
	ctx := context.Background()
	if err := d.Apply(ctx, allGreen); err != nil {
		t.Fatal(err)
	}
	orig := p.serverAddr(t, "green")
	pf := &proxyFault{drv: d, backend: "green", orig: orig, newProxy: func(target string) *chaos.FaultProxy {
		return chaos.NewHTTPFaultProxy(target, &sv1.HTTPFault{Backend: "green", ErrorPercent: 100, Status: 503})
	}}
	for range 2 {
		if err := pf.Apply(ctx); err != nil {
			t.Fatal(err)
		}
	}
	proxied := pf.proxyAddr()
	if got := p.serverAddr(t, "green"); got != proxied || proxied == orig {
		t.Fatalf("after Apply green is at %s, want the fault proxy %s", got, proxied)
	}
	if s := measure(t, p.frontend, 20, 2, 2*time.Second); s.share(503) != 1 {
		t.Fatalf("applied: %v", s)
	}
	for range 2 {
		if err := pf.Revert(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.serverAddr(t, "green"); got != orig || pf.proxyAddr() != "" {
		t.Fatalf("after Revert green is at %s (want %s), fault proxy at %q", got, orig, pf.proxyAddr())
	}
	allAnswered(t, "reverted", measure(t, p.frontend, 20, 2, 2*time.Second), "green")

	// Applied again after a revert: a new fault proxy.
	if err := pf.Apply(ctx); err != nil {
		t.Fatal(err)
	}
	if got := p.serverAddr(t, "green"); got == orig {
		t.Fatal("apply after revert left green alone")
	}
	// A revert-only copy from the journal puts green back and cannot apply.
	fromJournal := &proxyFault{drv: d, backend: "green", orig: orig}
	for range 2 {
		if err := fromJournal.Revert(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.serverAddr(t, "green"); got != orig {
		t.Fatalf("journal revert left green at %s", got)
	}
	if err := fromJournal.Apply(ctx); !errors.Is(err, errRevertOnly) {
		t.Fatalf("Apply of a journal fault = %v, want errRevertOnly", err)
	}
	pf.abandon()
}

func TestFaults_StateFaultIdempotent(t *testing.T) {
	p := startChaosProxy(t, "")
	d := p.driver(t)
	ctx := context.Background()
	half := map[string]uint32{"blue": 50, "green": 50}
	if err := d.Apply(ctx, half); err != nil {
		t.Fatal(err)
	}
	greenStatus := func() string {
		st, err := d.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range st {
			if s.Backend == "green" {
				return s.Status
			}
		}
		t.Fatal("no green in show stat")
		return ""
	}
	sf := &stateFault{drv: d, backend: "green", state: haproxy.StateMaint}
	// Reverting what was never applied leaves a ready server ready.
	if err := sf.Revert(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := sf.Apply(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := greenStatus(); got != "MAINT" {
		t.Fatalf("green %q after Apply, want MAINT", got)
	}
	for range 2 {
		if err := sf.Revert(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := greenStatus(); got == "MAINT" {
		t.Fatalf("green %q after Revert", got)
	}
	if w := p.weights(t); w["green"] != 50 {
		t.Fatalf("weights %v after the state fault, want the rollout's", w)
	}
}

func TestFaults_BusDropIdempotent(t *testing.T) {
	b := startBus(t)
	gate := newBusGate()
	nc, err := nats.Connect(b.url, nats.SetCustomDialer(gate), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	announced := 0
	bd := &busDropFault{gate: gate, conn: func() *nats.Conn { return nc }, announce: func() { announced++ }}
	ctx := context.Background()
	// Nothing to revert yet.
	if err := bd.Revert(ctx); err != nil || !nc.IsConnected() {
		t.Fatalf("Revert before Apply: %v, connected %v", err, nc.IsConnected())
	}
	for range 2 {
		if err := bd.Apply(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if announced != 1 {
		t.Fatalf("announced %d times, want once", announced)
	}
	waitFor(t, 5*time.Second, "disconnected", func() error {
		if nc.IsConnected() {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	if _, err := gate.Dial("tcp", b.srv.Addr().String()); !errors.Is(err, errBusDropped) {
		t.Fatalf("dial while dropped: %v", err)
	}
	for range 2 {
		if err := bd.Revert(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 5*time.Second, "reconnected", func() error {
		if !nc.IsConnected() {
			return fmt.Errorf("not connected")
		}
		return nil
	})
}
