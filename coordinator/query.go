package coordinator

import (
	"fmt"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/hooks"
	"github.com/switchyard/switchyard/coordinator/rollout"
	"github.com/switchyard/switchyard/coordinator/state"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Rollouts answers a rollouts query from this coordinator's replica and its
// view of the fleet.
func (s *Server) Rollouts(q *sv1.RolloutsQuery) (*sv1.RolloutsAnswer, error) {
	_, leader := s.raft.LeaderWithID()
	ans := &sv1.RolloutsAnswer{AnsweredBy: s.cfg.NodeID, Leader: string(leader)}
	var rollouts []*sv1.Rollout
	st := s.fsm.State()
	if q.GetRollout() != "" {
		r := st.Rollout(q.GetRollout())
		if r == nil {
			return nil, fmt.Errorf("no rollout named %q", q.GetRollout())
		}
		rollouts = append(rollouts, r)
	} else {
		rollouts = st.Rollouts()
	}
	c := s.controller()
	now := s.cfg.Clock.Now()
	for _, r := range rollouts {
		nodes := s.fleet.nodesFor(r.GetSpec().GetService())
		applied, _ := converged(nodes, bus.Fence{Epoch: st.Epoch(), Generation: r.GetGeneration()})
		view := &sv1.RolloutView{Rollout: r, Nodes: nodes, Converged: uint32(applied)}
		if !state.Terminal(r.GetPhase()) {
			obs := c.Observe(r, now)
			d := rollout.Decide(r, obs)
			view.Waiting = d.Waiting
			if r.GetHoldStart() || d.Action == rollout.Advance || d.Action == rollout.Promote {
				if w := hooks.Waiting(r, d.ToWave, d.ToStep, d.Action == rollout.Promote, now); w != "" {
					view.Waiting = w
				}
			}
			view.Analysis = obs.Analysis.Sequential
			wins := obs.Analysis.Windows
			for _, w := range wins[max(0, len(wins)-6):] {
				view.Windows = append(view.Windows, w.Proto())
			}
		}
		ans.Rollouts = append(ans.Rollouts, view)
	}
	return ans, nil
}

// serveQuery adapts a typed query handler to a NATS handler: decode the
// request, answer with the result or with an error header.
func serveQuery[Q any, PQ interface {
	*Q
	proto.Message
}, A proto.Message](s *Server, handle func(PQ) (A, error)) nats.MsgHandler {
	return func(msg *nats.Msg) {
		reply := nats.NewMsg(msg.Reply)
		q := PQ(new(Q))
		var ans A
		err := proto.Unmarshal(msg.Data, q)
		if err != nil {
			err = fmt.Errorf("query does not decode: %v", err)
		} else {
			ans, err = handle(q)
		}
		if err == nil {
			reply.Data, err = proto.Marshal(ans)
		}
		if err != nil {
			reply.Header.Set(bus.ErrorHeader, err.Error())
		}
		if err := msg.RespondMsg(reply); err != nil {
			s.log.Debug("answering query", "subject", msg.Subject, "err", err)
		}
	}
}

// Fleet answers with the nodes that run a service.
func (s *Server) Fleet(q *sv1.FleetQuery) (*sv1.FleetAnswer, error) {
	if q.GetService() == "" {
		return nil, fmt.Errorf("fleet query: service is required")
	}
	return &sv1.FleetAnswer{Nodes: s.fleet.nodesFor(q.GetService())}, nil
}

// Drills answers with drills and which targets report their fault active.
func (s *Server) Drills(q *sv1.DrillsQuery) (*sv1.DrillsAnswer, error) {
	st := s.fsm.State()
	var drills []*sv1.Drill
	if q.GetDrill() != "" {
		d := st.Drill(q.GetDrill())
		if d == nil {
			return nil, fmt.Errorf("no drill named %q", q.GetDrill())
		}
		drills = append(drills, d)
	} else {
		drills = st.Drills()
	}
	ans := &sv1.DrillsAnswer{}
	for _, d := range drills {
		ans.Drills = append(ans.Drills, &sv1.DrillView{Drill: d, Active: s.fleet.activeFaults(d.GetId())})
	}
	return ans, nil
}

// IntentResult answers with the recorded result of an applied intent.
func (s *Server) IntentResult(q *sv1.IntentQuery) (*sv1.IntentResult, error) {
	res := s.fsm.State().IntentResult(q.GetId())
	if res == nil {
		return nil, fmt.Errorf("no applied intent with id %q", q.GetId())
	}
	return res, nil
}
