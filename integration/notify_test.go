package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// notifyReceiver is a local webhook receiver that refuses its first call,
// so the sender's retry is part of what is tested.
type notifyReceiver struct {
	mu      sync.Mutex
	refuse  int
	bodies  []string
	ids     map[string]int
	headers []http.Header
}

func (n *notifyReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.refuse > 0 {
		n.refuse--
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	n.bodies = append(n.bodies, string(b))
	n.ids[r.Header.Get("Switchyard-Event-Id")]++
	n.headers = append(n.headers, r.Header.Clone())
}

func (n *notifyReceiver) got() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.bodies...)
}

// TestNotify_ABadCanaryIsToldToReceiversWithItsEvidence runs a canary on a
// real fleet with two receivers configured on the coordinator (`switchyard
// dev --notify URL --notify-slack URL`): green starts failing, the fleet
// rolls back by itself, and both receivers hear of the start, the rollback
// with its evidence and the end, the JSON one after a refused first call.
func TestNotify_ABadCanaryIsToldToReceiversWithItsEvidence(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	hook := &notifyReceiver{refuse: 1, ids: map[string]int{}}
	chat := &notifyReceiver{ids: map[string]int{}}
	hookSrv, chatSrv := httptest.NewServer(hook), httptest.NewServer(chat)
	defer hookSrv.Close()
	defer chatSrv.Close()

	sy, be := binaries(t)
	f := harnesstest.StartFleet(t, ctx, harness.FleetOptions{Nodes: 2, Service: "web", Switchyard: sy, Backend: be,
		DevArgs: []string{"--notify", hookSrv.URL + "/switchyard", "--notify-slack", chatSrv.URL + "/services/T0/B0/x"}})
	stop := load(ctx, t, f, 100)
	defer stop()
	if _, err := f.Apply(ctx, writeSpec(t, "notify", fmt.Sprintf(seqCanary, "web-notify"))); err != nil {
		t.Fatal(err)
	}
	atCanaryWeight(ctx, t, f, "web-notify")
	setErrors(t, f, harness.Green, 0.3)
	if _, err := f.WaitRollout(ctx, "web-notify", f.Converged(sv1.RolloutPhase_ROLLOUT_PHASE_ROLLED_BACK)); err != nil {
		t.Fatal(err)
	}

	type event struct {
		ID, Kind, Rollout, Phase, Evidence, Reason string
	}
	var events []event
	if err := harness.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
		events = events[:0]
		for _, b := range hook.got() {
			var e event
			if err := json.Unmarshal([]byte(b), &e); err != nil {
				return harness.Permanent(fmt.Errorf("body %q: %v", b, err))
			}
			events = append(events, e)
		}
		var seen []string
		for _, e := range events {
			seen = append(seen, e.Kind+":"+e.Phase)
		}
		all := strings.Join(seen, ",")
		for _, want := range []string{"phase:progressing", "phase:rolling-back", "rollback:rolling-back", "phase:rolled-back"} {
			if !strings.Contains(all, want) {
				return fmt.Errorf("receiver has %s; no %s yet", all, want)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		if e.Rollout != "web-notify" {
			t.Errorf("event for %q", e.Rollout)
		}
		if e.Kind == "rollback" && (!strings.Contains(e.Evidence, "errors") || e.Reason == "") {
			t.Errorf("rollback event without its evidence: %+v", e)
		}
	}
	hook.mu.Lock()
	for id, n := range hook.ids {
		if n != 1 {
			t.Errorf("event %s received %d times", id, n)
		}
	}
	hook.mu.Unlock()

	if err := harness.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
		for _, b := range chat.got() {
			var body struct{ Text string }
			if err := json.Unmarshal([]byte(b), &body); err != nil {
				return harness.Permanent(fmt.Errorf("slack body %q: %v", b, err))
			}
			if strings.Contains(body.Text, "web-notify") && strings.Contains(body.Text, "rolling back") && strings.Contains(body.Text, "Evidence:") {
				return nil
			}
		}
		return fmt.Errorf("no rollback text among %d chat messages", len(chat.got()))
	}); err != nil {
		t.Fatal(err)
	}
	metrics, err := f.CoordinatorMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(metrics, `switchyard_coordinator_notifications_total{outcome="sent"`) {
		t.Errorf("no notifications counted as sent:\n%s", grepLines(metrics, "notifications"))
	}
}

// grepLines is the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
