package coordinator

import (
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/coordinator/hooks"
	"github.com/switchyard/switchyard/coordinator/rollout"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Rollouts answers a rollouts query from this coordinator's replica and its
// view of the fleet.
func (s *Server) Rollouts(q *sv1.RolloutsQuery) (*sv1.RolloutsAnswer, error) {
	_, leader := s.raft.LeaderWithID()
	ans := &sv1.RolloutsAnswer{AnsweredBy: s.cfg.NodeID, Leader: string(leader)}
	var rollouts []*sv1.Rollout
	st := s.fsm.State()
	switch {
	case q.GetRollout() != "" && (q.GetService() != "" || q.GetLimit() != 0):
		return nil, errors.New("service and limit are for a list of rollouts; a query that names a rollout takes neither")
	case q.GetRollout() != "":
		r := st.Rollout(q.GetRollout())
		if r == nil {
			if f := st.Forgotten(q.GetRollout()); f != nil {
				return nil, state.ForgottenError(f)
			}
			return nil, fmt.Errorf("no rollout named %q", q.GetRollout())
		}
		rollouts = append(rollouts, r)
	default:
		var keep func(*sv1.Rollout) bool
		if svc := q.GetService(); svc != "" {
			keep = func(r *sv1.Rollout) bool { return r.GetSpec().GetService() == svc }
		}
		var omitted int
		rollouts, omitted = st.NewestRollouts(keep, int(q.GetLimit()))
		ans.Omitted = uint32(omitted)
		ans.Forgotten = uint32(st.ForgottenOf(q.GetService()))
	}
	ans.Rollouts = s.rolloutViews(st, rollouts, q.GetSummary())
	return ans, nil
}

// rolloutViews is each rollout as a read sees it, with its nodes (counted
// only, when summary) and, while it is under way, what it waits for.
func (s *Server) rolloutViews(st *state.State, rollouts []*sv1.Rollout, summary bool) []*sv1.RolloutView {
	var views []*sv1.RolloutView
	c := s.controller()
	now := s.cfg.Clock.Now()
	// A summary counts each rollout's nodes from the fleet's tallies, and
	// reads a service's nodes, once, only for a rollout still going: its
	// waiting reasons look at them. A history of finished rollouts then
	// costs O(rollouts), not O(rollouts' services × nodes).
	read := map[string][]*sv1.NodeView{}
	readOnce := func(svc string) []*sv1.NodeView {
		nodes, ok := read[svc]
		if !ok {
			nodes = s.fleet.nodesFor(svc)
			read[svc] = nodes
		}
		return nodes
	}
	for _, r := range rollouts {
		svc := r.GetSpec().GetService()
		want := bus.Fence{Epoch: st.Epoch(), Generation: r.GetGeneration()}
		var nodes []*sv1.NodeView
		var applied, live int
		var held []string
		if summary {
			applied, live, held = s.fleet.ConvergedAt(svc, want)
		} else {
			// Labelled with this rollout's waves: a list of its own.
			nodes = s.fleet.nodesFor(svc)
			applied, live, held = s.fleet.convergedService(svc, nodes, want)
		}
		view := &sv1.RolloutView{Rollout: r, Converged: uint32(applied), Live: uint32(live), Held: held, Position: spec.Position(r)}
		if !summary {
			labelWaves(r, nodes)
			view.Nodes = nodes
		}
		if r.GetHoldStart() && r.GetPhase() == sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING {
			plan := spec.Compile(r.GetSpec())
			view.Position = fmt.Sprintf("before wave 1/%d %s, no traffic moved", len(plan), plan[0].Wave.GetName())
		}
		if !state.Terminal(r.GetPhase()) {
			obs := c.Observe(r, now)
			d := rollout.Decide(r, obs)
			view.Waiting = d.Waiting
			if d.Action == rollout.Wait {
				if summary {
					nodes = readOnce(svc)
				}
				view.Waiting += emptyWave(r, nodes) + guardMoved(r, nodes, want)
			}
			if (r.GetHoldStart() && !r.GetStartGate()) || d.Action == rollout.Advance || d.Action == rollout.Promote {
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
		views = append(views, view)
	}
	return views
}

// serveQuery adapts a typed query handler to a NATS handler: decode the
// request, answer with the result or with an error header.
func serveQuery[Q any, PQ interface {
	*Q
	proto.Message
}, A proto.Message](s *Server, handle func(PQ) (A, error)) nats.MsgHandler {
	return serveRead(s, s.readCurrent, handle)
}

// serveFleetQuery is serveQuery for a read that counts the fleet's nodes:
// current only once this coordinator's view of the fleet is whole.
func serveFleetQuery[Q any, PQ interface {
	*Q
	proto.Message
}, A proto.Message](s *Server, handle func(PQ) (A, error)) nats.MsgHandler {
	return serveRead(s, s.readCurrentFleet, handle)
}

func serveRead[Q any, PQ interface {
	*Q
	proto.Message
}, A proto.Message](s *Server, current func() error, handle func(PQ) (A, error)) nats.MsgHandler {
	return func(msg *nats.Msg) {
		if msg.Reply != "" && !bus.IsInbox(msg.Reply) {
			s.metrics.repliesRefused.Inc()
			s.log.Debug("query not answered: its reply subject is not an inbox", "subject", msg.Subject, "reply", msg.Reply)
			return
		}
		reply := nats.NewMsg(msg.Reply)
		if msg.Header.Get(bus.StaleHeader) != "" {
			reply.Header.Set(bus.StaleHeader, s.cfg.NodeID)
			s.metrics.queries.WithLabelValues(queryStale).Inc()
		} else if err := current(); err != nil {
			s.metrics.queries.WithLabelValues(queryDeclined).Inc()
			reply.Header.Set(bus.NotCurrentHeader, s.cfg.NodeID)
			reply.Header.Set(bus.ErrorHeader, err.Error())
			if err := bus.Respond(s.nc, msg, reply); err != nil {
				s.log.Debug("declining query", "subject", msg.Subject, "err", err)
			}
			return
		} else {
			s.metrics.queries.WithLabelValues(queryCurrent).Inc()
		}
		q := PQ(new(Q))
		var ans A
		asJSON := bus.IsJSON(msg.Data)
		err := decodeQuery(msg.Data, q, asJSON)
		if err != nil {
			s.metrics.queriesMalformed.Inc()
		} else {
			ans, err = handle(q)
		}
		if err == nil {
			if asJSON {
				reply.Data, err = protojson.Marshal(ans)
			} else {
				reply.Data, err = proto.Marshal(ans)
			}
		}
		if err != nil {
			reply.Header.Set(bus.ErrorHeader, err.Error())
		}
		if err := bus.Respond(s.nc, msg, reply); err != nil {
			s.log.Warn("answering query", "subject", msg.Subject, "bytes", len(reply.Data), "err", err)
		}
	}
}

// decodeQuery reads a query as protobuf, or as protojson when it is a JSON
// object. Bytes that are neither, or protobuf with fields this query does
// not have, are refused: garbage gets an error, never an answer to an empty
// query.
func decodeQuery(data []byte, q proto.Message, asJSON bool) error {
	name := q.ProtoReflect().Descriptor().Name()
	if asJSON {
		if err := protojson.Unmarshal(data, q); err != nil {
			return fmt.Errorf("query is not a valid %s in JSON: %v", name, err)
		}
		return nil
	}
	if err := proto.Unmarshal(data, q); err != nil {
		return fmt.Errorf("query does not decode as a %s (protobuf, or a JSON object): %v", name, err)
	}
	if len(q.ProtoReflect().GetUnknown()) > 0 {
		return fmt.Errorf("query does not decode as a %s (protobuf, or a JSON object): it has fields a %s does not", name, name)
	}
	return nil
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
			if f := st.ForgottenDrill(q.GetDrill()); f != nil {
				return nil, state.ForgottenDrillError(f)
			}
			return nil, fmt.Errorf("no drill named %q", q.GetDrill())
		}
		drills = append(drills, d)
	} else {
		drills = st.Drills()
	}
	ans := &sv1.DrillsAnswer{KillSwitch: killSwitch(st.Drills())}
	for _, d := range drills {
		ans.Drills = append(ans.Drills, &sv1.DrillView{Drill: d, Active: s.fleet.activeFaults(d.GetId())})
	}
	return ans, nil
}

// IntentResult answers with the recorded result of an applied intent.
func (s *Server) IntentResult(q *sv1.IntentQuery) (*sv1.IntentResult, error) {
	st := s.fsm.State()
	if len(q.GetFingerprint()) > 0 {
		if p := st.IntentTaken(q.GetId(), q.GetSigner(), q.GetFingerprint()); p != nil {
			return &sv1.IntentResult{IntentId: q.GetId(), Code: state.CodeIDTaken, Error: state.TakenError(p).Error()}, nil
		}
	}
	res := st.IntentResult(q.GetId())
	if res == nil {
		return nil, fmt.Errorf("no applied intent with id %q", q.GetId())
	}
	return res, nil
}

// Results of read queries, for the queries metric.
const (
	queryCurrent  = "current"
	queryStale    = "stale"
	queryDeclined = "declined"
)

// ErrNotCurrent is returned for a read that this coordinator cannot answer
// as current: it does not lead, has not finished taking over, or could not
// confirm with a quorum that it still leads.
var ErrNotCurrent = errors.New("this coordinator cannot answer as current")

// verifyTimeout bounds the leadership check of one read.
const verifyTimeout = time.Second

// readCurrentFleet is readCurrent for a read that counts the fleet's nodes
// (convergence, the fleet's lists): a leader that started, or came back on
// the bus, moments ago has heard from only some nodes, and would count a
// rollout converged on those. It declines until its view is whole (at most
// statusAskGrace after it asked every agent); the client asks again.
func (s *Server) readCurrentFleet() error {
	if err := s.readCurrent(); err != nil {
		return err
	}
	if !s.fleet.Settled() {
		return fmt.Errorf("%w: coordinator %s is still hearing from the fleet (it started or came back on the bus moments ago); "+
			"nodes not heard from yet would be missing from its counts", ErrNotCurrent, s.cfg.NodeID)
	}
	return nil
}

// readCurrent checks that this coordinator's replica is current: it leads,
// it has applied everything committed before its term (leadership
// established after Barrier), and a quorum still follows it now
// (VerifyLeader). A deposed leader that does not know it yet, a follower
// that lags, a node cut off from the others: all decline, and the client
// asks again.
func (s *Server) readCurrent() error {
	_, leader := s.raft.LeaderWithID()
	if !s.established.Load() {
		if leader == "" {
			return fmt.Errorf("%w: coordinator %s knows no leader", ErrNotCurrent, s.cfg.NodeID)
		}
		return fmt.Errorf("%w: coordinator %s is not the leader (the leader is %s)", ErrNotCurrent, s.cfg.NodeID, leader)
	}
	done := make(chan error, 1)
	go func() { done <- s.raft.VerifyLeader().Error() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%w: coordinator %s could not confirm it still leads: %v", ErrNotCurrent, s.cfg.NodeID, err)
		}
		return nil
	case <-time.After(verifyTimeout):
		return fmt.Errorf("%w: coordinator %s could not confirm it still leads within %s", ErrNotCurrent, s.cfg.NodeID, verifyTimeout)
	}
}
