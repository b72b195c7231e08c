package bus

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/switchyard/switchyard/internal/spec"
)

// drillVersion is chaos.Version, the drill file's version (bus is below
// chaos and cannot name it).
const drillVersion = "v1"

// AcceptSpecVersion lets a JSON intent carry a spec as its YAML file reads,
// with the file's `version: v1`: the version is checked and removed before
// the intent is decoded (the protobuf spec has no version, its package is
// versioned instead). Any other version is refused naming the field. The
// body is returned unchanged when no spec in it has a version.
func AcceptSpecVersion(data []byte) ([]byte, error) {
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
