package coordinator

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Stages of the decision path, the values of the "stage" label of
// switchyard_coordinator_decision_stage_seconds, in the order a decision
// goes through them.
const (
	// stageCommit: the leader stamped the decision (the entry's issued-at)
	// → the entry was committed and applied on the leader.
	stageCommit = "commit"
	// stagePublish: committed → the signed document's put acknowledged by
	// JetStream.
	stagePublish = "publish"
	// stageDeliver: the document signed and sent → it arrived on an agent
	// (two clocks: this coordinator's and the agent's). It overlaps
	// publish: agents may hold the document before the acknowledgement of
	// the put is back.
	stageDeliver = "deliver"
	// stageVerify: arrived → verified and decoded on the agent.
	stageVerify = "verify"
	// stageApply: verified → the agent's proxy driver accepted the weights.
	stageApply = "apply"
	// stagePersist: applied → the agent saved its applied state.
	stagePersist = "persist"
	// stageStatus: saved → the agent published its status saying so.
	stageStatus = "status"
	// stageReport: the agent published its status → this coordinator
	// received it (two clocks).
	stageReport = "report"
	// stageTotal: the decision stamped → this coordinator received the
	// agent's status for it (two clocks when the agent runs elsewhere;
	// the stamp and the receipt are both this coordinator's).
	stageTotal = "total"
)

var decisionStages = []string{stageCommit, stagePublish, stageDeliver, stageVerify, stageApply, stagePersist, stageStatus, stageReport, stageTotal}

func newDecisionStageSeconds() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "switchyard_coordinator_decision_stage_seconds",
		Help: "Time each stage of the decision path took, by stage, one observation per decision (commit, publish) or per agent and decision (the rest): " +
			"commit (decision stamped → committed on the leader), publish (→ put acknowledged by JetStream), " +
			"deliver (document signed and sent → arrived on the agent, overlapping publish; two clocks, this coordinator's and the agent's), verify, apply, persist, status (agent clock), " +
			"report (agent published its status → received here; two clocks), total (decision stamped → status received here). " +
			"deliver and total are observed only by the coordinator that published the document.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"stage"})
}

// DecisionTiming is when one desired-state document went through the
// coordinator's stages, by this coordinator's clock.
type DecisionTiming struct {
	Fence bus.Fence
	// IssuedAt is the leader's stamp on the decision.
	IssuedAt time.Time
	// CommittedAt is when the entry was applied on this coordinator; zero
	// when the document was written again without a new commit (a new
	// leader republishing).
	CommittedAt time.Time
	// SignedAt is when the document was signed, right before the put.
	SignedAt time.Time
	// AckedAt is when JetStream acknowledged the put.
	AckedAt time.Time
}

// stageClock times the decision path: the coordinator's own stages when it
// publishes a document, and each agent's when its status says it applied
// one.
type stageClock struct {
	seconds *prometheus.HistogramVec

	mu sync.Mutex
	// published is the latest document this coordinator wrote, by service.
	published map[string]DecisionTiming
}

func newStageClock(h *prometheus.HistogramVec) *stageClock {
	for _, s := range decisionStages {
		h.WithLabelValues(s)
	}
	return &stageClock{seconds: h, published: map[string]DecisionTiming{}}
}

func (c *stageClock) observe(stage string, from, to time.Time) {
	if from.IsZero() || to.IsZero() {
		return
	}
	c.seconds.WithLabelValues(stage).Observe(max(to.Sub(from), 0).Seconds())
}

// wrote records a document this coordinator's put wrote and observes the
// coordinator's stages of it.
func (c *stageClock) wrote(service string, t DecisionTiming) {
	c.mu.Lock()
	c.published[service] = t
	c.mu.Unlock()
	c.observe(stageCommit, t.IssuedAt, t.CommittedAt)
	c.observe(stagePublish, t.CommittedAt, t.AckedAt)
}

// timing is the latest document this coordinator wrote for service.
func (c *stageClock) timing(service string) (DecisionTiming, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, ok := c.published[service]
	return t, ok
}

// status observes the agent's stages of every document st reports applied
// for the first time; prev is the node's previous status (nil for none), so
// a heartbeat repeating the same stamps counts nothing. Its cost is
// per status, independent of the fleet's size.
func (c *stageClock) status(prev, st *sv1.AgentStatus, received time.Time) {
	for _, svc := range st.GetServices() {
		t := svc.GetApplyTiming()
		if t == nil || sameTiming(prev, svc.GetService(), t) {
			continue
		}
		fence := bus.Fence{Epoch: t.GetEpoch(), Generation: t.GetGeneration()}
		delivered, verified := stampTime(t.GetDeliveredAt()), stampTime(t.GetVerifiedAt())
		applied, persisted := stampTime(t.GetAppliedAt()), stampTime(t.GetPersistedAt())
		sent := stampTime(st.GetAt())
		if pub, ok := c.timing(svc.GetService()); ok && pub.Fence == fence {
			c.observe(stageDeliver, pub.SignedAt, delivered)
			c.observe(stageTotal, pub.IssuedAt, received)
		}
		c.observe(stageVerify, delivered, verified)
		c.observe(stageApply, verified, applied)
		c.observe(stagePersist, applied, persisted)
		c.observe(stageStatus, persisted, sent)
		c.observe(stageReport, sent, received)
	}
}

// stampTime is ts as a time, zero for none.
func stampTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// sameTiming reports whether prev already carried t's stamps for service.
func sameTiming(prev *sv1.AgentStatus, service string, t *sv1.ApplyTiming) bool {
	for _, svc := range prev.GetServices() {
		if svc.GetService() != service {
			continue
		}
		p := svc.GetApplyTiming()
		return p.GetEpoch() == t.GetEpoch() && p.GetGeneration() == t.GetGeneration() &&
			p.GetPersistedAt().AsTime().Equal(t.GetPersistedAt().AsTime())
	}
	return false
}

// DecisionTiming returns when the latest desired state of service this
// coordinator wrote was decided, committed and acknowledged; ok is false
// when it wrote none (it does not lead, or has not published yet).
func (s *Server) DecisionTiming(service string) (t DecisionTiming, ok bool) {
	return s.stages.timing(service)
}
