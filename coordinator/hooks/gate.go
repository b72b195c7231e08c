// Package hooks is the leader's webhook machinery: the gates that hold a
// rollout at a hook point until its gating webhooks answered, and the
// caller that makes every due webhook call and records its outcome in Raft
// before anything acts on it.
package hooks

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Verdict is a gate's answer for one rollout at one key.
type Verdict struct {
	// Open lets the rollout pass: every gating webhook at the point
	// answered success at this key.
	Open bool
	// Due names webhooks whose call the leader must make due now.
	Due []string
	// Waiting says what the rollout waits for while the gate is shut.
	Waiting string
}

// Evaluate is the pure gate: where the rollout's webhooks at point stand
// for key at now. Notifying webhooks are made due but never waited for.
func Evaluate(r *sv1.Rollout, point sv1.HookPoint, key string, now time.Time) Verdict {
	v := Verdict{Open: true}
	var waiting []string
	for _, w := range spec.Webhooks(r.GetSpec(), point) {
		last := state.LatestCall(r, key, w.GetName())
		switch {
		case last == nil, last.GetOutcome() == sv1.HookOutcome_HOOK_OUTCOME_CANCELLED:
			v.Due = append(v.Due, w.GetName())
			if w.GetGating() {
				v.Open = false
				waiting = append(waiting, fmt.Sprintf("webhook %s at %s: calling", w.GetName(), key))
			}
		case !w.GetGating():
		case last.GetOutcome() == sv1.HookOutcome_HOOK_OUTCOME_SUCCEEDED:
		case last.GetOutcome() == sv1.HookOutcome_HOOK_OUTCOME_PENDING:
			v.Open = false
			waiting = append(waiting, fmt.Sprintf("webhook %s at %s: calling (call %d)", w.GetName(), key, last.GetSeq()))
		case w.GetOnFailure() == sv1.HookFailure_HOOK_FAILURE_PAUSE:
			// The failure paused the rollout; it is evaluated again only
			// once an operator resumed it, which is the signal to ask again.
			v.Open = false
			v.Due = append(v.Due, w.GetName())
			waiting = append(waiting, fmt.Sprintf("webhook %s at %s: asking again after a resume (last answer: %s)", w.GetName(), key, last.GetDetail()))
		default: // failed and holding
			v.Open = false
			again := last.GetAnsweredAt().AsTime().Add(w.GetRecheck().AsDuration())
			if !now.Before(again) {
				v.Due = append(v.Due, w.GetName())
				waiting = append(waiting, fmt.Sprintf("webhook %s at %s refused (%s); asking again", w.GetName(), key, last.GetDetail()))
				continue
			}
			waiting = append(waiting, fmt.Sprintf("webhook %s at %s refused (%s); asking again at %s",
				w.GetName(), key, last.GetDetail(), again.UTC().Format(time.TimeOnly)+" UTC"))
		}
	}
	v.Waiting = strings.Join(waiting, "; ")
	return v
}

// Point says which hook point and key r's move to (toWave, toStep)
// passes; promote is the move to all traffic. Running the last wave past its
// last step gives it all traffic, so that move is the promotion as far as
// traffic goes and passes the pre-promotion point; the Promote that follows
// finds that gate open. A wave's end is otherwise a step like the others
// (its nodes go to 100%). A move that goes nowhere new passes none (ok
// false).
func Point(r *sv1.Rollout, toWave, toStep int, promote bool) (p sv1.HookPoint, key string, ok bool) {
	plan := spec.Compile(r.GetSpec())
	switch {
	case promote, toWave == len(plan)-1 && toStep >= len(plan[toWave].Steps):
		return sv1.HookPoint_HOOK_POINT_PRE_PROMOTION, state.KeyPrePromotion, true
	case toWave != int(r.GetWave()):
		return sv1.HookPoint_HOOK_POINT_PRE_WAVE, state.KeyPreWave(toWave), true
	case toWave >= len(plan) || toStep > len(plan[toWave].Steps):
		return 0, "", false
	}
	return sv1.HookPoint_HOOK_POINT_PRE_STEP, state.KeyPreStep(toWave, toStep), true
}

// Raft is how the gate commits its decisions.
type Raft interface {
	HookDue(*sv1.HookDueEntry) error
	Start(*sv1.RolloutStartEntry) error
}

// Gate holds the rollout controller's moves at webhook gates.
type Gate struct {
	Raft Raft
}

// Hold is asked before the controller moves r from its position to
// (toWave, toStep), or promotes it. It makes due the calls the move needs
// and returns why the move must wait, "" when it may go.
func (g *Gate) Hold(r *sv1.Rollout, toWave, toStep int, promote bool, now time.Time) (string, error) {
	point, key, ok := Point(r, toWave, toStep, promote)
	if !ok {
		return "", nil
	}
	return g.hold(r, point, key, now)
}

// Start is asked for a rollout its pre-rollout gates hold: once they are
// open it lets the rollout move its first traffic.
func (g *Gate) Start(r *sv1.Rollout, now time.Time) (string, error) {
	waiting, err := g.hold(r, sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT, state.KeyPreRollout, now)
	if err != nil || waiting != "" {
		return waiting, err
	}
	return "", g.Raft.Start(&sv1.RolloutStartEntry{Rollout: r.GetId(), StampedAt: timestamppb.New(now)})
}

func (g *Gate) hold(r *sv1.Rollout, point sv1.HookPoint, key string, now time.Time) (string, error) {
	v := Evaluate(r, point, key, now)
	if len(v.Due) > 0 {
		err := g.Raft.HookDue(&sv1.HookDueEntry{Rollout: r.GetId(), Key: key, Webhooks: v.Due,
			Generation: r.GetGeneration(), StampedAt: timestamppb.New(now)})
		if err != nil {
			return "", err
		}
	}
	if v.Open {
		return "", nil
	}
	return v.Waiting, nil
}

// Waiting says, without committing anything, what gate a rollout waits at
// before the move it is ready for; "" when none holds it.
func Waiting(r *sv1.Rollout, toWave, toStep int, promote bool, now time.Time) string {
	point, key, ok := Point(r, toWave, toStep, promote)
	if r.GetHoldStart() {
		point, key, ok = sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT, state.KeyPreRollout, true
	}
	if !ok {
		return ""
	}
	v := Evaluate(r, point, key, now)
	if v.Open {
		return ""
	}
	return v.Waiting
}
