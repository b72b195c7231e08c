package coordinator

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/switchyard/switchyard/internal/spec"
	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A pipeline's JSON intent is refused before commit for the plans a YAML
// spec is refused for, naming the same field.
func TestIntents_PrecheckRefusesPlansThatCannotRun(t *testing.T) {
	for _, c := range []struct{ steps, want string }{
		{`[{"setWeight": 10}, {"pause": {"duration": "0s"}}]`, "spec.strategy.canary.steps[1].pause.duration: 0s is no pause"},
		{`[{"analysis": {"windows": 3}}, {"setWeight": 50}]`, "spec.strategy.canary.steps[0].analysis: the new backend has weight 0"},
	} {
		body := `{"id": "ci-1", "applyRollout": {"spec": {"name": "web-ci", "service": "web", "from": "blue", "to": "green",
		  "strategy": {"canary": {"steps": ` + c.steps + `}}}}}`
		var in sv1.Intent
		if err := protojson.Unmarshal([]byte(body), &in); err != nil {
			t.Fatal(err)
		}
		err := precheck(&in)
		if err == nil || !errors.Is(err, spec.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("steps %s: %v, want refused as invalid naming %q", c.steps, err, c.want)
		}
	}
	body := `{"id": "ci-2", "applyRollout": {"spec": {"name": "web-ci", "service": "web", "from": "blue", "to": "green",
	  "strategy": {"blueGreen": {}}, "waves": [{"name": "canary", "basisPoints": 1000},
	  {"name": "eu", "selector": {"region": "eu"}, "basisPoints": 1000}]}}}`
	var in sv1.Intent
	if err := protojson.Unmarshal([]byte(body), &in); err != nil {
		t.Fatal(err)
	}
	if err := precheck(&in); err == nil || !strings.Contains(err.Error(), `spec.waves[1]: selects no node`) {
		t.Errorf("a wave the first one leaves no node to: %v", err)
	}
}
