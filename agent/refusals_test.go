package agent

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/bus"
)

func TestRefusalLog_WarnsOnceAMinutePerReasonWithTheCountBetween(t *testing.T) {
	var l refusalLog
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	if ok, since := l.warn("malformed", t0); !ok || since != 0 {
		t.Fatalf("first refusal: %v %d, want a warning", ok, since)
	}
	for i := range 5 {
		if ok, _ := l.warn("malformed", t0.Add(time.Duration(i+1)*time.Second)); ok {
			t.Fatalf("refusal %d within the minute warned", i+2)
		}
	}
	if ok, _ := l.warn("stale", t0.Add(time.Second)); !ok {
		t.Fatal("the first refusal of another reason did not warn")
	}
	if ok, since := l.warn("malformed", t0.Add(refusalWarnEvery)); !ok || since != 5 {
		t.Fatalf("a minute on: %v %d, want a warning saying 5 were refused since", ok, since)
	}
}

// lockedBuffer is a log an agent's goroutines may write at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

// Documents that are not documents can arrive as often as someone who may
// read the bucket likes (docs/security.md): each is counted, and the agent
// warns of the first, not of every one.
func TestAgent_RefusalsAreCountedEachAndWarnedOfOnce(t *testing.T) {
	b := startBus(t)
	drv := newFakeDriver()
	var log lockedBuffer
	ra, err := runAgentLogging(t, testConfig(t, b.url), func(string, ServiceConfig) (driver.Driver, error) { return drv, nil }, &log)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for range n {
		b.publishRaw(t, "web", []byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response"}`), nil)
	}
	ra.waitMetric(t, n, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "malformed")
	if got := log.count("desired state refused"); got != 1 {
		t.Fatalf("%d warnings for %d refused documents, want 1:\n%s", got, n, log.b.String())
	}
}

// The coordinators' beacon and status ask carry no body. A message with
// one on those subjects is a JetStream API answer someone had the NATS
// server send there: taken for a beacon it would hide a silent leader from
// the local guard, so it is counted and ignored.
func TestAgent_FleetMessagesWithABodyAreIgnored(t *testing.T) {
	b := startBus(t)
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": newFakeDriver()})
	for _, subject := range []string{bus.BeaconSubject, bus.StatusAskSubject} {
		if err := b.nc.Publish(subject, []byte(`{"type":"io.nats.jetstream.api.v1.stream_info_response"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ra.waitMetric(t, 2, "switchyard_agent_fleet_messages_ignored_total")
	if ra.lastBeacon.Load() != 0 {
		t.Fatal("a beacon with a body was taken for the leader's")
	}
	if err := b.nc.Publish(bus.BeaconSubject, nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for ra.lastBeacon.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the leader's beacon was not heard")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
