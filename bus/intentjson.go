package bus

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// drillVersion is chaos.Version, the drill file's version (bus is below
// chaos and cannot name it).
const drillVersion = "v1"

// AcceptSpecJSON reads a JSON intent's spec as its YAML file reads. It
// takes the file's `version: v1`: the version is checked and removed before
// the intent is decoded (the protobuf spec has no version, its package is
// versioned instead), and any other version is refused naming the field.
// And a rollout's webhooks get the defaults a YAML spec gives the fields
// it leaves out (webhookDefaults), which the protobuf message cannot tell
// from false and 0 once decoded; its waves take `percent` as the file
// does (wavePercents). The body is returned unchanged when there
// is nothing to take or fill.
func AcceptSpecJSON(data []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var top map[string]any
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("%w: not valid protojson: %v", ErrIntentMalformed, err)
	}
	changed := false
	for _, k := range []struct{ action, want, field string }{
		{"applyRollout", spec.Version, "applyRollout.spec.version"},
		{"apply_rollout", spec.Version, "apply_rollout.spec.version"},
		{"runDrill", drillVersion, "runDrill.spec.version"},
		{"run_drill", drillVersion, "run_drill.spec.version"},
	} {
		action, _ := top[k.action].(map[string]any)
		sp, _ := action["spec"].(map[string]any)
		v, ok := sp["version"]
		if !ok {
			continue
		}
		if v != k.want {
			return nil, fmt.Errorf("%w: %s: %v is not supported, want %q", spec.ErrInvalid, k.field, v, k.want)
		}
		delete(sp, "version")
		changed = true
	}
	for _, k := range []string{"applyRollout", "apply_rollout"} {
		action, _ := top[k].(map[string]any)
		sp, _ := action["spec"].(map[string]any)
		if webhookDefaults(sp) {
			changed = true
		}
		filled, err := wavePercents(k, sp)
		if err != nil {
			return nil, err
		}
		changed = changed || filled
	}
	if !changed {
		return data, nil
	}
	return json.Marshal(top)
}

// IsJSON tells a protojson body (a JSON object) from a protobuf one: a JSON
// intent or query is decoded as protojson and answered in JSON.
func IsJSON(data []byte) bool {
	t := bytes.TrimSpace(data)
	return len(t) > 0 && t[0] == '{'
}

// webhookDefaults fills, in a JSON rollout spec, the webhook fields a YAML
// spec defaults when they are left out (docs/rollouts.md, "Webhooks"):
// gating, true at a point that can gate, and retries. The coordinators'
// own defaults cannot: in the message, gating left out reads as false,
// and a pipeline's prePromotion gate would be committed as a notification.
// It reports whether it filled anything.
func webhookDefaults(sp map[string]any) bool {
	hooks, _ := sp["hooks"].(map[string]any)
	list, _ := hooks["webhooks"].([]any)
	filled := false
	for _, item := range list {
		w, ok := item.(map[string]any)
		if !ok {
			continue // protojson says what is wrong with it
		}
		if _, ok := w["retries"]; !ok {
			w["retries"] = spec.DefaultHookRetries
			filled = true
		}
		if _, ok := w["gating"]; !ok {
			if p, known := hookPoint(w["point"]); known && !spec.Notifying(p) {
				w["gating"] = true
				filled = true
			}
		}
	}
	return filled
}

// hookPoint reads a webhook's point as protojson would: the enum value's
// name or its number.
func hookPoint(v any) (sv1.HookPoint, bool) {
	var n int64
	switch v := v.(type) {
	case string:
		i, ok := sv1.HookPoint_value[v]
		if !ok {
			return 0, false
		}
		n = int64(i)
	case json.Number:
		i, err := v.Int64()
		if err != nil {
			return 0, false
		}
		n = i
	default:
		return 0, false
	}
	p := sv1.HookPoint(n)
	if p == sv1.HookPoint_HOOK_POINT_UNSPECIFIED || spec.PointName(p) == "unknown" {
		return 0, false
	}
	return p, true
}

// wavePercents lets a JSON rollout spec's waves say percent, as the YAML
// file does, for the message's basis points, and gives a wave that says
// neither every matching node, as the file does. It reports whether it
// changed anything.
func wavePercents(action string, sp map[string]any) (bool, error) {
	waves, _ := sp["waves"].([]any)
	changed := false
	for i, item := range waves {
		w, ok := item.(map[string]any)
		if !ok {
			continue // protojson says what is wrong with it
		}
		path := fmt.Sprintf("%s.spec.waves[%d]", action, i)
		pct, hasPct := w["percent"]
		_, hasBP := w["basisPoints"]
		if _, ok := w["basis_points"]; ok {
			hasBP = true
		}
		switch {
		case hasPct && hasBP:
			return false, fmt.Errorf("%w: %s: both percent and basisPoints; write percent (0.01..100) only", spec.ErrInvalid, path)
		case hasBP:
			continue
		case !hasPct:
			w["basisPoints"] = desiredFull
			changed = true
			continue
		}
		n, ok := pct.(json.Number)
		f, err := n.Float64()
		if !ok || err != nil {
			return false, fmt.Errorf("%w: %s.percent: %v is not a number, want 0.01..100", spec.ErrInvalid, path, pct)
		}
		// As the YAML file: hundredths of a percent, a smaller share
		// would round to no node at all.
		if !(f >= 0.01 && f <= 100) {
			return false, fmt.Errorf("%w: %s.percent: %v is out of range, want 0.01..100", spec.ErrInvalid, path, pct)
		}
		delete(w, "percent")
		w["basisPoints"] = int64(math.Round(f * 100))
		changed = true
	}
	return changed, nil
}

// desiredFull is every matching node, in basis points.
const desiredFull = 10000
