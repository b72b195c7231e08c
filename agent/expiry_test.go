package agent

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// TestAgent_ExpiredDocumentKeepsItsWeightsAndSaysSo: a document whose
// validity ends while no renewal arrives (the coordinators are gone, or
// someone keeps serving the node an old document) stays applied, and the
// node says so in its status and on /metrics; the renewal of the same
// document clears it without applying anything again.
func TestAgent_ExpiredDocumentKeepsItsWeightsAndSaysSo(t *testing.T) {
	b := startBus(t)
	drv := newFakeDriver()
	statuses := b.statuses(t, "edge-1")
	ra := startAgent(t, testConfig(t, b.url), map[string]*fakeDriver{"web": drv})

	short := mustSigner(testKey, 2*time.Second)
	ds := defaults(5, map[string]uint32{"blue": 20, "green": 80})
	raw, err := short.SealDesired(ds, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	b.publishRaw(t, "web", raw, nil)
	applied := ra.waitApplied(t, "web", 5)
	ra.waitMetric(t, 1, "switchyard_agent_document_expired", "service", "web")
	st := waitStatus(t, statuses, "an expired document", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s.GetDocumentExpired() && strings.Contains(s.GetMessage(), "expired; keeping its weights")
	})
	if s := serviceStatus(st, "web"); s.GetAppliedGeneration() != 5 || !maps.Equal(s.GetWeights(), applied) {
		t.Fatalf("expired status %v, want generation 5 with weights %v", s, applied)
	}
	if applies, _ := drv.recorded(); len(applies) != 1 {
		t.Fatalf("driver applies %v, want the one apply only", applies)
	}

	// The renewal: the same document, signed again.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := testPublisher.PutDesired(ctx, b.kv, ds, time.Now()); err != nil {
		t.Fatal(err)
	}
	ra.waitMetric(t, 0, "switchyard_agent_document_expired", "service", "web")
	waitStatus(t, statuses, "a current document", func(st *sv1.AgentStatus) bool {
		s := serviceStatus(st, "web")
		return s != nil && !s.GetDocumentExpired() && s.GetDocumentExpiresAt().AsTime().After(time.Now().Add(time.Hour))
	})
	if applies, _ := drv.recorded(); len(applies) != 1 {
		t.Fatalf("driver applies %v after the renewal, want none more", applies)
	}
	if n := ra.metric(t, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "stale"); n != 0 {
		t.Errorf("the renewal was counted as stale (%v)", n)
	}
	// An expired document never replaces a current one.
	old, _ := short.SealDesired(defaults(6, map[string]uint32{"blue": 100, "green": 0}), time.Now().Add(-time.Minute))
	b.publishRaw(t, "web", old, nil)
	ra.waitMetric(t, 1, "switchyard_agent_documents_rejected_total", "service", "web", "reason", "expired")
	if got, _ := ra.Applied("web"); got != 5 {
		t.Fatalf("applied generation %d after an expired document, want 5", got)
	}
}
