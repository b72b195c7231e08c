package bus

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// IntentFingerprint is what an intent asks for: its hash without
// created_at, which a sender sets anew each time it sends. A resend of the
// same intent (a CI job retried, the same command run again) has the same
// fingerprint; another intent sent with the same id has another.
func IntentFingerprint(in *sv1.Intent) []byte {
	c := proto.CloneOf(in)
	c.CreatedAt = nil
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(b)
	return sum[:]
}

// CodeIDTaken is the code of an intent refused because another intent was
// sent with its id before.
const CodeIDTaken = "id_taken"

// ErrNoResult is returned by SendIntent when the intent was stored on the
// stream but no coordinator answered before the context ended. The intent is
// not lost: a leader will apply it when there is one.
var ErrNoResult = errors.New("intent stored, but no coordinator answered in time")

// SendIntent publishes a bare (unsigned) intent to the intent stream,
// deduplicated by its id, and waits for the coordinators' result. Once the
// cluster has an admin, coordinators refuse bare intents: use
// SendSignedIntent.
func SendIntent(ctx context.Context, nc *nats.Conn, kind string, in *sv1.Intent) (*sv1.IntentResult, error) {
	return SendSignedIntent(ctx, nc, kind, in, nil)
}

// SendSignedIntent signs an intent with signer (nil sends it bare),
// publishes it to the intent stream, deduplicated by its id, and waits for
// the coordinators' result.
func SendSignedIntent(ctx context.Context, nc *nats.Conn, kind string, in *sv1.Intent, signer *IntentSigner) (*sv1.IntentResult, error) {
	if in.GetId() == "" {
		return nil, fmt.Errorf("intent: id is required")
	}
	var body []byte
	var err error
	if signer != nil {
		if in.GetCreatedAt() == nil {
			// The leader refuses signed intents that are not fresh.
			in.CreatedAt = timestamppb.Now()
		}
		var env *sv1.SignedIntent
		if env, err = signer.Sign(in); err == nil {
			body, err = proto.Marshal(env)
		}
	} else {
		body, err = proto.Marshal(in)
	}
	if err != nil {
		return nil, fmt.Errorf("encode intent: %w", err)
	}
	inbox := nc.NewRespInbox()
	// The result, and the results of this call's own retries.
	sub, err := subscribeReplies(nc, inbox, intentResultsQueued)
	if err != nil {
		return nil, fmt.Errorf("subscribe for intent result: %w", err)
	}
	defer sub.unsubscribe()

	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	msg := nats.NewMsg(IntentSubject(kind))
	msg.Data = body
	msg.Header.Set(MsgIDHeader, in.GetId())
	msg.Header.Set(ReplyHeader, inbox)
	ack, retried, err := publishIntent(ctx, js, msg)
	if errors.Is(err, jetstream.ErrNoStreamResponse) {
		return nil, fmt.Errorf("publish intent to %s: %w: no coordinator has created the stream on this NATS system, or the servers holding it are down", IntentStream, err)
	}
	if err != nil {
		return nil, fmt.Errorf("publish intent to %s: %w", IntentStream, err)
	}
	if ack.Duplicate && !retried {
		// The stream already holds this id, so no new result will come:
		// ask for the first one, waiting while it is still being applied.
		q := &sv1.IntentQuery{Id: in.GetId(), Fingerprint: IntentFingerprint(in)}
		if signer != nil {
			q.Signer = signer.Key()
		}
		return awaitEarlierResult(ctx, nc, q)
	}
	// A duplicate after a retry is this call's own earlier attempt, stored
	// although its acknowledgement was lost: its result comes to the same
	// inbox.
	for {
		m, err := sub.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w (intent %s)", ErrNoResult, in.GetId())
			}
			return nil, fmt.Errorf("wait for intent result: %w", err)
		}
		var res sv1.IntentResult
		if err := proto.Unmarshal(m.Data, &res); err != nil {
			return nil, fmt.Errorf("decode intent result: %w", err)
		}
		if res.GetIntentId() != in.GetId() && res.GetIntentId() != "" {
			continue
		}
		return &res, nil
	}
}

// publishAttempt bounds one try of an intent publish, so that a stream
// whose leader died costs one attempt, not the caller's whole deadline.
const publishAttempt = 5 * time.Second

// intentResultsQueued is how many results may wait on an intent's inbox:
// one per stored copy of the intent (the stream keeps one, whatever the
// retries), and one more from each leader that applies it again after a
// change of leader. Far fewer than this arrive.
const intentResultsQueued = 16

// publishIntent publishes msg to the intent stream, retrying while the
// stream cannot take it yet: no stream leader (a NATS server died and the
// stream is electing another, or no coordinator has created the stream
// yet), JetStream itself not ready (a cluster forming), or an attempt that
// timed out. Retrying is safe: the stream deduplicates by the intent's id.
// retried reports whether more than one attempt was made.
func publishIntent(ctx context.Context, js jetstream.JetStream, msg *nats.Msg) (ack *jetstream.PubAck, retried bool, err error) {
	backoff := 100 * time.Millisecond
	// cause is the last failure that says more than "out of time".
	var cause error
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, publishAttempt)
		ack, err = js.PublishMsg(actx, msg)
		cancel()
		retried = attempt > 0
		if err == nil || !transientPublishError(err) {
			return ack, retried, err
		}
		if ctx.Err() == nil || cause == nil {
			cause = err
		}
		select {
		case <-ctx.Done():
			return nil, retried, fmt.Errorf("%w (%d attempts, then %v)", cause, attempt+1, ctx.Err())
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// transientPublishError tells a publish failure that a later attempt may
// not see (no responders, JetStream answering 503, a timed-out attempt)
// from one it will (permissions, a message the stream refuses).
func transientPublishError(err error) bool {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
		return true
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return true
	case errors.As(err, &apiErr):
		return apiErr.Code == 503
	}
	return false
}

// awaitEarlierResult asks for the result of the intent q names, which the
// stream already held: the first result of this same intent, or a
// refusal when another intent took its id.
func awaitEarlierResult(ctx context.Context, nc *nats.Conn, q *sv1.IntentQuery) (*sv1.IntentResult, error) {
	id := q.GetId()
	for {
		var res sv1.IntentResult
		err := Query(ctx, nc, QueryIntent, q, &res)
		if err == nil {
			// A refusal of this intent (the id was another's) is its
			// own result, not a resend's.
			res.Duplicate = res.GetCode() != CodeIDTaken
			return &res, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (the intent stream already held a message with id %s and dropped this one as its resend, "+
				"but no coordinator knows a result for it: if this intent was not sent before, another message took its id; "+
				"nothing of this one was applied, send it again with a new id: %v)", ErrNoResult, id, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ErrNoCurrentAnswer is returned when no coordinator answered a query as
// current before the caller's deadline.
var ErrNoCurrentAnswer = errors.New("no coordinator answered as current")

// queryAttempt is how long a query waits on its asks before it asks
// again: a frozen coordinator that holds a request costs one queryAttempt,
// not the caller's whole deadline. An ask is not given up when the next
// goes out: a coordinator that answers, but slowly (a view of many
// thousand nodes on a loaded machine), is still answered from, while the
// next ask finds another coordinator. At most queryInFlight asks wait at
// once, so a slow cluster is not asked faster than it answers.
const (
	queryAttempt  = time.Second
	queryInFlight = 8
)

// Query sends a read query to the coordinators and decodes the answer into
// out. Only a coordinator that verified its replica is current answers;
// the others decline, and Query asks again (the queue group hands each
// request to another member) until an answer comes or ctx ends. A
// coordinator that holds a request without answering (frozen) costs one
// queryAttempt; the first answer to any ask still waiting is taken.
func Query(ctx context.Context, nc *nats.Conn, name string, req, out proto.Message) error {
	_, err := query(ctx, nc, name, req, out, false)
	return err
}

// QueryStale is Query for a caller that accepts an answer from any
// coordinator's own replica, which may lag the leader; stale names the
// coordinator when the answer was given that way.
func QueryStale(ctx context.Context, nc *nats.Conn, name string, req, out proto.Message) (stale string, err error) {
	return query(ctx, nc, name, req, out, true)
}

func query(ctx context.Context, nc *nats.Conn, name string, req, out proto.Message, allowStale bool) (string, error) {
	var body []byte
	if req != nil {
		var err error
		if body, err = proto.Marshal(req); err != nil {
			return "", fmt.Errorf("encode query %s: %w", name, err)
		}
	}
	type answer struct {
		m   *nats.Msg
		err error
	}
	// Room for every ask's answer, so that none of them waits on a
	// caller that has returned.
	answers := make(chan answer, queryInFlight)
	asksCtx, cancelAsks := context.WithCancel(ctx)
	defer cancelAsks()
	asked, waiting := 0, 0
	ask := func() {
		asked++
		waiting++
		msg := nats.NewMsg(QuerySubject(name))
		msg.Data = body
		if allowStale {
			msg.Header.Set(StaleHeader, "1")
		}
		go func() {
			m, err := request(asksCtx, nc, msg)
			answers <- answer{m, err}
		}()
	}
	var last error
	ask()
	next := time.NewTimer(queryAttempt)
	defer next.Stop()
	// waited says the timer ran a whole queryAttempt since the last ask.
	waited := true
	// again has the next ask go out soon (a decline, or no coordinator to
	// ask): briefly at first, then up to 200 ms apart.
	again := func() {
		next.Reset(min(time.Duration(asked)*10*time.Millisecond, 200*time.Millisecond))
		waited = false
	}
	for {
		select {
		case a := <-answers:
			waiting--
			switch {
			case a.err == nil && a.m.Header.Get(NotCurrentHeader) != "":
				last = errors.New(a.m.Header.Get(ErrorHeader))
				again()
			case a.err == nil:
				if e := a.m.Header.Get(ErrorHeader); e != "" {
					return "", fmt.Errorf("query %s: %s", name, e)
				}
				if err := proto.Unmarshal(a.m.Data, out); err != nil {
					return "", fmt.Errorf("decode answer to %s: %w", name, err)
				}
				return a.m.Header.Get(StaleHeader), nil
			case errors.Is(a.err, nats.ErrNoResponders):
				last = errors.New("no coordinator is running")
				again()
			case ctx.Err() != nil:
				// The caller's deadline: what a coordinator said before (it
				// knows no leader, say) tells more than the deadline does.
			default:
				last = a.err
				again()
			}
		case <-next.C:
			if waited && waiting > 0 {
				last = fmt.Errorf("no coordinator answered within %s", queryAttempt)
			}
			if waiting < queryInFlight {
				ask()
			}
			next.Reset(queryAttempt)
			waited = true
		case <-ctx.Done():
			if last == nil {
				last = ctx.Err()
			}
			return "", fmt.Errorf("query %s: %w after %d attempts; last: %v", name, ErrNoCurrentAnswer, asked, last)
		}
	}
}

// ErrorHeader carries a coordinator's refusal of a query.
const ErrorHeader = "Switchyard-Error"

// Gather asks query name of every coordinator at once and hands each
// answer's body to each, until each says it has heard enough or ctx ends
// (ctx's deadline is how long the caller waits for coordinators that may
// not answer). Answers carrying ErrorHeader are handed on as errors. It
// returns ctx's error only when each never said enough.
func Gather(ctx context.Context, nc *nats.Conn, name string, req proto.Message, each func(data []byte, err error) (enough bool)) error {
	var body []byte
	if req != nil {
		var err error
		if body, err = proto.Marshal(req); err != nil {
			return fmt.Errorf("encode query %s: %w", name, err)
		}
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("query %s: %w", name, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(QuerySubject(name), inbox, body); err != nil {
		return fmt.Errorf("query %s: %w", name, err)
	}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("query %s: %w", name, ctx.Err())
			}
			return fmt.Errorf("query %s: %w", name, err)
		}
		if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
			// The servers say no one listens: no answer will come.
			return fmt.Errorf("query %s: %w", name, nats.ErrNoResponders)
		}
		var answerErr error
		if e := m.Header.Get(ErrorHeader); e != "" {
			answerErr = errors.New(e)
		}
		if each(m.Data, answerErr) {
			return nil
		}
	}
}
