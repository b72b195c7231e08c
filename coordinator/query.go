package coordinator

import (
	"fmt"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
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
	for _, r := range rollouts {
		nodes := s.fleet.nodesFor(r.GetSpec().GetService())
		applied, _ := converged(nodes, r.GetGeneration())
		ans.Rollouts = append(ans.Rollouts, &sv1.RolloutView{Rollout: r, Nodes: nodes, Converged: uint32(applied)})
	}
	return ans, nil
}

func (s *Server) handleRolloutsQuery(msg *nats.Msg) {
	var q sv1.RolloutsQuery
	reply := nats.NewMsg(msg.Reply)
	ans, err := func() (*sv1.RolloutsAnswer, error) {
		if err := proto.Unmarshal(msg.Data, &q); err != nil {
			return nil, fmt.Errorf("query does not decode: %v", err)
		}
		return s.Rollouts(&q)
	}()
	if err == nil {
		reply.Data, err = proto.Marshal(ans)
	}
	if err != nil {
		reply.Header.Set(bus.ErrorHeader, err.Error())
	}
	if err := msg.RespondMsg(reply); err != nil {
		s.log.Debug("answering query", "err", err)
	}
}
