package hooks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Header names sent with every webhook call.
const (
	// IdempotencyHeader carries the call's id, the same on every attempt
	// and after a leader change.
	IdempotencyHeader = "Idempotency-Key"
	// AttemptHeader carries the attempt number, from 1.
	AttemptHeader = "Switchyard-Attempt"
)

// maxDetail bounds the answer kept in the log: it is replicated.
const maxDetail = 256

// Pending lists the due webhook calls.
type Pending interface {
	PendingCalls() []state.PendingCall
}

// Recorder commits a call's outcome.
type Recorder interface {
	HookResult(*sv1.HookResultEntry) error
}

// Caller makes every due webhook call once and records its outcome; it
// runs on the leader only.
type Caller struct {
	State  Pending
	Raft   Recorder
	Client *http.Client
	Log    *slog.Logger
	// Now stamps results; Backoff is the first delay between attempts,
	// doubling up to 8 times itself.
	Now     func() time.Time
	Backoff time.Duration
	// Observe, if set, is told each finished call: webhook point, outcome
	// ("succeeded", "failed") and its seconds.
	Observe func(point, outcome string, seconds float64)

	mu       sync.Mutex
	inFlight map[string]bool
	wg       sync.WaitGroup
}

// CallID names one call; it is the body's id and the idempotency key.
func CallID(rollout string, c *sv1.HookCall) string {
	return fmt.Sprintf("%s/%s/%s/%d", rollout, c.GetKey(), c.GetWebhook(), c.GetSeq())
}

// Step starts every due call not already under way. Calls run until they
// have an outcome or ctx ends (leadership lost); the next leader makes the
// calls still due.
func (c *Caller) Step(ctx context.Context) {
	c.mu.Lock()
	if c.inFlight == nil {
		c.inFlight = map[string]bool{}
	}
	c.mu.Unlock()
	for _, p := range c.State.PendingCalls() {
		id := CallID(p.Rollout.GetId(), p.Call)
		c.mu.Lock()
		busy := c.inFlight[id]
		c.inFlight[id] = true
		c.mu.Unlock()
		if busy {
			continue
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() {
				c.mu.Lock()
				delete(c.inFlight, id)
				c.mu.Unlock()
			}()
			c.call(ctx, p, id)
		}()
	}
}

// Wait waits for the calls under way to end.
func (c *Caller) Wait() { c.wg.Wait() }

func (c *Caller) call(ctx context.Context, p state.PendingCall, id string) {
	r, w := p.Rollout, p.Webhook
	log := c.Log.With("rollout", r.GetId(), "service", r.GetSpec().GetService(), "webhook", w.GetName(), "key", p.Call.GetKey(), "call", id)
	start := time.Now()
	attempts := uint32(0)
	var ok bool
	var detail string
	delay := c.Backoff
	for attempts <= w.GetRetries() {
		attempts++
		var final bool
		ok, detail, final = c.attempt(ctx, p, id, attempts)
		if ctx.Err() != nil {
			log.Info("webhook call stopped: leadership ended; the next leader makes it", "attempts", attempts)
			return
		}
		if ok {
			break
		}
		log.Warn("webhook attempt failed", "attempt", attempts, "detail", detail)
		if final || attempts > w.GetRetries() {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(delay*2, 8*c.Backoff)
	}
	outcome := map[bool]string{true: "succeeded", false: "failed"}[ok]
	if c.Observe != nil {
		c.Observe(spec.PointName(w.GetPoint()), outcome, time.Since(start).Seconds())
	}
	err := c.Raft.HookResult(&sv1.HookResultEntry{
		Rollout: r.GetId(), Key: p.Call.GetKey(), Webhook: w.GetName(), Seq: p.Call.GetSeq(),
		Ok: ok, Attempts: attempts, Detail: detail, StampedAt: timestamppb.New(c.Now()), Rules: state.Rules,
	})
	if err != nil {
		log.Warn("webhook outcome not recorded; the next leader calls again", "err", err)
		return
	}
	log.Info("webhook called", "outcome", outcome, "attempts", attempts, "detail", detail)
}

// Body builds the JSON body of a call.
func Body(p state.PendingCall, id string, attempt uint32) *sv1.WebhookBody {
	r := p.Rollout
	b := &sv1.WebhookBody{
		Id: id, Rollout: r.GetId(), Service: r.GetSpec().GetService(),
		Point: spec.PointName(p.Webhook.GetPoint()), Webhook: p.Webhook.GetName(),
		From: r.GetSpec().GetFrom(), To: r.GetSpec().GetTo(),
		WaveIndex: r.GetWave(), Step: r.GetStep(), Generation: r.GetGeneration(),
		Phase: state.PhaseName(r.GetPhase()), Reason: r.GetReason(), Evidence: r.GetEvidence(),
		Attempt: attempt,
	}
	if waves := r.GetSpec().GetWaves(); int(r.GetWave()) < len(waves) {
		b.Wave = waves[r.GetWave()].GetName()
	}
	return b
}

// attempt makes one attempt of a call; final says that another would
// fail the same way (a destination the coordinator does not connect to).
func (c *Caller) attempt(ctx context.Context, p state.PendingCall, id string, n uint32) (ok bool, detail string, final bool) {
	body, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(Body(p, id, n))
	if err != nil {
		return false, "encode body: " + err.Error(), false
	}
	actx, cancel := context.WithTimeout(ctx, p.Webhook.GetTimeout().AsDuration())
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodPost, p.Webhook.GetUrl(), bytes.NewReader(body))
	if err != nil {
		return false, "request: " + err.Error(), false
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(IdempotencyHeader, id)
	req.Header.Set(AttemptHeader, fmt.Sprint(n))
	// A redirect is not the webhook's answer: following a 301/302/303
	// turns the POST into a GET without the body (an auth proxy's login
	// page would answer 200 and pass the gate), so it counts as the
	// non-2xx it is.
	client := *c.Client
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := client.Do(req)
	if err != nil {
		if actx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
			return false, fmt.Sprintf("timed out after %s", p.Webhook.GetTimeout().AsDuration()), false
		}
		if r := (*RefusedError)(nil); errors.As(err, &r) {
			return false, trim(r.Error()), true
		}
		return false, trim(err.Error()), false
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(io.LimitReader(resp.Body, maxDetail))
	detail = resp.Status
	if loc := resp.Header.Get("Location"); loc != "" {
		detail += " (redirect to " + loc + " not followed)"
	}
	if s := strings.TrimSpace(string(text)); s != "" {
		detail += ": " + s
	}
	return resp.StatusCode >= 200 && resp.StatusCode < 300, trim(detail), false
}

// trim makes s fit the replicated detail: valid UTF-8, which a protobuf
// string must be (a receiver may answer in Latin-1 or with bytes; an entry
// that cannot be encoded would never record the outcome, and the call would
// be made again and again), on one line (an answer is often an HTML error
// page with CRLF line ends, which would break the Webhooks table and let a
// carriage return overwrite the line the reason is printed on), at most
// maxDetail bytes.
func trim(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)), " ")
	if len(s) <= maxDetail {
		return s
	}
	s = s[:maxDetail]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
