package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A rollout whose first wave waits for approval has moved no traffic:
// rollout status says where it stands as the read API and the dashboard
// do, not the first step's weight as if it were served.
func TestCLI_StatusOfARolloutHeldAtItsStartSaysNoTrafficMoved(t *testing.T) {
	p := startReadPlane(t)
	spec := filepath.Join(t.TempDir(), "gated.yaml")
	if err := os.WriteFile(spec, []byte(`version: v1
name: web-gated
service: web
from: blue
to: green
strategy:
  canary:
    steps:
      - setWeight: 20
      - pause: {}
waves:
  - name: eu
    selector: {region: eu}
    manualGate: true
  - name: everyone
`), 0o600); err != nil {
		t.Fatal(err)
	}
	nats := []string{"--nats", p.natsURL}
	if code, out, stderr := runCLI(t, append([]string{"rollout", "apply", "-f", spec, "--publish-timeout", "10s"}, nats...)...); code != exitOK {
		t.Fatalf("apply: exit %d: %s %s", code, out, stderr)
	}
	var api sv1.RolloutsAnswer
	if err := protojson.Unmarshal(p.get(t, "/v1/rollouts/web-gated"), &api); err != nil {
		t.Fatal(err)
	}
	want := api.GetRollouts()[0].GetPosition()
	if !strings.Contains(want, "no traffic moved") {
		t.Fatalf("the API's position of a rollout held at its start: %q", want)
	}
	code, out, stderr := runCLI(t, append([]string{"rollout", "status", "web-gated"}, nats...)...)
	if code != exitOK {
		t.Fatalf("status: exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "Position:    "+want+"\n") {
		t.Errorf("rollout status does not say the position the API says (%q):\n%s", want, out)
	}
}
