package rollout

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/hooks"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// simGate is the simulator's webhook gate: it makes calls due exactly as
// the leader's gate does and has every webhook answer success at once, so
// a simulation shows where each webhook would be called and gate.
type simGate struct {
	st    *state.State
	raft  *simRaft
	start time.Time
	res   *SimResult
}

var _ Gate = (*simGate)(nil)

func (g *simGate) Hold(r *sv1.Rollout, toWave, toStep int, promote bool, now time.Time) (string, error) {
	if point, key, ok := hooks.Point(r, toWave, toStep, promote); ok {
		g.due(r, point, key, now)
	}
	return "", nil
}

func (g *simGate) Start(r *sv1.Rollout, now time.Time) (string, error) {
	g.due(r, sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT, state.KeyPreRollout, now)
	g.st.ApplyStart(g.raft.next(), &sv1.RolloutStartEntry{Rollout: r.GetId(), StampedAt: timestamppb.New(now)})
	return "", nil
}

func (g *simGate) due(r *sv1.Rollout, point sv1.HookPoint, key string, now time.Time) {
	if v := hooks.Evaluate(r, point, key, now); len(v.Due) > 0 {
		g.st.ApplyHookDue(g.raft.next(), &sv1.HookDueEntry{Rollout: r.GetId(), Key: key, Webhooks: v.Due,
			Generation: r.GetGeneration(), StampedAt: timestamppb.New(now)})
	}
	g.answer(now)
}

// answer answers every due call as a success, recording an event for each.
func (g *simGate) answer(now time.Time) {
	for _, p := range g.st.PendingCalls() {
		how := "notifies"
		if p.Webhook.GetGating() {
			how = "gates"
		}
		g.res.Events = append(g.res.Events, Event{At: now, Offset: now.Sub(g.start), Action: Webhook, Phase: p.Rollout.GetPhase(),
			Message: fmt.Sprintf("webhook %s %s here (%s, %s); simulated as answering 2xx", p.Webhook.GetName(), how,
				spec.PointName(p.Webhook.GetPoint()), p.Call.GetKey())})
		g.st.ApplyHookResult(g.raft.next(), &sv1.HookResultEntry{Rollout: p.Rollout.GetId(), Key: p.Call.GetKey(),
			Webhook: p.Call.GetWebhook(), Seq: p.Call.GetSeq(), Ok: true, Attempts: 1, Detail: "simulated", StampedAt: timestamppb.New(now), Rules: state.Rules})
	}
}
