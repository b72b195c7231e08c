package rollout

import (
	"strings"
	"testing"
	"time"
)

const simHooks = `hooks:
  webhooks:
    - {name: ticket, point: preRollout, url: "http://ci.example/ticket"}
    - {name: smoke, point: preStep, url: "http://ci.example/smoke", gating: false}
    - {name: load-test, point: prePromotion, url: "http://ci.example/load"}
    - {name: pager, point: rollback, url: "https://pager.example/x"}
    - {name: announce, point: postRollout, url: "https://chat.example/x"}
`

func TestSimulate_ShowsWhereWebhooksGate(t *testing.T) {
	src := synthetic(5, 300, func(time.Time) Behavior { return Behavior{ErrorRate: 0.005, Latency: 20 * time.Millisecond} })
	res, err := Simulate(canarySpec(t, simCanary+simHooks), src, SimOptions{Start: t0, ApplyDelay: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range res.Events {
		if e.Action == Webhook {
			got = append(got, e.Message)
		}
	}
	want := []string{
		"webhook ticket gates here (preRollout, pre-rollout)",
		"webhook smoke notifies here (preStep, pre-step/0/1)",
		"webhook smoke notifies here (preStep, pre-step/0/4)",
		"webhook load-test gates here (prePromotion, pre-promotion)",
		"webhook announce notifies here (postRollout, post-rollout)",
	}
	joined := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(joined, w) {
			t.Errorf("events lack %q:\n%s", w, joined)
		}
	}
	if strings.Contains(joined, "pager") {
		t.Errorf("a healthy rollout called the rollback webhook:\n%s", joined)
	}
	if len(got) != 7 { // ticket, smoke before steps 2..5, load-test, announce
		t.Errorf("%d webhook events, want 7:\n%s", len(got), joined)
	}
}
