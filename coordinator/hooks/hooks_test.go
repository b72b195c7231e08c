package hooks

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/switchyard/switchyard/coordinator/state"
	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

// memRaft applies the gate's and caller's entries to a state, as the FSM
// would, numbering them like a log.
type memRaft struct {
	mu    sync.Mutex
	st    *state.State
	index uint64
}

func (m *memRaft) next() uint64 { m.index++; return m.index }

func (m *memRaft) HookDue(e *sv1.HookDueEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.ApplyHookDue(m.next(), e)
	return nil
}

func (m *memRaft) HookResult(e *sv1.HookResultEntry) error {
	// raftApply encodes every entry; an entry that cannot be encoded is
	// never committed.
	if _, err := proto.Marshal(e); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.ApplyHookResult(m.next(), e)
	return nil
}

func (m *memRaft) Start(e *sv1.RolloutStartEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.ApplyStart(m.next(), e)
	return nil
}

func (m *memRaft) PendingCalls() []state.PendingCall { return m.st.PendingCalls() }

func hookedSpec(hooks ...*sv1.Webhook) *sv1.RolloutSpec {
	sp := &sv1.RolloutSpec{Name: "r1", Service: "web", From: "blue", To: "green",
		Strategy: &sv1.Strategy{Kind: &sv1.Strategy_Canary{Canary: &sv1.Canary{Steps: []*sv1.Step{
			{Kind: &sv1.Step_SetWeight{SetWeight: 20}}, {Kind: &sv1.Step_SetWeight{SetWeight: 50}}}}}},
		Hooks: &sv1.HooksSpec{Webhooks: hooks}}
	spec.Default(sp)
	return sp
}

func newRaft(t testing.TB, sp *sv1.RolloutSpec) *memRaft {
	t.Helper()
	if err := spec.Validate(sp); err != nil {
		t.Fatal(err)
	}
	m := &memRaft{st: state.New(), index: 10}
	a := m.st.ApplyIntent(m.next(), &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "i1",
		Action: &sv1.Intent_ApplyRollout{ApplyRollout: &sv1.ApplyRollout{Spec: sp}}}})
	if !a.Result.GetAccepted() {
		t.Fatal(a.Result)
	}
	return m
}

func webhook(name string, p sv1.HookPoint, url string, gating bool) *sv1.Webhook {
	w := &sv1.Webhook{Name: name, Point: p, Url: url, Gating: gating, Retries: 0, Timeout: durationpb.New(time.Second)}
	if gating {
		w.OnFailure = sv1.HookFailure_HOOK_FAILURE_HOLD
		w.Recheck = durationpb.New(5 * time.Second)
	}
	return w
}

func caller(m *memRaft) *Caller {
	return &Caller{State: m, Raft: m, Client: &http.Client{}, Log: slog.New(slog.DiscardHandler),
		Now: func() time.Time { return t0 }, Backoff: 10 * time.Millisecond}
}

// settle makes the due calls and waits for their outcomes.
func settle(c *Caller) {
	c.Step(context.Background())
	c.Wait()
}

func TestHooks_GatingPrePromotionHoldsThenPasses(t *testing.T) {
	var accept atomic.Bool
	var calls atomic.Int32
	var lastBody atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		lastBody.Store(string(b))
		if r.Header.Get(IdempotencyHeader) == "" {
			t.Error("no idempotency key")
		}
		if !accept.Load() {
			http.Error(w, "load test not green yet", http.StatusPreconditionFailed)
			return
		}
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	m := newRaft(t, hookedSpec(webhook("load-test", sv1.HookPoint_HOOK_POINT_PRE_PROMOTION, srv.URL, true)))
	g := &Gate{Raft: m}
	c := caller(m)
	r := m.st.Rollout("r1")

	// Ready to promote: the gate makes the call due and holds.
	if w, err := g.Hold(r, 0, 2, true, t0); err != nil || !strings.Contains(w, "load-test at pre-promotion: calling") {
		t.Fatalf("hold = %q, %v", w, err)
	}
	settle(c)
	r = m.st.Rollout("r1")
	w, _ := g.Hold(r, 0, 2, true, t0.Add(time.Second))
	if !strings.Contains(w, "refused (412 Precondition Failed: load test not green yet)") {
		t.Fatalf("after a refusal hold = %q", w)
	}
	settle(c)
	if n := calls.Load(); n != 1 {
		t.Fatalf("refusing gate asked %d times before its recheck, want 1", n)
	}
	// After the recheck interval it is asked again, and accepts.
	accept.Store(true)
	if w, _ := g.Hold(r, 0, 2, true, t0.Add(6*time.Second)); !strings.Contains(w, "asking again") {
		t.Fatalf("hold at recheck = %q", w)
	}
	settle(c)
	r = m.st.Rollout("r1")
	if w, err := g.Hold(r, 0, 2, true, t0.Add(7*time.Second)); w != "" || err != nil {
		t.Fatalf("accepted gate still holds: %q %v", w, err)
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("gate asked %d times, want 2", n)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(lastBody.Load().(string)), &body); err != nil {
		t.Fatal(err)
	}
	if body["rollout"] != "r1" || body["point"] != "prePromotion" || body["service"] != "web" || body["id"] != "r1/pre-promotion/load-test/2" {
		t.Fatalf("body %v", body)
	}
	hist := ""
	for _, e := range r.GetHistory() {
		hist += e.GetMessage() + "\n"
	}
	for _, want := range []string{"webhook load-test at pre-promotion failed after 1 attempt(s): 412", "webhook load-test at pre-promotion succeeded after 1 attempt(s): 200 OK: ok"} {
		if !strings.Contains(hist, want) {
			t.Fatalf("history lacks %q:\n%s", want, hist)
		}
	}
}

func TestHooks_RollbackWebhookCalledOnceWithEvidence(t *testing.T) {
	var calls atomic.Int32
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, "busy", http.StatusServiceUnavailable) // the retry delivers it
			return
		}
		b, _ := io.ReadAll(r.Body)
		got.Store(string(b))
	}))
	defer srv.Close()
	wh := webhook("pager", sv1.HookPoint_HOOK_POINT_ROLLBACK, srv.URL, false)
	wh.Retries = 2
	m := newRaft(t, hookedSpec(wh))
	r := m.st.Rollout("r1")
	m.st.ApplyRollback(m.next(), &sv1.RollbackEntry{Rollout: "r1", Generation: r.GetGeneration(), StampedAt: timestamppb.New(t0),
		Evidence: &sv1.Evidence{Guardrail: "error_rate", Summary: "green 30% errors"}})
	c := caller(m)
	settle(c)
	settle(c) // nothing is due any more
	if n := calls.Load(); n != 2 {
		t.Fatalf("rollback webhook attempts %d, want 2 (one refused, one retry)", n)
	}
	body := got.Load().(string)
	if !strings.Contains(body, `"guardrail":"error_rate"`) || !strings.Contains(body, `"phase":"rolling-back"`) || !strings.Contains(body, `"attempt":2`) {
		t.Fatalf("body %s", body)
	}
	calls1 := m.st.Rollout("r1").GetHookCalls()
	if len(calls1) != 1 || calls1[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_SUCCEEDED || calls1[0].GetAttempts() != 2 {
		t.Fatalf("recorded calls %v", calls1)
	}
}

func TestHooks_FailingGateWithRollbackRollsBackAndTimesOut(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(block)
	gate := webhook("migrate", sv1.HookPoint_HOOK_POINT_PRE_STEP, srv.URL, true)
	gate.OnFailure = sv1.HookFailure_HOOK_FAILURE_ROLLBACK
	m := newRaft(t, hookedSpec(gate, webhook("pager", sv1.HookPoint_HOOK_POINT_ROLLBACK, srv.URL+"/pager", false)))
	g := &Gate{Raft: m}
	r := m.st.Rollout("r1")
	if w, _ := g.Hold(r, 0, 1, false, t0); !strings.Contains(w, "pre-step/0/1") {
		t.Fatalf("hold %q", w)
	}
	c := caller(m)
	c.Step(context.Background())
	deadline := time.Now().Add(10 * time.Second)
	for m.st.Rollout("r1").GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK {
		if time.Now().After(deadline) {
			t.Fatal("failed gate did not roll back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r = m.st.Rollout("r1")
	if r.GetEvidence().GetGuardrail() != "webhook" || !strings.Contains(r.GetReason(), "timed out after 1s") {
		t.Fatalf("evidence %v reason %q", r.GetEvidence(), r.GetReason())
	}
	if d := m.st.Desired("web"); d.GetDefaultWeights()["blue"] != 100 {
		t.Fatalf("desired after rollback %v", d)
	}
	due := false
	for _, c := range r.GetHookCalls() {
		if c.GetKey() == state.KeyRollback && c.GetOutcome() == sv1.HookOutcome_HOOK_OUTCOME_PENDING {
			due = true
		}
	}
	if !due {
		t.Fatalf("rollback webhook not due: %v", r.GetHookCalls())
	}
	c.Wait()
}

func TestHooks_PreRolloutGateHoldsTrafficUntilItPasses(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	m := newRaft(t, hookedSpec(webhook("ticket", sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT, srv.URL, true)))
	r := m.st.Rollout("r1")
	if !r.GetHoldStart() {
		t.Fatal("rollout with a gating pre-rollout webhook is not held")
	}
	if d := m.st.Desired("web"); len(d.GetWaves()) != 0 {
		t.Fatalf("held rollout moved traffic: %v", d.GetWaves())
	}
	g := &Gate{Raft: m}
	if w, _ := g.Start(r, t0); !strings.Contains(w, "ticket at pre-rollout") {
		t.Fatalf("start = %q", w)
	}
	settle(caller(m))
	if w, err := g.Start(m.st.Rollout("r1"), t0.Add(time.Second)); w != "" || err != nil {
		t.Fatalf("start after success = %q %v", w, err)
	}
	r = m.st.Rollout("r1")
	if r.GetHoldStart() {
		t.Fatal("still held")
	}
	if d := m.st.Desired("web"); len(d.GetWaves()) != 1 || d.GetWaves()[0].GetWeights()["green"] != 20 {
		t.Fatalf("desired after start %v", d)
	}
}

func TestHooks_EvaluateNotifyingNeverHolds(t *testing.T) {
	m := newRaft(t, hookedSpec(webhook("note", sv1.HookPoint_HOOK_POINT_PRE_STEP, "http://127.0.0.1:1/", false)))
	v := Evaluate(m.st.Rollout("r1"), sv1.HookPoint_HOOK_POINT_PRE_STEP, state.KeyPreStep(0, 1), t0)
	if !v.Open || len(v.Due) != 1 || v.Due[0] != "note" {
		t.Fatalf("verdict %+v", v)
	}
	r := m.st.Rollout("r1")
	if p, k, ok := Point(r, 1, 0, false); !ok || p != sv1.HookPoint_HOOK_POINT_PRE_WAVE || k != "pre-wave/1" {
		t.Fatalf("point %v %q", p, k)
	}
	if p, k, ok := Point(r, 0, 2, false); !ok || p != sv1.HookPoint_HOOK_POINT_PRE_PROMOTION || k != "pre-promotion" {
		t.Fatalf("the end of the last wave's steps gives it all traffic: want pre-promotion, got %v %q %v", p, k, ok)
	}
}

func TestHooks_FailingGateWithPausePausesUntilResumed(t *testing.T) {
	var accept atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !accept.Load() {
			http.Error(w, "change freeze", http.StatusConflict)
		}
	}))
	defer srv.Close()
	gate := webhook("freeze", sv1.HookPoint_HOOK_POINT_PRE_STEP, srv.URL, true)
	gate.OnFailure = sv1.HookFailure_HOOK_FAILURE_PAUSE
	m := newRaft(t, hookedSpec(gate))
	g := &Gate{Raft: m}
	c := caller(m)
	g.Hold(m.st.Rollout("r1"), 0, 1, false, t0)
	settle(c)
	r := m.st.Rollout("r1")
	if !r.GetPaused() || r.GetPhase() != sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING ||
		r.GetPauseReason() != "gating webhook freeze at pre-step/0/1 failed (409 Conflict: change freeze)" {
		t.Fatalf("failed pause-gate: paused %v (%q) phase %v", r.GetPaused(), r.GetPauseReason(), r.GetPhase())
	}
	// The operator resumes: the gate asks again at once, not after recheck.
	m.st.ApplyIntent(m.next(), &sv1.IntentEntry{StampedAt: timestamppb.New(t0), Intent: &sv1.Intent{Id: "resume",
		Action: &sv1.Intent_ResumeRollout{ResumeRollout: &sv1.RolloutControl{Rollout: "r1"}}}})
	accept.Store(true)
	if w, _ := g.Hold(m.st.Rollout("r1"), 0, 1, false, t0); !strings.Contains(w, "asking again after a resume (last answer: 409 Conflict: change freeze)") {
		t.Fatalf("hold after resume %q", w)
	}
	settle(c)
	if w, _ := g.Hold(m.st.Rollout("r1"), 0, 1, false, t0); w != "" {
		t.Fatalf("accepted gate still holds: %q", w)
	}
}

// A receiver answering in another charset than UTF-8 (a Latin-1 error page)
// still gets its outcome recorded: the answer kept is valid UTF-8, which the
// replicated entry requires.
func TestHooks_NonUTF8AnswerIsRecorded(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "Dienst nicht verf\xfcgbar")
	}))
	defer srv.Close()
	m := newRaft(t, hookedSpec(webhook("pager", sv1.HookPoint_HOOK_POINT_ROLLBACK, srv.URL, false)))
	r := m.st.Rollout("r1")
	m.st.ApplyRollback(m.next(), &sv1.RollbackEntry{Rollout: "r1", Generation: r.GetGeneration(), StampedAt: timestamppb.New(t0)})
	c := caller(m)
	settle(c)
	settle(c) // nothing is due any more
	if n := calls.Load(); n != 1 {
		t.Fatalf("webhook called %d times, want 1: its outcome was not recorded", n)
	}
	got := m.st.Rollout("r1").GetHookCalls()
	if len(got) != 1 || got[0].GetOutcome() != sv1.HookOutcome_HOOK_OUTCOME_FAILED ||
		!strings.HasPrefix(got[0].GetDetail(), "502 Bad Gateway: Dienst nicht verf") {
		t.Fatalf("recorded calls %v", got)
	}
}

// A gate that redirects (an auth proxy sending to its login page, http to
// https) has not answered the call: following a 302 turns the POST into a
// GET without the body, so a 2xx at the end says nothing about the gate.
func TestHooks_RedirectIsNotAPass(t *testing.T) {
	var posts, gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/login" {
			gets.Add(1)
			io.WriteString(w, "please sign in")
			return
		}
		posts.Add(1)
		http.Redirect(w, r, "/login", http.StatusFound)
	}))
	defer srv.Close()
	m := newRaft(t, hookedSpec(webhook("load-test", sv1.HookPoint_HOOK_POINT_PRE_PROMOTION, srv.URL+"/gate", true)))
	g := &Gate{Raft: m}
	if _, err := g.Hold(m.st.Rollout("r1"), 0, 2, true, t0); err != nil {
		t.Fatal(err)
	}
	settle(caller(m))
	w, _ := g.Hold(m.st.Rollout("r1"), 0, 2, true, t0.Add(time.Second))
	if w == "" || !strings.Contains(w, "302 Found") {
		t.Fatalf("after a redirect the gate holds with %q, want it refused with 302", w)
	}
	if posts.Load() != 1 || gets.Load() != 0 {
		t.Fatalf("gate got %d POSTs, login page %d GETs; want the redirect not followed", posts.Load(), gets.Load())
	}
}

// A gate behind a reverse proxy that is down answers with the proxy's HTML
// error page, lines ending in CRLF: the recorded answer, shown in the
// Webhooks table, the waiting line, the history and the audit log, is one
// line, with no carriage return to overwrite the terminal line it is
// printed on.
func TestHooks_MultiLineAnswerIsRecordedOnOneLine(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		io.WriteString(w, "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\t<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n")
	}))
	defer srv.Close()
	m := newRaft(t, hookedSpec(webhook("load-test", sv1.HookPoint_HOOK_POINT_PRE_PROMOTION, srv.URL, true)))
	g := &Gate{Raft: m}
	if _, err := g.Hold(m.st.Rollout("r1"), 0, 2, true, t0); err != nil {
		t.Fatal(err)
	}
	settle(caller(m))
	want := "502 Bad Gateway: <html> <head><title>502 Bad Gateway</title></head> <body> <center><h1>502 Bad Gateway</h1></center> </body> </html>"
	got := m.st.Rollout("r1").GetHookCalls()
	if len(got) != 1 || got[0].GetDetail() != want {
		t.Fatalf("recorded calls %v, want the answer %q", got, want)
	}
	w, _ := g.Hold(m.st.Rollout("r1"), 0, 2, true, t0.Add(time.Second))
	if strings.ContainsAny(w, "\r\n\t") {
		t.Fatalf("waiting line %q spans lines", w)
	}
}
