package spec

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/switchyard/switchyard/internal/names"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// Defaults and bounds of webhooks.
const (
	DefaultHookTimeout = 10 * time.Second
	MinHookTimeout     = time.Second
	MaxHookTimeout     = 5 * time.Minute
	DefaultHookRetries = 2
	MaxHookRetries     = 10
	DefaultHookRecheck = 10 * time.Second
	MinHookRecheck     = time.Second
	MaxHookRecheck     = time.Hour
)

// hookPoints maps the spec's words to hook points, in the order they come
// in a rollout's life.
var hookPoints = []struct {
	word  string
	point sv1.HookPoint
}{
	{"preRollout", sv1.HookPoint_HOOK_POINT_PRE_ROLLOUT},
	{"preWave", sv1.HookPoint_HOOK_POINT_PRE_WAVE},
	{"preStep", sv1.HookPoint_HOOK_POINT_PRE_STEP},
	{"prePromotion", sv1.HookPoint_HOOK_POINT_PRE_PROMOTION},
	{"postRollout", sv1.HookPoint_HOOK_POINT_POST_ROLLOUT},
	{"rollback", sv1.HookPoint_HOOK_POINT_ROLLBACK},
}

// PointName is the spec's word for a hook point.
func PointName(p sv1.HookPoint) string {
	for _, hp := range hookPoints {
		if hp.point == p {
			return hp.word
		}
	}
	return "unknown"
}

func pointWords() string {
	words := make([]string, len(hookPoints))
	for i, hp := range hookPoints {
		words[i] = hp.word
	}
	return strings.Join(words, ", ")
}

// Notifying reports whether a point can never gate: what comes after it
// (completion, a rollback) must not wait for anyone.
func Notifying(p sv1.HookPoint) bool {
	return p == sv1.HookPoint_HOOK_POINT_POST_ROLLOUT || p == sv1.HookPoint_HOOK_POINT_ROLLBACK
}

type hooksFile struct {
	Webhooks []webhookFile  `yaml:"webhooks"`
	Agent    *agentHookFile `yaml:"agent"`
}

type webhookFile struct {
	Name      string        `yaml:"name"`
	Point     string        `yaml:"point"`
	URL       string        `yaml:"url"`
	Timeout   time.Duration `yaml:"timeout"`
	Retries   *int          `yaml:"retries"`
	Gating    *bool         `yaml:"gating"`
	OnFailure string        `yaml:"onFailure"`
	Recheck   time.Duration `yaml:"recheck"`
}

type agentHookFile struct {
	PreTraffic  []string `yaml:"preTraffic"`
	PostTraffic []string `yaml:"postTraffic"`
	Rollback    []string `yaml:"rollback"`
}

// convertHooks turns the YAML hooks into the message, reporting words it
// does not know; ranges are Validate's.
func convertHooks(add func(string, string, ...any), h *hooksFile) *sv1.HooksSpec {
	if h == nil {
		return nil
	}
	out := &sv1.HooksSpec{}
	for i, w := range h.Webhooks {
		path := fmt.Sprintf("spec.hooks.webhooks[%d]", i)
		wh := &sv1.Webhook{Name: w.Name, Url: w.URL, Timeout: durationOrNil(w.Timeout), Recheck: durationOrNil(w.Recheck)}
		found := false
		for _, hp := range hookPoints {
			if hp.word == w.Point {
				wh.Point, found = hp.point, true
			}
		}
		switch {
		case w.Point == "":
			add(path+".point", "required: one of %s", pointWords())
		case !found:
			add(path+".point", "%q is not a hook point, want one of %s", w.Point, pointWords())
		}
		wh.Retries = DefaultHookRetries
		if w.Retries != nil {
			if *w.Retries < 0 || *w.Retries > MaxHookRetries {
				add(path+".retries", "%d is out of range, want 0..%d", *w.Retries, MaxHookRetries)
			} else {
				wh.Retries = uint32(*w.Retries)
			}
		}
		if w.Gating != nil {
			wh.Gating = *w.Gating
		} else {
			wh.Gating = found && !Notifying(wh.Point)
		}
		switch w.OnFailure {
		case "", "hold":
			if wh.Gating {
				wh.OnFailure = sv1.HookFailure_HOOK_FAILURE_HOLD
			}
		case "rollback":
			wh.OnFailure = sv1.HookFailure_HOOK_FAILURE_ROLLBACK
		case "pause":
			wh.OnFailure = sv1.HookFailure_HOOK_FAILURE_PAUSE
		default:
			add(path+".onFailure", "%q is not accepted, want hold, pause or rollback", w.OnFailure)
		}
		out.Webhooks = append(out.Webhooks, wh)
	}
	if a := h.Agent; a != nil {
		out.Agent = &sv1.AgentHooks{PreTraffic: a.PreTraffic, PostTraffic: a.PostTraffic, Rollback: a.Rollback}
	}
	return out
}

// defaultHooks fills in webhooks' optional fields.
func defaultHooks(h *sv1.HooksSpec) {
	for _, w := range h.GetWebhooks() {
		if w.Timeout == nil {
			w.Timeout = durationpb.New(DefaultHookTimeout)
		}
		if w.GetGating() && w.GetOnFailure() == sv1.HookFailure_HOOK_FAILURE_UNSPECIFIED {
			w.OnFailure = sv1.HookFailure_HOOK_FAILURE_HOLD
		}
		if w.GetGating() && w.Recheck == nil {
			w.Recheck = durationpb.New(DefaultHookRecheck)
		}
	}
}

// validateHooks checks hooks however the spec arrived.
func validateHooks(add func(string, string, ...any), h *sv1.HooksSpec) {
	seen := map[string]bool{}
	for i, w := range h.GetWebhooks() {
		path := fmt.Sprintf("spec.hooks.webhooks[%d]", i)
		if w.GetName() == "" {
			add(path+".name", "required: a name for the webhook, unique in the rollout")
		} else if err := names.Validate(w.GetName()); err != nil {
			add(path+".name", "%s", strings.TrimPrefix(err.Error(), names.ErrInvalid.Error()+": "))
		} else if seen[w.GetName()] {
			add(path+".name", "%q names two webhooks", w.GetName())
		}
		seen[w.GetName()] = true
		if PointName(w.GetPoint()) == "unknown" {
			add(path+".point", "required: one of %s", pointWords())
		}
		checkHookURL(add, path+".url", w.GetUrl())
		checkRange(add, path+".timeout", w.GetTimeout(), MinHookTimeout, MaxHookTimeout)
		if w.GetRetries() > MaxHookRetries {
			add(path+".retries", "%d is out of range, want 0..%d", w.GetRetries(), MaxHookRetries)
		}
		if w.GetGating() && Notifying(w.GetPoint()) {
			add(path+".gating", "a %s webhook cannot gate: nothing may wait for it; remove gating", PointName(w.GetPoint()))
		}
		if f := w.GetOnFailure(); !w.GetGating() && (f == sv1.HookFailure_HOOK_FAILURE_ROLLBACK || f == sv1.HookFailure_HOOK_FAILURE_PAUSE) {
			add(path+".onFailure", "%s applies to gating webhooks only; a notifying webhook's failure is recorded, never acted on",
				strings.ToLower(strings.TrimPrefix(f.String(), "HOOK_FAILURE_")))
		}
		if w.GetGating() {
			checkRange(add, path+".recheck", w.GetRecheck(), MinHookRecheck, MaxHookRecheck)
		}
	}
	a := h.GetAgent()
	for _, l := range []struct {
		field string
		names []string
	}{{"preTraffic", a.GetPreTraffic()}, {"postTraffic", a.GetPostTraffic()}, {"rollback", a.GetRollback()}} {
		dup := map[string]bool{}
		for i, n := range l.names {
			path := fmt.Sprintf("spec.hooks.agent.%s[%d]", l.field, i)
			if err := names.Validate(n); err != nil {
				add(path, "%s (a hook named in the agents' config)", strings.TrimPrefix(err.Error(), names.ErrInvalid.Error()+": "))
			} else if dup[n] {
				add(path, "%q is named twice", n)
			}
			dup[n] = true
		}
	}
}

func checkHookURL(add func(string, string, ...any), path, raw string) {
	if raw == "" {
		add(path, "required: the http:// or https:// URL the leader POSTs to")
		return
	}
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		add(path, "%q is not a URL: %v", raw, err)
	case u.Scheme != "http" && u.Scheme != "https":
		add(path, "%q: scheme %q is not accepted, want http or https", raw, u.Scheme)
	case u.Host == "":
		add(path, "%q has no host, want e.g. https://ci.example.com/gate", raw)
	case u.User != nil:
		add(path, "%q carries credentials; specs are replicated and shown to viewers, so put none in the URL", raw)
	}
}

func checkRange(add func(string, string, ...any), path string, d *durationpb.Duration, lo, hi time.Duration) {
	if d == nil {
		add(path, "required: a duration %s..%s", lo, hi)
		return
	}
	if d.CheckValid() != nil || d.AsDuration() < lo || d.AsDuration() > hi {
		add(path, "%v is out of range, want %s..%s", d.AsDuration(), lo, hi)
	}
}

// AgentHookNames lists every agent hook a spec names, once each, in the
// order they appear.
func AgentHookNames(s *sv1.RolloutSpec) []string {
	a := s.GetHooks().GetAgent()
	var out []string
	seen := map[string]bool{}
	for _, l := range [][]string{a.GetPreTraffic(), a.GetPostTraffic(), a.GetRollback()} {
		for _, n := range l {
			if !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// Webhooks returns a spec's webhooks at a point, in spec order.
func Webhooks(s *sv1.RolloutSpec, p sv1.HookPoint) []*sv1.Webhook {
	var out []*sv1.Webhook
	for _, w := range s.GetHooks().GetWebhooks() {
		if w.GetPoint() == p {
			out = append(out, w)
		}
	}
	return out
}

// Gated reports whether any webhook gates at a point.
func Gated(s *sv1.RolloutSpec, p sv1.HookPoint) bool {
	for _, w := range Webhooks(s, p) {
		if w.GetGating() {
			return true
		}
	}
	return false
}
