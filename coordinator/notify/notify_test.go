package notify

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

var t0 = time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)

func event(index uint64, sec int, phase sv1.RolloutPhase, msg string) *sv1.RolloutEvent {
	return &sv1.RolloutEvent{Index: index, At: timestamppb.New(t0.Add(time.Duration(sec) * time.Second)), Phase: phase, Message: msg, Operator: "ana"}
}

func canary() *sv1.Rollout {
	return &sv1.Rollout{
		Id:   "web-1",
		Spec: &sv1.RolloutSpec{Name: "web-1", Service: "web", From: "blue", To: "green"},
		History: []*sv1.RolloutEvent{
			event(4, 0, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, "started"),
			event(5, 1, sv1.RolloutPhase_ROLLOUT_PHASE_PROGRESSING, "wave a at 10%"),
		},
	}
}

func TestTracker_PhaseChangesOnceAndRollbackWithEvidence(t *testing.T) {
	tr := NewTracker(t0.Add(-time.Minute))
	r := canary()
	got := tr.Events([]*sv1.Rollout{r}, nil)
	if len(got) != 1 || got[0].Kind != KindPhase || got[0].Phase != "progressing" || got[0].ID != "phase/web-1/4" || got[0].PreviousPhase != "" {
		t.Fatalf("first events %+v, want one phase event for the start", got)
	}
	if again := tr.Events([]*sv1.Rollout{r}, nil); len(again) != 0 {
		t.Fatalf("events repeated: %+v", again)
	}
	r.History = append(r.History,
		event(6, 9, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLING_BACK, "rolling back: guardrail error_rate breached"),
		event(7, 10, sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK, "rolled back"))
	r.Reason = "guardrail error_rate breached"
	r.Evidence = &sv1.Evidence{Summary: "errors: new backend 93 errors in 484 requests"}
	got = tr.Events([]*sv1.Rollout{r}, nil)
	kinds := []string{}
	for _, e := range got {
		kinds = append(kinds, e.Kind+":"+e.Phase)
	}
	if strings.Join(kinds, ",") != "phase:rolling-back,rollback:rolling-back,phase:rolled-back" {
		t.Fatalf("events %v", kinds)
	}
	rb := got[1]
	if rb.ID != "rollback/web-1/6" || rb.Reason != "guardrail error_rate breached" || !strings.Contains(rb.Evidence, "93 errors") || rb.PreviousPhase != "progressing" {
		t.Fatalf("rollback event %+v", rb)
	}
	if !strings.Contains(rb.Text(), "web-1") || !strings.Contains(rb.Text(), "Evidence: errors") {
		t.Fatalf("rollback text %q", rb.Text())
	}
}

func TestTracker_OldEntriesAreNotSentByANewLeader(t *testing.T) {
	tr := NewTracker(t0.Add(5 * time.Second))
	r := canary()
	r.History = append(r.History, event(6, 9, sv1.RolloutPhase_ROLLOUT_PHASE_COMPLETED, "completed"))
	got := tr.Events([]*sv1.Rollout{r}, nil)
	if len(got) != 1 || got[0].Phase != "completed" || got[0].PreviousPhase != "progressing" {
		t.Fatalf("events %+v, want only the completion after since", got)
	}
}

func TestTracker_DrillWhenItsReportIsCommitted(t *testing.T) {
	tr := NewTracker(t0.Add(-time.Minute))
	d := &sv1.Drill{Id: "d-1", Generation: 12, Phase: sv1.DrillPhase_DRILL_PHASE_RUNNING, Spec: &sv1.DrillSpec{Service: "web"}, EndedAt: timestamppb.New(t0)}
	if got := tr.Events(nil, []*sv1.Drill{d}); len(got) != 0 {
		t.Fatalf("running drill: %+v", got)
	}
	d.Phase = sv1.DrillPhase_DRILL_PHASE_ENDED
	if got := tr.Events(nil, []*sv1.Drill{d}); len(got) != 0 {
		t.Fatalf("ended without a report: %+v", got)
	}
	d.Report = &sv1.DrillReport{Verdict: "pass: detected in 2.1s", Summary: "1 node injected"}
	got := tr.Events(nil, []*sv1.Drill{d})
	if len(got) != 1 || got[0].Kind != KindDrill || got[0].ID != "drill/d-1/12" || got[0].Verdict != "pass: detected in 2.1s" {
		t.Fatalf("drill events %+v", got)
	}
	if again := tr.Events(nil, []*sv1.Drill{d}); len(again) != 0 {
		t.Fatalf("drill repeated: %+v", again)
	}
}

func TestTarget_ValidateNamesTheField(t *testing.T) {
	for _, c := range []struct {
		t    Target
		want string
	}{
		{Target{}, "n[0].url: required"},
		{Target{URL: "ftp://x"}, `n[0].url: "ftp://x": want an http or https URL`},
		{Target{URL: "http://x", Format: "xml"}, `n[0].format: "xml": want json or slack`},
		{Target{URL: "http://x", Events: []string{"phase", "deploy"}}, `n[0].events[1]: "deploy": want one of phase, rollback, drill`},
		{Target{URL: "http://x", Timeout: -time.Second}, "n[0].timeout"},
	} {
		err := c.t.Validate("n[0]")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c.t, err, c.want)
		}
	}
	ok := Target{URL: "http://127.0.0.1:9/hook"}
	if err := ok.Validate("n[0]"); err != nil || ok.Name != "127.0.0.1:9" || ok.Format != FormatJSON || len(ok.Events) != 3 || *ok.Retries != DefaultRetries {
		t.Fatalf("defaults: %v %+v", err, ok)
	}
}

// receiver is a local HTTP receiver that fails its first failures calls.
type receiver struct {
	mu       sync.Mutex
	failures int
	bodies   []string
	ids      []string
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.failures > 0 {
		rc.failures--
		http.Error(w, "busy", http.StatusServiceUnavailable)
		return
	}
	rc.bodies = append(rc.bodies, string(b))
	rc.ids = append(rc.ids, r.Header.Get("Switchyard-Event-Id"))
}

func TestSender_RetriesUntilAccepted(t *testing.T) {
	rc := &receiver{failures: 2}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	target := Target{URL: srv.URL, Format: FormatSlack}
	if err := target.Validate("t"); err != nil {
		t.Fatal(err)
	}
	var outcomes []Outcome
	s := &Sender{Backoff: time.Millisecond, Done: func(o Outcome) { outcomes = append(outcomes, o) }}
	e := Event{ID: "rollback/web-1/6", Kind: KindRollback, Rollout: "web-1", Service: "web", From: "blue", To: "green", Reason: "breach", Evidence: "93 errors"}
	if err := s.Send(context.Background(), &target, e); err != nil {
		t.Fatal(err)
	}
	if len(outcomes) != 1 || outcomes[0].Attempts != 3 || outcomes[0].Err != nil {
		t.Fatalf("outcomes %+v, want one success after 3 attempts", outcomes)
	}
	var body map[string]string
	if err := json.Unmarshal([]byte(rc.bodies[0]), &body); err != nil || !strings.Contains(body["text"], "web-1") || !strings.Contains(body["text"], "93 errors") {
		t.Fatalf("slack body %q (%v)", rc.bodies[0], err)
	}
	if rc.ids[0] != e.ID {
		t.Fatalf("event id header %q", rc.ids[0])
	}
}

func TestSender_GivesUpAfterItsRetries(t *testing.T) {
	rc := &receiver{failures: 100}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	one := 1
	target := Target{URL: srv.URL, Retries: &one}
	if err := target.Validate("t"); err != nil {
		t.Fatal(err)
	}
	var got Outcome
	s := &Sender{Backoff: time.Millisecond, Done: func(o Outcome) { got = o }}
	err := s.Send(context.Background(), &target, Event{ID: "phase/x/1", Kind: KindPhase})
	if err == nil || !strings.Contains(err.Error(), "503") || got.Attempts != 2 {
		t.Fatalf("err %v, outcome %+v; want a 503 failure after 2 attempts", err, got)
	}
	var e Event
	target.Format = FormatJSON
	b, _ := target.Body(Event{ID: "phase/x/1", Kind: KindPhase, Phase: "completed"})
	if err := json.Unmarshal(b, &e); err != nil || e.Phase != "completed" {
		t.Fatalf("json body %s: %v", b, err)
	}
}

// A chat webhook's URL carries its secret in the path
// (https://hooks.slack.com/services/T000/B000/XXXX); a receiver that cannot
// be reached must not put it in the logs through the error.
func TestSender_ErrorsDoNotShowTheURLsSecret(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	base := srv.URL
	srv.Close() // nothing listens there any more
	zero := 0
	target := Target{URL: base + "/services/T000/B000/s3cr3tT0ken?token=q5ecret", Format: FormatSlack, Retries: &zero}
	if err := target.Validate("t"); err != nil {
		t.Fatal(err)
	}
	var got Outcome
	s := &Sender{Backoff: time.Millisecond, Done: func(o Outcome) { got = o }}
	err := s.Send(context.Background(), &target, Event{ID: "phase/x/1", Kind: KindPhase})
	if err == nil || got.Err == nil {
		t.Fatalf("err %v, outcome %+v; want a failure", err, got)
	}
	for _, text := range []string{err.Error(), got.Err.Error()} {
		if strings.Contains(text, "s3cr3tT0ken") || strings.Contains(text, "q5ecret") {
			t.Fatalf("error shows the URL's secret: %s", text)
		}
		if !strings.Contains(text, strings.TrimPrefix(base, "http://")) {
			t.Fatalf("error %q does not name the receiver's host", text)
		}
	}
}

// The backoff between attempts stops doubling: with the most retries a
// target may have, a receiver that stays down is given up on in minutes
// rather than after days of waiting, during which every later event for it
// would queue behind this one and be dropped.
func TestSender_BackoffIsCapped(t *testing.T) {
	rc := &receiver{failures: 1000}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	most := 20
	target := Target{URL: srv.URL, Retries: &most}
	if err := target.Validate("t"); err != nil {
		t.Fatal(err)
	}
	var got Outcome
	// 1 ms doubling 19 times without a cap waits 17 minutes in all; capped
	// at 64 times the first delay it waits about one second.
	s := &Sender{Backoff: time.Millisecond, Done: func(o Outcome) { got = o }}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = s.Send(ctx, &target, Event{ID: "phase/x/1", Kind: KindPhase})
	if got.Attempts != 1+most || ctx.Err() != nil {
		t.Fatalf("outcome %+v (ctx %v); want all %d attempts made", got, ctx.Err(), 1+most)
	}
}

// A receiver that redirects has not received the event: following a 302
// turns the POST into a GET without the body. It counts as a failed
// attempt, not as sent.
func TestSender_RedirectIsNotDelivery(t *testing.T) {
	var gets atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/moved" {
			gets.Add(1)
			return
		}
		http.Redirect(w, r, "/moved", http.StatusFound)
	}))
	defer srv.Close()
	zero := 0
	target := Target{URL: srv.URL + "/hook", Retries: &zero}
	if err := target.Validate("t"); err != nil {
		t.Fatal(err)
	}
	err := (&Sender{Backoff: time.Millisecond}).Send(context.Background(), &target, Event{ID: "phase/x/1", Kind: KindPhase})
	if err == nil || !strings.Contains(err.Error(), "302") || gets.Load() != 0 {
		t.Fatalf("err %v, redirect target got %d GETs; want a 302 failure, not followed", err, gets.Load())
	}
}
