package bus

import (
	"errors"
	"strings"
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

// A wave in a JSON intent reads as in YAML: percent of the matching nodes,
// every one when left out. Before, a wave without basisPoints was refused
// as "spec.waves[0].percent: 0 is out of range" and one with percent as an
// unknown field.
func TestIntentJSON_WavesTakePercentAsInYAML(t *testing.T) {
	body := `{"id": "ci-1", "applyRollout": {"spec": {"name": "web-ci", "service": "web", "from": "blue", "to": "green",
	  "strategy": {"blueGreen": {}}, "waves": [{"name": "eu", "selector": {"region": "eu"}, "percent": 12.5},
	  {"name": "rest"}, {"name": "raw", "basisPoints": 300}]}}}`
	opened, err := OpenIntent([]byte(body))
	if !errors.Is(err, ErrIntentUnsigned) {
		t.Fatalf("open: %v", err)
	}
	var got []uint32
	for _, w := range opened.Intent.GetApplyRollout().GetSpec().GetWaves() {
		got = append(got, w.GetBasisPoints())
	}
	if len(got) != 3 || got[0] != 1250 || got[1] != 10000 || got[2] != 300 {
		t.Fatalf("basis points %v, want [1250 10000 300]", got)
	}
	for doc, want := range map[string]string{
		`{"id": "x", "applyRollout": {"spec": {"waves": [{"name": "a", "percent": 0.004}]}}}`:                   "applyRollout.spec.waves[0].percent: 0.004 is out of range, want 0.01..100",
		`{"id": "x", "applyRollout": {"spec": {"waves": [{"name": "a", "percent": 10, "basisPoints": 1000}]}}}`: "applyRollout.spec.waves[0]: both percent and basisPoints",
	} {
		if _, err := OpenIntent([]byte(doc)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", doc, err, want)
		}
	}
}
