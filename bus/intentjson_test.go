package bus

import (
	"errors"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A webhook in a JSON intent takes the defaults docs/rollouts.md gives and
// a YAML spec gets: a gate at a pre* point unless it says gating: false,
// two retries unless it says how many. Without them a pipeline's load-test
// gate at prePromotion was committed as a notification, and the rollout
// went to 100% without waiting for it.
func TestIntentJSON_WebhooksTakeTheDefaultsOfAYAMLSpec(t *testing.T) {
	body := `{"id": "ci-1", "applyRollout": {"spec": {"version": "v1", "name": "web-ci", "service": "web", "from": "blue", "to": "green",
	  "strategy": {"blueGreen": {}}, "hooks": {"webhooks": [
	    {"name": "load-test", "point": "HOOK_POINT_PRE_PROMOTION", "url": "http://ci.example.com/gate"},
	    {"name": "by-number", "point": 1, "url": "http://ci.example.com/gate"},
	    {"name": "page", "point": "HOOK_POINT_ROLLBACK", "url": "http://oncall.example.com/"},
	    {"name": "smoke", "point": "HOOK_POINT_PRE_STEP", "url": "http://ci.example.com/smoke", "gating": false, "retries": 0}]}}}}`
	opened, err := OpenIntent([]byte(body))
	if !errors.Is(err, ErrIntentUnsigned) {
		t.Fatalf("open: %v", err)
	}
	want := map[string]struct {
		gating  bool
		retries uint32
	}{"load-test": {true, 2}, "by-number": {true, 2}, "page": {false, 2}, "smoke": {false, 0}}
	hooks := opened.Intent.GetApplyRollout().GetSpec().GetHooks().GetWebhooks()
	if len(hooks) != len(want) {
		t.Fatalf("webhooks %v", hooks)
	}
	for _, w := range hooks {
		if g := want[w.GetName()]; w.GetGating() != g.gating || w.GetRetries() != g.retries {
			t.Errorf("webhook %s: gating %v, retries %d; want %v, %d", w.GetName(), w.GetGating(), w.GetRetries(), g.gating, g.retries)
		}
	}
	if p := hooks[1].GetPoint(); p != sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT {
		t.Errorf("point by number: %v", p)
	}
}
