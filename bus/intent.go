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

// queryAttempt bounds the first try of a query, so that a frozen
// coordinator that holds a request costs one attempt, not the caller's
// whole deadline. Each attempt that runs out doubles the next one's bound,
// up to queryAttemptMax: a coordinator that answers, but slowly (a view of
// many thousand nodes on a loaded machine), is waited for rather than
// asked again and again, each ask building an answer nobody waits for.
const (
	queryAttempt    = time.Second
	queryAttemptMax = 8 * time.Second
)

// Query sends a read query to the coordinators and decodes the answer into
// out. Only a coordinator that verified its replica is current answers;
// the others decline, and Query asks again (the queue group hands each
// request to another member) until an answer comes or ctx ends. A
// coordinator that holds a request without answering (frozen) costs one
// attempt of queryAttempt; one that answers slowly is waited for longer
// on each further attempt.
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
	var last error
	bound := queryAttempt
	for attempt := 0; ; attempt++ {
		msg := nats.NewMsg(QuerySubject(name))
		msg.Data = body
		if allowStale {
			msg.Header.Set(StaleHeader, "1")
		}
		actx, cancel := context.WithTimeout(ctx, bound)
		m, err := request(ctx, actx, nc, msg)
		cancel()
		switch {
		case err == nil && m.Header.Get(NotCurrentHeader) != "":
			last = errors.New(m.Header.Get(ErrorHeader))
		case err == nil:
			if e := m.Header.Get(ErrorHeader); e != "" {
				return "", fmt.Errorf("query %s: %s", name, e)
			}
			if err := proto.Unmarshal(m.Data, out); err != nil {
				return "", fmt.Errorf("decode answer to %s: %w", name, err)
			}
			return m.Header.Get(StaleHeader), nil
		case errors.Is(err, nats.ErrNoResponders):
			last = errors.New("no coordinator is running")
		case ctx.Err() != nil && last != nil:
			// The caller's deadline cut this attempt short: what a
			// coordinator said before (it knows no leader, say) tells
			// more than the deadline does.
		case ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
			last = fmt.Errorf("no coordinator answered within %s", bound)
			bound = min(2*bound, queryAttemptMax)
		default:
			last = err
		}
		if ctx.Err() != nil {
			return "", fmt.Errorf("query %s: %w after %d attempts; last: %v", name, ErrNoCurrentAnswer, attempt+1, last)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("query %s: %w after %d attempts; last: %v", name, ErrNoCurrentAnswer, attempt+1, last)
		case <-time.After(min(time.Duration(attempt+1)*10*time.Millisecond, 200*time.Millisecond)):
		}
	}
}

// ErrorHeader carries a coordinator's refusal of a query.
const ErrorHeader = "Switchyard-Error"
