package coordinator

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

func stageSeconds(t *testing.T, h *prometheus.HistogramVec, stage string) (count uint64, sum time.Duration) {
	t.Helper()
	var m dto.Metric
	if err := h.WithLabelValues(stage).(prometheus.Histogram).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), time.Duration(m.GetHistogram().GetSampleSum() * 1e9).Round(time.Microsecond)
}

func TestStages_DecisionPathIsTimedOncePerAgentAndDecision(t *testing.T) {
	h := newDecisionStageSeconds()
	c := newStageClock(h)
	t0 := time.Date(2026, 11, 30, 3, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ts := func(ms int) *timestamppb.Timestamp { return timestamppb.New(at(ms)) }
	c.wrote("web", DecisionTiming{Fence: bus.Fence{Epoch: 1, Generation: 7}, IssuedAt: at(0), CommittedAt: at(2), SignedAt: at(3), AckedAt: at(9)})

	status := func(node string, gen uint64, sentMS int) *sv1.AgentStatus {
		return &sv1.AgentStatus{Node: node, At: ts(sentMS), Services: []*sv1.ServiceStatus{{
			Service: "web", AppliedGeneration: gen, AppliedEpoch: 1,
			ApplyTiming: &sv1.ApplyTiming{Epoch: 1, Generation: gen, DeliveredAt: ts(5), VerifiedAt: ts(6), AppliedAt: ts(8), PersistedAt: ts(11)},
		}}}
	}
	first := status("edge-1", 7, 20)
	c.status(nil, first, at(25))
	// The same stamps again, in a heartbeat: nothing more is counted.
	c.status(first, status("edge-1", 7, 5020), at(5025))
	// A document this coordinator did not write (another leader's): the
	// agent's own stages count, the stages measured from the write do not.
	c.status(first, status("edge-1", 8, 40), at(43))

	want := []struct {
		stage string
		n     uint64
		sum   time.Duration
	}{
		{stageCommit, 1, 2 * time.Millisecond},
		{stagePublish, 1, 7 * time.Millisecond},
		{stageDeliver, 1, 2 * time.Millisecond},       // signed at 3 → arrived at 5
		{stageVerify, 2, 2 * time.Millisecond},        // 1 ms each
		{stageApply, 2, 4 * time.Millisecond},         // 2 ms each
		{stagePersist, 2, 6 * time.Millisecond},       // 3 ms each
		{stageStatus, 2, (9 + 29) * time.Millisecond}, // saved at 11 → sent at 20 and 40
		{stageReport, 2, (5 + 3) * time.Millisecond},  // sent → received
		{stageTotal, 1, 25 * time.Millisecond},        // issued at 0 → received at 25
	}
	for _, w := range want {
		if n, sum := stageSeconds(t, h, w.stage); n != w.n || sum != w.sum {
			t.Errorf("stage %s: %d observations summing to %v, want %d summing to %v", w.stage, n, sum, w.n, w.sum)
		}
	}
	if got, ok := c.timing("web"); !ok || got.AckedAt != at(9) {
		t.Errorf("timing of web = %+v, %v", got, ok)
	}
}
