package spec

import (
	"errors"
	"strings"
	"testing"
	"time"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

const withHooks = canary + `hooks:
  webhooks:
    - name: load-test
      point: prePromotion
      url: http://127.0.0.1:8080/gate
      retries: 1
    - name: pager
      point: rollback
      url: https://pager.example.com/switchyard
  agent:
    preTraffic: [warm-green]
    rollback: [notify-local]
`

func TestSpec_HooksParseWithDefaults(t *testing.T) {
	s, err := Parse([]byte(withHooks))
	if err != nil {
		t.Fatal(err)
	}
	wh := s.GetHooks().GetWebhooks()
	if len(wh) != 2 {
		t.Fatalf("webhooks %v", wh)
	}
	gate, pager := wh[0], wh[1]
	if gate.GetPoint() != sv1.HookPoint_HOOK_POINT_PRE_PROMOTION || !gate.GetGating() || gate.GetRetries() != 1 ||
		gate.GetOnFailure() != sv1.HookFailure_HOOK_FAILURE_HOLD || gate.GetTimeout().AsDuration() != DefaultHookTimeout ||
		gate.GetRecheck().AsDuration() != DefaultHookRecheck {
		t.Fatalf("gate %v", gate)
	}
	if pager.GetGating() || pager.GetRetries() != DefaultHookRetries || pager.GetRecheck() != nil {
		t.Fatalf("a rollback webhook notifies only, got %v", pager)
	}
	if got := AgentHookNames(s); strings.Join(got, ",") != "warm-green,notify-local" {
		t.Fatalf("agent hook names %v", got)
	}
	if !Gated(s, sv1.HookPoint_HOOK_POINT_PRE_PROMOTION) || Gated(s, sv1.HookPoint_HOOK_POINT_ROLLBACK) {
		t.Fatal("Gated disagrees with the spec")
	}
}

func TestSpec_HooksBadInputNamesTheField(t *testing.T) {
	hook := func(fields string) string {
		return canary + "hooks:\n  webhooks:\n    - name: gate\n" + fields
	}
	cases := []struct {
		name, yaml, path, says string
	}{
		{"ftp url", hook("      point: prePromotion\n      url: ftp://example.com/x\n"), "spec.hooks.webhooks[0].url", `scheme "ftp"`},
		{"no url", hook("      point: prePromotion\n"), "spec.hooks.webhooks[0].url", "required"},
		{"no host", hook("      point: prePromotion\n      url: http:///x\n"), "spec.hooks.webhooks[0].url", "no host"},
		{"credentials", hook("      point: prePromotion\n      url: https://u:p@example.com/\n"), "spec.hooks.webhooks[0].url", "credentials"},
		{"timeout too long", hook("      point: prePromotion\n      url: http://x/\n      timeout: 10m\n"), "spec.hooks.webhooks[0].timeout", "out of range, want 1s..5m0s"},
		{"timeout too short", hook("      point: prePromotion\n      url: http://x/\n      timeout: 10ms\n"), "spec.hooks.webhooks[0].timeout", "out of range"},
		{"retries", hook("      point: prePromotion\n      url: http://x/\n      retries: 11\n"), "spec.hooks.webhooks[0].retries", "want 0..10"},
		{"unknown point", hook("      point: beforeLunch\n      url: http://x/\n"), "spec.hooks.webhooks[0].point", "not a hook point"},
		{"gating rollback", hook("      point: rollback\n      url: http://x/\n      gating: true\n"), "spec.hooks.webhooks[0].gating", "cannot gate"},
		{"on failure word", hook("      point: preStep\n      url: http://x/\n      onFailure: shrug\n"), "spec.hooks.webhooks[0].onFailure", "hold, pause or rollback"},
		{"recheck", hook("      point: preStep\n      url: http://x/\n      recheck: 2h\n"), "spec.hooks.webhooks[0].recheck", "out of range"},
		{"unknown field", hook("      point: preStep\n      url: http://x/\n      shell: true\n"), "spec.hooks.webhooks[0].shell", "unknown field"},
		{"agent hook name", canary + "hooks:\n  agent:\n    preTraffic: [\"rm -rf /\"]\n", "spec.hooks.agent.preTraffic[0]", "agents' config"},
		{"agent command", canary + "hooks:\n  agent:\n    preTraffic: [{command: [/bin/true]}]\n", "spec", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.says) {
				t.Fatalf("err = %q, want %q saying %q", err, c.path, c.says)
			}
		})
	}
}

func TestSpec_HooksValidateProtoDuplicates(t *testing.T) {
	s, err := Parse([]byte(withHooks))
	if err != nil {
		t.Fatal(err)
	}
	s.Hooks.Webhooks[1].Name = "load-test"
	s.Hooks.Webhooks[0].Timeout.Seconds = int64(time.Hour / time.Second)
	err = Validate(s)
	for _, want := range []string{`spec.hooks.webhooks[1].name: "load-test" names two webhooks`, "spec.hooks.webhooks[0].timeout: 1h0m0s is out of range"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want %q", err, want)
		}
	}
}
