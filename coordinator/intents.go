package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/chaos"
	"github.com/switchyard/switchyard/coordinator/acl"
	"github.com/switchyard/switchyard/coordinator/drill"
	"github.com/switchyard/switchyard/coordinator/fsm"
	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// consumeIntents reads the intent stream through the one durable consumer
// and commits each intent. An intent is acknowledged only after it is
// committed (or refused for good), so one that arrives during an election
// is redelivered to the next leader; the state machine's memory of intent
// ids makes a redelivered intent apply once. A consumer that goes away
// while this node leads (deleted by hand, lost by the server) is created
// again rather than leaving the term without intents. Alongside, the
// refusals not recorded one by one are summarized (refusals.go).
func (s *Server) consumeIntents(ctx context.Context) {
	summarized := make(chan struct{})
	go func() {
		defer close(summarized)
		s.summarizeRefusals(ctx)
	}()
	defer func() { <-summarized }()
	// A reconnect leaves the pull requests made on the old connection
	// waiting on the consumer (see intentsAfterReconnect).
	reconnected := s.nc.StatusChanged(nats.CONNECTED)
	defer s.nc.RemoveStatusListener(reconnected)
	reset := true
	for {
		iter := s.openIntents(ctx, reset)
		if iter == nil {
			return
		}
		reset = false
		if s.readIntents(ctx, iter, reconnected) {
			iter.Stop()
			reset = s.intentsAfterReconnect()
			continue
		}
		iter.Stop()
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		s.log.Warn("intent consumer went away while leading; opening it again")
	}
}

// intentsAfterReconnect says whether the leader, back on the bus through
// another connection, creates the intent consumer anew, and logs it. The
// pull requests it made on the connection it lost (its NATS server went
// silent: that server still counts the connection as live) wait on the
// consumer until they expire, first in line: an intent sent meanwhile
// would be handed to one of them and seen again only after the consumer's
// AckWait. A new consumer has none of them and delivers every intent not
// yet acknowledged at once (the state machine answers those already
// committed as duplicates). Only a coordinator that a quorum confirms as
// the leader does so: one deposed while it was away must not delete the
// consumer its successor reads; it reopens the one there is.
func (s *Server) intentsAfterReconnect() bool {
	if err := s.readCurrent(); err != nil {
		s.log.Info("back on the bus; reading intents again without a new consumer", "nats", s.nc.ConnectedUrlRedacted(), "why", err)
		return false
	}
	s.log.Info("back on the bus as the leader; creating the intent consumer anew so that no intent waits on a pull request of the lost connection",
		"nats", s.nc.ConnectedUrlRedacted())
	return true
}

// intentPullExpiry and intentPullHeartbeat bound the leader's pull
// requests on the intent consumer: a request lost with a NATS server (the
// consumer's leader died, or the server the leader was connected to went
// silent) is noticed after two missed heartbeats and asked again, and one
// left behind on a connection the leader no longer uses lives at most
// intentPullExpiry, taking no intent meant for the new one after that.
// The client's defaults are 30 s and 15 s.
const (
	intentPullExpiry    = 10 * time.Second
	intentPullHeartbeat = 2 * time.Second
)

// openIntents returns an iterator over the intent consumer, retrying until
// it has one or ctx ends (nil then). reset starts a new leadership term
// with a fresh consumer (see ensureIntentConsumer); later opens in the same
// term must not delete the consumer a newer leader may be reading.
func (s *Server) openIntents(ctx context.Context, reset bool) jetstream.MessagesContext {
	for {
		cons, err := s.ensureIntentConsumer(ctx, reset)
		if err == nil {
			var iter jetstream.MessagesContext
			if iter, err = cons.Messages(jetstream.PullMaxMessages(64),
				jetstream.PullExpiry(intentPullExpiry), jetstream.PullHeartbeat(intentPullHeartbeat)); err == nil {
				return iter
			}
		}
		s.log.Warn("intent consumer unavailable; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// readIntents handles intents until ctx ends, the iterator closes or the
// connection is made again after it was lost (reconnected; true then).
func (s *Server) readIntents(ctx context.Context, iter jetstream.MessagesContext, reconnected <-chan nats.Status) bool {
	stop := context.AfterFunc(ctx, iter.Stop)
	defer stop()
	var again atomic.Bool
	watched := make(chan struct{})
	defer func() { <-watched }()
	done := make(chan struct{})
	defer close(done)
	go func() {
		defer close(watched)
		select {
		case <-done:
		case _, ok := <-reconnected:
			if ok {
				again.Store(true)
				iter.Stop()
			}
		}
	}()
	for {
		msg, err := iter.Next()
		if err != nil {
			if again.Load() && ctx.Err() == nil {
				return true
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) || ctx.Err() != nil {
				return false
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				s.log.Warn("no heartbeat from the intent consumer; asking it for intents again (its NATS server, or the one this coordinator is connected to, may be gone)",
					"silent_for", 2*intentPullHeartbeat)
				continue
			}
			s.log.Warn("reading intents", "err", err)
			continue
		}
		s.handleIntent(ctx, msg)
	}
}

// ensureIntentConsumer makes sure the intent consumer exists; with reset it
// deletes and recreates it first. Intents a previous leader had received but
// not acknowledged (it was killed, or lost leadership with a batch in hand)
// would otherwise wait out the consumer's AckWait (bus.IntentAckWait)
// before anyone saw them again. The stream is a work queue, so it holds
// only unacknowledged intents, and a new consumer delivers exactly those
// at once; the state machine answers the ones already committed as
// duplicates.
func (s *Server) ensureIntentConsumer(ctx context.Context, reset bool) (jetstream.Consumer, error) {
	if _, err := bus.EnsureIntentStream(ctx, s.js, s.replicas); err != nil {
		return nil, err
	}
	if reset {
		// Best effort: a consumer that cannot be deleted (JetStream
		// without a meta leader) may still deliver, so the leader reads
		// it as it is rather than no intent at all; what a lost pull
		// request holds then comes after the AckWait.
		err := s.js.DeleteConsumer(ctx, bus.IntentStream, bus.IntentConsumer)
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			s.log.Warn("could not create the intent consumer anew; reading the one there is", "consumer", bus.IntentConsumer, "err", err)
		}
	}
	return bus.EnsureIntentConsumer(ctx, s.js)
}

func (s *Server) handleIntent(ctx context.Context, msg jetstream.Msg) {
	reply := msg.Headers().Get(bus.ReplyHeader)
	asJSON := bus.IsJSON(msg.Data())
	opened, err := bus.OpenIntent(msg.Data())
	in := opened.Intent
	if in == nil {
		in = &sv1.Intent{}
	}
	if in.GetId() == "" {
		in.Id = msg.Headers().Get(bus.MsgIDHeader)
	}
	action := acl.Action(in)
	code := ""
	switch {
	case errors.Is(err, bus.ErrIntentUnsigned) && !s.fsm.State().Enforcing():
		// No admin yet: intents are taken as before roles existed.
		err = nil
	case errors.Is(err, bus.ErrIntentUnsigned):
		code = state.CodeUnsigned
	case errors.Is(err, bus.ErrIntentBadSignature):
		code = state.CodeBadSignature
	case errors.Is(err, spec.ErrInvalid):
		code = state.CodeInvalid // e.g. a JSON spec's version
	case err != nil:
		code = state.CodeMalformed
	}
	if err == nil {
		code, err = s.checkSigned(in, opened.Signer)
	}
	if err == nil && s.fsm.State().Enforcing() && in.GetAction() != nil {
		code, err = s.fsm.State().Authorize(opened.Signer, in)
	}
	if err == nil {
		err = precheck(in)
	}
	if err == nil {
		err = s.checkBlastRadius(in)
	}
	if err == nil && in.GetApplyRollout() != nil {
		err = s.checkAgentHooks(in)
		if err == nil {
			err = s.checkWebhookURLs(in)
		}
	}
	if err == nil {
		code, err = s.checkCurrent(in, opened.Signer)
	}
	if err != nil {
		if code == "" {
			code = state.CodeMalformed
			switch {
			case errors.Is(err, chaos.ErrBlastRadius):
				code = state.CodeBlastRadius
			case errors.Is(err, spec.ErrInvalid):
				code = state.CodeInvalid
			}
		}
		res := &sv1.IntentResult{IntentId: in.GetId(), Code: code, Error: err.Error()}
		if !s.refuseBeforeCommit(in, opened, action, msg.Subject(), code, err.Error()) {
			_ = msg.NakWithDelay(200 * time.Millisecond)
			return
		}
		s.metrics.intentsRejected.WithLabelValues(code).Inc()
		s.answer(reply, res, asJSON)
		// A message that will never commit must not come back.
		_ = msg.Term()
		return
	}

	entry := &sv1.IntentEntry{Intent: in, StampedAt: timestamppb.New(s.cfg.Clock.Now()), Signer: opened.Signer, IntentSha256: opened.Sha256,
		Rules: state.Rules}
	resp, index, err := s.raftApply(fsm.IntentType, entry)
	if err != nil {
		// Not committed here (or not known to be): leave the message
		// unacknowledged so the next leader gets it.
		s.log.Warn("intent not committed; leaving it to the next leader", "intent", in.GetId(), "err", err)
		_ = msg.NakWithDelay(200 * time.Millisecond)
		return
	}
	s.wakeAudit()
	res := resp.Applied.Result
	if svc := resp.Applied.Changed; len(svc) == 1 && res.GetAccepted() {
		// The sender waits for the bus to carry this generation; the
		// result kept in the state stays as committed.
		res = proto.CloneOf(res)
		res.Service = svc[0]
		res.Generation = s.fsm.State().Desired(svc[0]).GetGeneration()
	}
	log := s.log.With("intent", in.GetId(), "signer", opened.Signer, "index", index, "rollout", res.GetRolloutId())
	switch {
	case res.GetDuplicate():
		log.Info("intent was applied before; answering with the earlier result")
	case res.GetAccepted():
		s.metrics.intentsAccepted.Inc()
		log.Info("intent committed")
	default:
		s.metrics.intentsRejected.WithLabelValues(res.GetCode()).Inc()
		log.Info("intent refused", "code", res.GetCode(), "err", res.GetError())
	}
	s.answer(reply, res, asJSON)
	if err := msg.DoubleAck(ctx); err != nil {
		// Committed already; a redelivery will be answered as a duplicate.
		log.Warn("acknowledging intent", "err", err)
	}
}

// precheck refuses intents that could never commit, before they reach the
// log: the state machine would refuse them too, but nothing should be
// written for them.
func precheck(in *sv1.Intent) error {
	if in.GetId() == "" {
		return errors.New("intent.id: required (or a Nats-Msg-Id header)")
	}
	named := func(field, rollout string) error {
		if rollout == "" {
			return fmt.Errorf("%w: %s.rollout: required", spec.ErrInvalid, field)
		}
		return nil
	}
	switch act := in.GetAction().(type) {
	case *sv1.Intent_ApplyRollout:
		if act.ApplyRollout.GetSpec() == nil {
			return fmt.Errorf("%w: apply_rollout.spec: required", spec.ErrInvalid)
		}
		sp := proto.Clone(act.ApplyRollout.GetSpec()).(*sv1.RolloutSpec)
		spec.Default(sp)
		if err := spec.CheckFinite(sp); err != nil {
			return err
		}
		if err := spec.Validate(sp); err != nil {
			return err
		}
		// Refusals added after rollouts were in logs: here, before
		// commit, not in the state machine (spec.CheckPlan).
		return spec.CheckPlan(sp)
	case *sv1.Intent_AbortRollout:
		return named("abort_rollout", act.AbortRollout.GetRollout())
	case *sv1.Intent_PauseRollout:
		return named("pause_rollout", act.PauseRollout.GetRollout())
	case *sv1.Intent_ResumeRollout:
		return named("resume_rollout", act.ResumeRollout.GetRollout())
	case *sv1.Intent_ApproveRollout:
		return named("approve_rollout", act.ApproveRollout.GetRollout())
	case *sv1.Intent_UndoRollout:
		return named("undo_rollout", act.UndoRollout.GetRollout())
	case *sv1.Intent_PromoteRollout:
		return named("promote_rollout", act.PromoteRollout.GetRollout())
	case *sv1.Intent_RetryRollout:
		return named("retry_rollout", act.RetryRollout.GetRollout())
	case *sv1.Intent_RunDrill:
		if act.RunDrill.GetSpec() == nil {
			return fmt.Errorf("%w: run_drill.spec: required", spec.ErrInvalid)
		}
		sp := proto.Clone(act.RunDrill.GetSpec()).(*sv1.DrillSpec)
		chaos.DefaultDrill(sp)
		return chaos.ValidateDrill(sp)
	case *sv1.Intent_AbortDrill:
		if act.AbortDrill.GetDrill() == "" {
			return fmt.Errorf("%w: abort_drill.drill: required", spec.ErrInvalid)
		}
		return nil
	case *sv1.Intent_StopAllDrills:
		return nil
	case *sv1.Intent_Acl:
		if err := acl.CheckChange(act.Acl); err != nil {
			return fmt.Errorf("%w: %v", spec.ErrInvalid, err)
		}
		return nil
	default:
		return errors.New("intent names no action; want one of apply_rollout, abort_rollout, pause_rollout, resume_rollout, approve_rollout, promote_rollout, undo_rollout, retry_rollout, run_drill, abort_drill, stop_all_drills, acl")
	}
}

// checkCurrent makes the refusals that depend on the current state and
// that the state machine does not make itself, so that old log entries
// replay as they applied (state/precheck.go). An intent already applied is
// left to the state machine, which answers it with its earlier result;
// another intent sent under its id is refused.
func (s *Server) checkCurrent(in *sv1.Intent, signer string) (string, error) {
	st := s.fsm.State()
	if p := st.IntentTaken(in.GetId(), signer, bus.IntentFingerprint(in)); p != nil {
		return state.CodeIDTaken, state.TakenError(p)
	}
	if st.IntentResult(in.GetId()) != nil {
		return "", nil
	}
	if a := in.GetApplyRollout(); a != nil {
		sp := proto.Clone(a.GetSpec()).(*sv1.RolloutSpec)
		spec.Default(sp)
		if code, err := st.CheckNewRollout(sp); err != nil {
			return code, err
		}
		return st.CheckGates(sp)
	}
	if code, err := st.CheckAuthorName(signer, in); err != nil {
		return code, err
	}
	if c := in.GetAcl(); c != nil {
		if code, err := st.CheckPolicyRevision(c); err != nil {
			return code, err
		}
		return st.CheckAclRevoke(c)
	}
	return "", nil
}

// checkBlastRadius refuses, before anything is committed, a drill that
// would touch more nodes than its caps (or the admins' caps) allow on the
// fleet as this leader sees it now. A rollback drill's targets are its
// rollout's current wave. The cap is checked again when the drill starts,
// and by every agent.
func (s *Server) checkBlastRadius(in *sv1.Intent) error {
	run := in.GetRunDrill()
	if run == nil {
		return nil
	}
	sp := proto.Clone(run.GetSpec()).(*sv1.DrillSpec)
	chaos.DefaultDrill(sp)
	st := s.fsm.State()
	if err := acl.CheckDrillCaps(st.Acl().GetPolicy(), sp); err != nil {
		return fmt.Errorf("%w: %v", chaos.ErrBlastRadius, err)
	}
	live := s.fleet.Live(sp.GetService())
	if sp.GetRollout() == "" {
		return chaos.CheckCap(sp, len(chaos.Select(sp, live)), len(live))
	}
	// A rollout that is not progressing is refused by the state machine
	// with its own reason; only the cap is decided here.
	if _, err := drill.Targets(&sv1.Drill{Spec: sp}, st, live); errors.Is(err, chaos.ErrBlastRadius) {
		return err
	}
	return nil
}

// answer sends an intent's result to the subject the sender named, in the
// encoding the intent came in.
func (s *Server) answer(reply string, res *sv1.IntentResult, asJSON bool) {
	if reply == "" {
		return
	}
	if !bus.IsInbox(reply) {
		s.metrics.repliesRefused.Inc()
		s.log.Warn("intent result not sent: the intent's reply header names a subject that is not an inbox", "intent", res.GetIntentId(),
			"reply", reply, "header", bus.ReplyHeader)
		return
	}
	marshal := proto.Marshal
	if asJSON {
		marshal = protojson.Marshal
	}
	b, err := marshal(res)
	if err == nil {
		err = s.nc.Publish(reply, b)
	}
	if err != nil {
		s.log.Warn("answering intent", "intent", res.GetIntentId(), "err", err)
	}
}
