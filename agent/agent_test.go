package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/agent/driver"
	"github.com/switchyard/switchyard/agent/state"
	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/internal/clock"
	"github.com/switchyard/switchyard/internal/desired"
	"github.com/switchyard/switchyard/internal/haproxyproc"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func TestAgent_AppliesPushedDesiredState(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})

	b.put(t, defaults(5, map[string]uint32{"blue": 90, "green": 10}))
	got := ra.waitApplied(t, "web", 5)
	want := map[string]uint32{"blue": 90, "green": 10}
	if !maps.Equal(got, want) {
		t.Fatalf("applied weights = %v, want %v", got, want)
	}
	applies, _ := drv.recorded()
	if len(applies) != 1 || !maps.Equal(applies[0], want) {
		t.Fatalf("driver applies = %v, want one apply of %v", applies, want)
	}
	ra.waitMetric(t, 1, "switchyard_agent_applies_total", "service", "web", "result", "ok")
	ra.waitMetric(t, 5, "switchyard_agent_applied_generation", "service", "web")
	if n := ra.metric(t, "switchyard_agent_apply_seconds", "service", "web"); n != 1 {
		t.Errorf("apply_seconds observations = %v, want 1", n)
	}

	// The applied state is on disk once Run has returned.
	ra.stop(t)
	st, err := state.Open(cfg.StateDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	saved, err := st.Load("web")
	if err != nil {
		t.Fatal(err)
	}
	if saved.GetDesired().GetGeneration() != 5 || !maps.Equal(saved.GetWeights(), want) || saved.GetWave() != desired.NoWave || saved.GetAppliedAt() == nil {
		t.Fatalf("saved state = %v", saved)
	}
	drv.mu.Lock()
	closes := drv.closes
	drv.mu.Unlock()
	if closes != 1 {
		t.Errorf("driver closed %d times, want 1", closes)
	}
}

// A coordinator that has just started asks every agent for its status; an
// agent answers at once (within its status window), not at its next
// heartbeat.
// An agent shutting down cleanly says so in its last status, with what it
// applied, so the coordinators count its node stale at once; the statuses
// before it do not say so.
func TestAgent_CleanStopSaysStoppingInItsLastStatus(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	statuses := b.statuses(t, cfg.Node)
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": newFakeDriver()})
	b.put(t, defaults(5, map[string]uint32{"blue": 90, "green": 10}))
	ra.waitApplied(t, "web", 5)
	st := waitStatus(t, statuses, "a status of generation 5", func(st *sv1.AgentStatus) bool {
		return len(st.GetServices()) == 1 && st.GetServices()[0].GetAppliedGeneration() == 5
	})
	if st.GetStopping() {
		t.Fatal("a running agent's status says it is stopping")
	}
	ra.stop(t)
	last := waitStatus(t, statuses, "the stopping status", func(st *sv1.AgentStatus) bool { return st.GetStopping() })
	if last.GetNode() != cfg.Node || len(last.GetServices()) != 1 || last.GetServices()[0].GetAppliedGeneration() != 5 {
		t.Fatalf("stopping status %v, want the node's applied generation 5", last)
	}
}

func TestAgent_AnswersAStatusAskBeforeItsHeartbeat(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url) // heartbeat: a minute
	statuses := b.statuses(t, cfg.Node)
	startAgent(t, cfg, map[string]*fakeDriver{"web": newFakeDriver()})
	waitStatus(t, statuses, "the first status", func(*sv1.AgentStatus) bool { return true })
	// Start-up's statuses over: nothing for half a second.
	for quiet := false; !quiet; {
		select {
		case <-statuses:
		case <-time.After(500 * time.Millisecond):
			quiet = true
		}
	}
	if err := b.nc.Publish(bus.StatusAskSubject, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-statuses:
		if st.GetHeartbeat() {
			t.Fatalf("answered with a heartbeat: %v", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no status within 5 s of the ask (heartbeat: a minute)")
	}
}

func TestAgent_GetsExistingDocumentOnStart(t *testing.T) {
	b := startBus(t)
	b.put(t, defaults(3, map[string]uint32{"blue": 0, "green": 100}))

	drv := newFakeDriver()
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})
	ra.waitApplied(t, "web", 3)
	applies, _ := drv.recorded()
	if want := []map[string]uint32{{"blue": 0, "green": 100}}; !slices.EqualFunc(applies, want, maps.Equal) {
		t.Fatalf("driver applies = %v, want %v", applies, want)
	}
}

func TestAgent_StartsBeforeBucketExists(t *testing.T) {
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	ra := startAgent(t, testConfig(t, srv.ClientURL()), map[string]*fakeDriver{"web": newFakeDriver()})
	if gen, _ := ra.Applied("web"); gen != 0 {
		t.Fatalf("applied generation = %d with no bucket, want 0", gen)
	}
}

func TestAgent_IgnoresStaleGenerations(t *testing.T) {
	b := startBus(t)
	drv := newFakeDriver()
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})

	b.put(t, defaults(10, map[string]uint32{"blue": 80, "green": 20}))
	ra.waitApplied(t, "web", 10)

	// A deposed leader's older document, and a document of the same fence
	// with other content (no coordinator writes one).
	b.publishRaw(t, "web", mustMarshal(t, defaults(9, map[string]uint32{"blue": 0, "green": 100})), nil)
	b.publishRaw(t, "web", mustMarshal(t, defaults(10, map[string]uint32{"blue": 0, "green": 100})), nil)
	ra.waitMetric(t, 1, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "stale")
	ra.waitMetric(t, 1, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "conflict")

	// Still following: the next generation applies.
	b.put(t, defaults(11, map[string]uint32{"blue": 50, "green": 50}))
	ra.waitApplied(t, "web", 11)
	applies, _ := drv.recorded()
	want := []map[string]uint32{{"blue": 80, "green": 20}, {"blue": 50, "green": 50}}
	if !slices.EqualFunc(applies, want, maps.Equal) {
		t.Fatalf("driver applies = %v, want %v", applies, want)
	}
	if n := ra.metric(t, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "stale"); n != 1 {
		t.Errorf("stale rejections = %v, want 1", n)
	}
}

func TestAgent_MalformedDocumentsAreCountedAndSurvived(t *testing.T) {
	b := startBus(t)
	drv := newFakeDriver()
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})

	// A delete on the key is not a document at all.
	del := nats.Header{}
	del.Set(bus.KVOperationHeader, bus.KVOperationDelete)
	b.publishRaw(t, "web", nil, del)
	// Truncated protobuf: field 1 claims 5 bytes, 1 follows.
	b.publishRaw(t, "web", []byte{0x0a, 0x05, 'w'}, nil)
	// Well-formed, but a weight no coordinator writes.
	b.publishRaw(t, "web", mustMarshal(t, defaults(4, map[string]uint32{"blue": 300})), nil)
	// Another service's document on web's key.
	other := defaults(4, map[string]uint32{"blue": 100})
	other.Service = "api"
	b.publishRaw(t, "web", mustMarshal(t, other), nil)

	ra.waitMetric(t, 1, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "wrong_key")
	if n := ra.metric(t, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "malformed"); n != 2 {
		t.Errorf("malformed rejections = %v, want 2 (the delete must not count)", n)
	}
	if applies, attempts := drv.recorded(); attempts != 0 {
		t.Fatalf("driver called %d times (%v) for rejected documents", attempts, applies)
	}

	// The bucket now holds garbage; PutDesired overwrites it and the agent,
	// still running, applies it.
	b.put(t, defaults(6, map[string]uint32{"blue": 100, "green": 0}))
	ra.waitApplied(t, "web", 6)
}

func TestAgent_DriverFailureDegradesRetriesThenApplies(t *testing.T) {
	b := startBus(t)
	statuses := b.statuses(t, "edge-1")
	drv := newFakeDriver()
	drv.failNext(3, errProxyDown)
	// The retries succeed within ~70 ms: a status window shorter than that
	// lets the degraded status out before the healthy one replaces it.
	cfg := testConfig(t, b.url)
	cfg.StatusWindow = 5 * time.Millisecond
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})

	b.put(t, defaults(2, map[string]uint32{"blue": 70, "green": 30}))
	st := waitStatus(t, statuses, "web degraded", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetDriver() == sv1.DriverHealth_DRIVER_HEALTH_DEGRADED
	})
	if msg := serviceStatus(st, "web").GetMessage(); !strings.Contains(msg, "proxy unavailable") || !strings.Contains(msg, "generation 2") {
		t.Errorf("degraded message = %q, want the generation and the driver's error", msg)
	}
	waitStatus(t, statuses, "web applied generation 2 and healthy", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetAppliedGeneration() == 2 && s.GetDriver() == sv1.DriverHealth_DRIVER_HEALTH_OK && s.GetMessage() == ""
	})
	applies, attempts := drv.recorded()
	if attempts != 4 || len(applies) != 1 {
		t.Fatalf("driver: %d attempts, %d applies; want 4 and 1", attempts, len(applies))
	}
	ra.waitMetric(t, 3, "switchyard_agent_applies_total", "service", "web", "result", "error")
	ra.waitMetric(t, 1, "switchyard_agent_applies_total", "service", "web", "result", "ok")
	ra.waitMetric(t, 0, "switchyard_agent_driver_degraded", "service", "web")
}

func TestAgent_NewerDocumentSupersedesFailingOne(t *testing.T) {
	b := startBus(t)
	drv := newFakeDriver()
	drv.failNext(1<<30, errProxyDown)
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})

	b.put(t, defaults(2, map[string]uint32{"blue": 70, "green": 30}))
	ra.waitMetric(t, 1, "switchyard_agent_driver_degraded", "service", "web")
	waitFor(t, 10*time.Second, "a few retries", func() error {
		if _, n := drv.recorded(); n < 3 {
			return fmt.Errorf("%d attempts", n)
		}
		return nil
	})
	b.put(t, defaults(3, map[string]uint32{"blue": 100, "green": 0}))
	waitFor(t, 10*time.Second, "generation 3 tried while the proxy is down", func() error {
		if !drv.triedWeights(map[string]uint32{"blue": 100, "green": 0}) {
			return errors.New("not yet")
		}
		return nil
	})
	drv.failNext(0, nil)
	ra.waitApplied(t, "web", 3)
	applies, _ := drv.recorded()
	if want := []map[string]uint32{{"blue": 100, "green": 0}}; !slices.EqualFunc(applies, want, maps.Equal) {
		t.Fatalf("driver applies = %v, want only generation 3's %v", applies, want)
	}
	ra.waitMetric(t, 0, "switchyard_agent_driver_degraded", "service", "web")
}

func TestAgent_RefusedDocumentIsReportedNotHammered(t *testing.T) {
	b := startBus(t)
	statuses := b.statuses(t, "edge-1")
	drv := newFakeDriver()
	drv.failNext(1, fmt.Errorf("backend %q: %w", "purple", driver.ErrUnknownBackend))
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})

	b.put(t, defaults(2, map[string]uint32{"purple": 100}))
	st := waitStatus(t, statuses, "web degraded", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetDriver() == sv1.DriverHealth_DRIVER_HEALTH_DEGRADED
	})
	if msg := serviceStatus(st, "web").GetMessage(); !strings.Contains(msg, "purple") {
		t.Errorf("message = %q, want the unknown backend named", msg)
	}
	ra.waitMetric(t, 1, "switchyard_agent_applies_total", "service", "web", "result", "refused")

	// A corrected document applies and clears the degradation.
	b.put(t, defaults(3, map[string]uint32{"blue": 100, "green": 0}))
	ra.waitApplied(t, "web", 3)
	ra.waitMetric(t, 0, "switchyard_agent_driver_degraded", "service", "web")
	if _, attempts := drv.recorded(); attempts != 2 {
		t.Errorf("driver attempts = %d, want 2: a refused document waits for resync, not a backoff loop", attempts)
	}
}

func TestAgent_UnreachableProxyShowsBeforeFirstRollout(t *testing.T) {
	b := startBus(t)
	statuses := b.statuses(t, "edge-1")
	drv := newFakeDriver()
	drv.failWeights(3)
	startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})

	st := waitStatus(t, statuses, "web degraded", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetDriver() == sv1.DriverHealth_DRIVER_HEALTH_DEGRADED
	})
	if msg := serviceStatus(st, "web").GetMessage(); !strings.Contains(msg, "read proxy") {
		t.Errorf("message = %q, want the failed read named", msg)
	}
	waitStatus(t, statuses, "web healthy again", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetDriver() == sv1.DriverHealth_DRIVER_HEALTH_OK
	})
	if _, attempts := drv.recorded(); attempts != 0 {
		t.Errorf("driver Apply called %d times with nothing to apply", attempts)
	}
}

func TestAgent_RestartDoesNotReapplySameGeneration(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	drv := newFakeDriver()
	first := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	b.put(t, defaults(4, map[string]uint32{"blue": 50, "green": 50}))
	first.waitApplied(t, "web", 4)
	first.stop(t)

	second := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	// Restored from disk, before and without any apply.
	second.waitApplied(t, "web", 4)
	// The start-up Get found generation 4 again; a later push is handled
	// after it, so once 5 applies, 4 has certainly been seen and skipped.
	b.put(t, defaults(5, map[string]uint32{"blue": 0, "green": 100}))
	second.waitApplied(t, "web", 5)
	applies, _ := drv.recorded()
	want := []map[string]uint32{{"blue": 50, "green": 50}, {"blue": 0, "green": 100}}
	if !slices.EqualFunc(applies, want, maps.Equal) {
		t.Fatalf("driver applies = %v, want %v", applies, want)
	}
	if n := second.metric(t, "switchyard_agent_drift_total", "service", "web"); n != 0 {
		t.Errorf("drift = %v, want 0: the proxy kept its weights", n)
	}
	if n := second.metric(t, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "stale"); n != 0 {
		t.Errorf("stale = %v, want 0: finding the applied generation on Get is not a rejection", n)
	}
}

func TestAgent_RestartRepairsDrift(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	drv := newFakeDriver()
	first := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	b.put(t, defaults(4, map[string]uint32{"blue": 50, "green": 50}))
	first.waitApplied(t, "web", 4)
	first.stop(t)

	// HAProxy reloaded while the agent was down.
	drv.setWeights(map[string]uint32{"blue": 100, "green": 0})
	second := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	second.waitMetric(t, 1, "switchyard_agent_drift_total", "service", "web")
	waitFor(t, 10*time.Second, "weights repaired", func() error {
		if w, _ := drv.Weights(context.Background()); !maps.Equal(w, map[string]uint32{"blue": 50, "green": 50}) {
			return fmt.Errorf("proxy has %v", w)
		}
		return nil
	})
	applies, _ := drv.recorded()
	if len(applies) != 2 {
		t.Fatalf("driver applies = %v, want the first apply and one repair", applies)
	}
	if gen, _ := second.Applied("web"); gen != 4 {
		t.Fatalf("applied generation after repair = %d, want 4", gen)
	}
}

func TestAgent_ResyncRepairsDriftWhileRunning(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	cfg.Resync = 50 * time.Millisecond
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	b.put(t, defaults(4, map[string]uint32{"blue": 50, "green": 50}))
	ra.waitApplied(t, "web", 4)

	drv.setWeights(map[string]uint32{"blue": 100, "green": 0})
	ra.waitMetric(t, 1, "switchyard_agent_drift_total", "service", "web")
	waitFor(t, 10*time.Second, "weights repaired", func() error {
		if w, _ := drv.Weights(context.Background()); !maps.Equal(w, map[string]uint32{"blue": 50, "green": 50}) {
			return fmt.Errorf("proxy has %v", w)
		}
		return nil
	})
	// Resyncs keep finding generation 4 in the bucket; none is a rejection.
	if n := ra.metric(t, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "stale"); n != 0 {
		t.Errorf("stale = %v, want 0", n)
	}
}

func TestAgent_PublishesStatusOnChangeAndHeartbeat(t *testing.T) {
	b := startBus(t)
	statuses := b.statuses(t, "edge-1")
	cfg := testConfig(t, b.url)
	cfg.Heartbeat = 50 * time.Millisecond
	cfg.StatusWindow = 10 * time.Millisecond
	startAgent(t, cfg, map[string]*fakeDriver{"web": newFakeDriver()})

	b.put(t, &sv1.DesiredState{Service: "web", Generation: 6, RolloutId: "r-42", DefaultWeights: map[string]uint32{"blue": 60, "green": 40}})
	st := waitStatus(t, statuses, "a change to generation 6", func(st *sv1.AgentStatus) bool {
		return !st.GetHeartbeat() && serviceStatus(st, "web").GetAppliedGeneration() == 6
	})
	want := &sv1.ServiceStatus{
		Service:           "web",
		AppliedGeneration: 6,
		RolloutId:         "r-42",
		Weights:           map[string]uint32{"blue": 60, "green": 40},
		Driver:            sv1.DriverHealth_DRIVER_HEALTH_OK,
		// Read back from the proxy after applying, before the status went out.
		ObservedWeights: map[string]uint32{"blue": 60, "green": 40},
		ObservedMatches: true,
	}
	if exp := serviceStatus(st, "web").GetDocumentExpiresAt(); exp == nil || !exp.AsTime().After(time.Now()) {
		t.Errorf("document_expires_at = %v, want the signed document's expiry, in the future", exp)
	}
	want.DocumentExpiresAt = serviceStatus(st, "web").GetDocumentExpiresAt()
	// The stamps of the document's way through the agent, in order.
	tm := serviceStatus(st, "web").GetApplyTiming()
	stamps := []*timestamppb.Timestamp{tm.GetDeliveredAt(), tm.GetVerifiedAt(), tm.GetAppliedAt(), tm.GetPersistedAt()}
	for i, ts := range stamps {
		if ts == nil || (i > 0 && ts.AsTime().Before(stamps[i-1].AsTime())) {
			t.Errorf("apply timing %v: stamp %d missing or before the one it follows", tm, i)
		}
	}
	if tm.GetGeneration() != 6 || tm.GetEpoch() != 0 {
		t.Errorf("apply timing of fence %d/%d, want 0/6", tm.GetEpoch(), tm.GetGeneration())
	}
	want.ApplyTiming = tm
	if got := serviceStatus(st, "web"); !proto.Equal(got, want) {
		t.Errorf("service status = %v, want %v", got, want)
	}
	if st.GetNode() != "edge-1" || st.GetLabels()["region"] != "eu" || st.GetVersion() != "test" || st.GetAt() == nil {
		t.Errorf("status header = node %q labels %v version %q at %v", st.GetNode(), st.GetLabels(), st.GetVersion(), st.GetAt())
	}
	waitStatus(t, statuses, "a heartbeat at generation 6", func(st *sv1.AgentStatus) bool {
		return st.GetHeartbeat() && serviceStatus(st, "web").GetAppliedGeneration() == 6
	})
}

func TestAgent_WaveSelectorDecidesWhetherToApply(t *testing.T) {
	b := startBus(t)
	drv := newFakeDriver()
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv}) // region=eu

	b.put(t, defaults(1, map[string]uint32{"blue": 100, "green": 0}))
	ra.waitApplied(t, "web", 1)

	// The wave is for another region and there are no defaults: the node
	// records the generation and keeps its weights.
	b.put(t, &sv1.DesiredState{Service: "web", Generation: 2, RolloutId: "r1", Waves: []*sv1.WaveWeights{{
		Index: 0, Name: "us-canary", Selector: map[string]string{"region": "us"},
		BasisPoints: desired.FullBasisPoints, Weights: map[string]uint32{"blue": 0, "green": 100},
	}}})
	got := ra.waitApplied(t, "web", 2)
	if want := map[string]uint32{"blue": 100, "green": 0}; !maps.Equal(got, want) {
		t.Errorf("weights after a wave for another region = %v, want the previous %v", got, want)
	}
	ra.waitMetric(t, 1, "switchyard_agent_applies_total", "service", "web", "result", "no_wave")

	// Our region's wave at 100% takes the node.
	b.put(t, &sv1.DesiredState{Service: "web", Generation: 3, RolloutId: "r1", Waves: []*sv1.WaveWeights{{
		Index: 0, Name: "eu", Selector: map[string]string{"region": "eu"},
		BasisPoints: desired.FullBasisPoints, Weights: map[string]uint32{"blue": 0, "green": 100},
	}}})
	ra.waitApplied(t, "web", 3)

	applies, _ := drv.recorded()
	want := []map[string]uint32{{"blue": 100, "green": 0}, {"blue": 0, "green": 100}}
	if !slices.EqualFunc(applies, want, maps.Equal) {
		t.Fatalf("driver applies = %v, want %v", applies, want)
	}
}

func TestAgent_ReconnectsAfterBusRestart(t *testing.T) {
	storeDir := t.TempDir()
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: storeDir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	b := &testBus{srv: srv, url: srv.ClientURL()}
	b.connect(t)

	drv := newFakeDriver()
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})
	b.put(t, defaults(1, map[string]uint32{"blue": 100, "green": 0}))
	ra.waitApplied(t, "web", 1)

	// The same server comes back on the same port with the same store.
	port := srv.Addr().(*net.TCPAddr).Port
	b.nc.Close()
	srv.Shutdown()
	srv.WaitForShutdown()
	srv2, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: storeDir, Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv2.Shutdown()
		srv2.WaitForShutdown()
	})
	b.srv = srv2
	b.connect(t)
	ra.waitMetric(t, 1, "switchyard_agent_bus_reconnects_total")
	b.put(t, defaults(2, map[string]uint32{"blue": 0, "green": 100}))
	ra.waitApplied(t, "web", 2)
}

func TestAgent_ServesMetricsAndHealthz(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	cfg.HTTPAddr = "127.0.0.1:0"
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	base := "http://" + ra.HTTPAddr()

	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	waitFor(t, 10*time.Second, "healthz ok", func() error {
		if code, body := get("/healthz"); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	code, body := get("/metrics")
	if code != http.StatusOK || !strings.Contains(body, "switchyard_agent_applies_total") {
		t.Fatalf("/metrics = %d, body lacks switchyard_agent_applies_total:\n%s", code, body)
	}

	drv.failNext(1<<30, errProxyDown)
	b.put(t, defaults(2, map[string]uint32{"blue": 100, "green": 0}))
	waitFor(t, 10*time.Second, "healthz degraded", func() error {
		code, body := get("/healthz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "service web: driver degraded") {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
}

func TestAgent_SecondAgentOnSameStateDirFails(t *testing.T) {
	b := startBus(t)
	cfg := testConfig(t, b.url)
	startAgent(t, cfg, map[string]*fakeDriver{"web": newFakeDriver()})

	start := time.Now()
	_, err := runAgent(t, cfg, map[string]*fakeDriver{"web": newFakeDriver()})
	if !errors.Is(err, state.ErrLocked) {
		t.Fatalf("second agent: Run = %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("second agent took %s to fail", d)
	}
}

func TestAgent_NewRejectsBadInput(t *testing.T) {
	cfg := testConfig(t, "nats://127.0.0.1:1")
	if _, err := New(cfg, Options{}); err != nil {
		t.Errorf("New without a DriverFactory opens each section's own driver: %v", err)
	}
	bad := testConfig(t, "nats://127.0.0.1:1")
	bad.Node = ""
	factory := func(string, ServiceConfig) (driver.Driver, error) { return newFakeDriver(), nil }
	if _, err := New(bad, Options{DriverFactory: factory}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("New with no node = %v, want ErrInvalidConfig", err)
	}
	// Defaults are applied to a config built in code.
	cfg.Heartbeat, cfg.Resync = 0, 0
	a, err := New(cfg, Options{DriverFactory: factory})
	if err != nil {
		t.Fatal(err)
	}
	if a.cfg.Heartbeat != DefaultHeartbeat || a.cfg.Resync != DefaultResync {
		t.Errorf("defaults not applied: heartbeat %s resync %s", a.cfg.Heartbeat, a.cfg.Resync)
	}
	if cfg.Heartbeat != 0 {
		t.Error("New changed the caller's config")
	}
}

func TestAgent_StartsWithBusDownRepairsFromStoreAndConverges(t *testing.T) {
	// A port nothing listens on yet; the bus will appear there later.
	port, err := haproxyproc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, fmt.Sprintf("nats://127.0.0.1:%d", port))
	// What the agent applied before the node rebooted.
	st, err := state.Open(cfg.StateDir, 0)
	if err != nil {
		t.Fatal(err)
	}
	applied := map[string]uint32{"blue": 30, "green": 70}
	if err := st.Save(&sv1.AppliedState{Service: "web", Desired: defaults(4, applied), Weights: applied, Wave: desired.NoWave}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	// The proxy came back from the reboot with its config's weights.
	drv := newFakeDriver()
	drv.setWeights(map[string]uint32{"blue": 100, "green": 0})

	// Ready does not wait for the bus.
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})
	if _, down := ra.BusDownFor(); !down {
		t.Fatal("BusDownFor says connected with no server")
	}
	// Repaired from the local state, without the bus.
	ra.waitMetric(t, 1, "switchyard_agent_drift_total", "service", "web")
	waitFor(t, 10*time.Second, "weights restored from the local state", func() error {
		if w, _ := drv.Weights(context.Background()); !maps.Equal(w, applied) {
			return fmt.Errorf("proxy has %v", w)
		}
		return nil
	})
	if gen, _ := ra.Applied("web"); gen != 4 {
		t.Fatalf("applied generation = %d, want 4 from the local state", gen)
	}
	ra.waitMetric(t, 0, "switchyard_agent_bus_connected")

	// The bus appears on that port with a newer document; the connect
	// handler resyncs without waiting for the (hour-long) resync period.
	srv, err := bus.RunEmbedded(bus.EmbeddedOptions{StoreDir: t.TempDir(), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	b := &testBus{srv: srv, url: srv.ClientURL()}
	b.connect(t)
	b.put(t, defaults(5, map[string]uint32{"blue": 0, "green": 100}))
	ra.waitApplied(t, "web", 5)
	ra.waitMetric(t, 1, "switchyard_agent_bus_connected")
	if _, down := ra.BusDownFor(); down {
		t.Error("BusDownFor says down after connecting")
	}
	statuses := b.statuses(t, "edge-1")
	b.put(t, defaults(6, map[string]uint32{"blue": 50, "green": 50}))
	waitStatus(t, statuses, "generation 6 published", func(st *sv1.AgentStatus) bool {
		return serviceStatus(st, "web").GetAppliedGeneration() == 6
	})
}

func TestAgent_DriftRepairedWhilePreflightFails(t *testing.T) {
	b := startBus(t)
	green := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "not ready", http.StatusServiceUnavailable)
	}))
	t.Cleanup(green.Close)
	cfg := testConfig(t, b.url)
	cfg.Resync = 50 * time.Millisecond
	svc := cfg.Services["web"]
	svc.Probes = &ProbesConfig{Preflight: map[string]*HTTPCheck{"green": {URL: green.URL + "/healthz"}}}
	cfg.Services["web"] = svc
	drv := newFakeDriver()
	ra := startAgent(t, cfg, map[string]*fakeDriver{"web": drv})

	blue := map[string]uint32{"blue": 100, "green": 0}
	b.put(t, defaults(1, blue))
	ra.waitApplied(t, "web", 1)
	b.put(t, defaults(2, map[string]uint32{"blue": 0, "green": 100}))
	waitFor(t, 10*time.Second, "a failed preflight", func() error {
		if n := ra.metric(t, "switchyard_agent_probes_total", "backend", "green", "kind", "preflight", "result", "failed"); n < 1 {
			return errors.New("none yet")
		}
		return nil
	})

	// The proxy restarts while generation 2 waits for green.
	drv.setWeights(map[string]uint32{"blue": 0, "green": 0})
	waitFor(t, 10*time.Second, "generation 1's weights repaired", func() error {
		if w, _ := drv.Weights(context.Background()); !maps.Equal(w, blue) {
			return fmt.Errorf("proxy has %v", w)
		}
		return nil
	})
	if gen, _ := ra.Applied("web"); gen != 1 {
		t.Fatalf("applied generation = %d, want 1 while green's preflight fails", gen)
	}
	if drv.triedWeights(map[string]uint32{"blue": 0, "green": 100}) {
		t.Fatal("generation 2 reached the proxy although green's preflight fails")
	}
}

// How long a node has been cut off from the coordinators, and how it knows:
// by its connection alone until it has heard a leader's beacon; then also
// by the beacon going silent, the connection up; off the bus, since the
// last beacon.
func TestAgent_CutOffByTheConnectionOrTheLeadersSilence(t *testing.T) {
	fake := clock.NewFake(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC))
	a, err := New(testConfig(t, "nats://127.0.0.1:1"), Options{Logger: slog.New(slog.DiscardHandler), Clock: fake})
	if err != nil {
		t.Fatal(err)
	}
	a.busFound()
	fake.Advance(time.Minute)
	if d, how, cut := a.CutOffFor(); cut {
		t.Fatalf("connected, no beacon ever heard: cut off (%s for %s)", how, d)
	}
	a.heardBeacon()
	fake.Advance(beaconOverdue - time.Second)
	if d, how, cut := a.CutOffFor(); cut {
		t.Fatalf("beacon %s ago: cut off (%s for %s)", beaconOverdue-time.Second, how, d)
	}
	fake.Advance(2 * time.Second)
	if d, how, cut := a.CutOffFor(); !cut || how != "no coordinator heard" || d != beaconOverdue+time.Second {
		t.Fatalf("beacon overdue, connected: %v %q %s", cut, how, d)
	}
	a.busLost()
	fake.Advance(time.Second)
	if d, how, cut := a.CutOffFor(); !cut || how != "bus lost" || d != beaconOverdue+2*time.Second {
		t.Fatalf("off the bus: %v %q %s, want bus lost since the last beacon", cut, how, d)
	}
	a.busFound()
	a.heardBeacon()
	if d, how, cut := a.CutOffFor(); cut {
		t.Fatalf("back, beacon heard: cut off (%s for %s)", how, d)
	}
}
