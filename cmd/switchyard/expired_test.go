package main

import (
	"bytes"
	"strings"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A node whose applied document expired keeps its weights and cannot be
// told new ones: fleet status says so as rollout status and the dashboard
// do, even when the agent's message is about something else (its proxy).
func TestCLI_FleetStatusMarksANodeWhoseDocumentExpired(t *testing.T) {
	n := &sv1.NodeView{Node: "edge-1", Wave: "-", DocumentExpired: true, Driver: sv1.DriverHealth_DRIVER_HEALTH_DEGRADED,
		Message: "runtime API socket /run/haproxy.sock: connection refused"}
	var out bytes.Buffer
	printFleet(&out, &sv1.FleetStatus{Services: []*sv1.ServiceFleet{{Service: "web",
		Waves: []*sv1.WaveNodes{{Wave: "-", Index: -1, Nodes: []*sv1.NodeView{n}}}}}})
	if !strings.Contains(out.String(), "EXPIRED") || !strings.Contains(out.String(), "connection refused") {
		t.Errorf("fleet status of a node whose document expired:\n%s", out.String())
	}
}
