package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Stages of applying one document on an agent, the values of the "stage"
// label of switchyard_agent_apply_stage_seconds.
const (
	// stageDeliver: the coordinator signed the document → it arrived here.
	// The start is the coordinator's clock and the end this agent's.
	stageDeliver = "deliver"
	// stageVerify: arrived → signature verified, decoded and fenced,
	// including the wait for the service's goroutine.
	stageVerify = "verify"
	// stageApply: verified → the proxy driver accepted the node's weights
	// (preflight probes and pre-traffic hooks included).
	stageApply = "apply"
	// stagePersist: applied → the applied state saved locally.
	stagePersist = "persist"
	// stageStatus: saved → the status saying so published (the proxy read
	// back before it included).
	stageStatus = "status"
)

// applyStages lists every stage, to create the series before the first
// document.
var applyStages = []string{stageDeliver, stageVerify, stageApply, stagePersist, stageStatus}

// stageBuckets span a fast local apply (tens of µs) to a fleet-wide fan-out
// on a loaded host (seconds).
var stageBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func newApplyStageSeconds() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "switchyard_agent_apply_stage_seconds",
		Help: "Time each stage of applying a new desired-state document took on this agent, by service and stage: " +
			"deliver (coordinator signed it → it arrived; two clocks: the coordinator's and this host's), " +
			"verify (arrived → signature verified and decoded), apply (→ proxy driver accepted the weights), " +
			"persist (→ applied state saved locally), status (→ status published).",
		Buckets: stageBuckets,
	}, []string{"service", "stage"})
}

// pendingStages is what is known of the pending document's way so far.
type pendingStages struct {
	signedAt    time.Time
	deliveredAt time.Time
	verifiedAt  time.Time
}

// applied completes the stamps of a document once applied at appliedAt and
// saved at persistedAt, observes its agent-side stages, and returns them as
// the status carries them.
func (p pendingStages) applied(series *serviceSeries, ds *sv1.DesiredState, appliedAt, persistedAt time.Time) *sv1.ApplyTiming {
	obs := func(stage string, from, to time.Time) {
		if from.IsZero() || to.IsZero() {
			return
		}
		series.stages[stage].Observe(max(to.Sub(from), 0).Seconds())
	}
	obs(stageDeliver, p.signedAt, p.deliveredAt)
	obs(stageVerify, p.deliveredAt, p.verifiedAt)
	obs(stageApply, p.verifiedAt, appliedAt)
	obs(stagePersist, appliedAt, persistedAt)
	b := new(timingBlock)
	t := &b.timing
	t.Epoch, t.Generation = ds.GetEpoch(), ds.GetGeneration()
	t.DeliveredAt = optionalStamp(&b.stamps[0], p.deliveredAt)
	t.VerifiedAt = optionalStamp(&b.stamps[1], p.verifiedAt)
	t.AppliedAt = setStamp(&b.stamps[2], appliedAt)
	t.PersistedAt = setStamp(&b.stamps[3], persistedAt)
	return t
}

// timingBlock is an ApplyTiming and its stamps in one allocation instead of
// five: every applied document makes one, and they are dropped together.
type timingBlock struct {
	timing sv1.ApplyTiming
	stamps [4]timestamppb.Timestamp
}

// setStamp makes ts the time t (as timestamppb.New does) and returns it.
func setStamp(ts *timestamppb.Timestamp, t time.Time) *timestamppb.Timestamp {
	ts.Seconds, ts.Nanos = t.Unix(), int32(t.Nanosecond())
	return ts
}

// optionalStamp is setStamp, or nil for the zero time (a stage not stamped).
func optionalStamp(ts *timestamppb.Timestamp, t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return setStamp(ts, t)
}

// statusSeen is what the status loop remembers of a service: the fence
// whose status stage it observed last, and that stage's series (looked up
// once, not on every status).
type statusSeen struct {
	fence [2]uint64
	stage prometheus.Observer
}

// statusStages observes the status stage of every service whose newest
// applied document goes out for the first time in st; reported remembers
// each service's statusSeen. Only the status loop calls it.
func (m *metrics) statusStages(st *sv1.AgentStatus, reported map[string]*statusSeen) {
	at := st.GetAt().AsTime()
	for _, svc := range st.GetServices() {
		t := svc.GetApplyTiming()
		if t == nil || t.GetPersistedAt() == nil {
			continue
		}
		seen := reported[svc.GetService()]
		if seen == nil {
			seen = &statusSeen{stage: m.applyStages.WithLabelValues(svc.GetService(), stageStatus)}
			reported[svc.GetService()] = seen
		}
		fence := [2]uint64{t.GetEpoch(), t.GetGeneration()}
		if seen.fence == fence {
			continue
		}
		seen.fence = fence
		seen.stage.Observe(max(at.Sub(t.GetPersistedAt().AsTime()), 0).Seconds())
	}
}
