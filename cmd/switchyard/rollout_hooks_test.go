package main

import (
	"bytes"
	"strings"
	"testing"

	sv1 "github.com/switchyard/switchyard/proto/switchyard/v1"
)

// A failed hook's last output line is what it printed last, also when that
// is a progress bar's carriage-return-separated update: a carriage return
// printed into the table would overwrite the row.
func TestRolloutStatus_AgentHooksTableShowsTheLastOutputOnOneLine(t *testing.T) {
	v := &sv1.RolloutView{Nodes: []*sv1.NodeView{{Node: "edge-1", HookRuns: []*sv1.HookRun{{
		Hook: "warm-green", Point: "preTraffic", Generation: 7, State: "failed", ExitCode: 3, Error: "exit status 3",
		Output: "warming\n 10%\r 55%\rerror: cache node unreachable\r\n",
	}}}}}
	var out bytes.Buffer
	printHookCalls(&out, v)
	if strings.Contains(out.String(), "\r") || !strings.Contains(out.String(), "exit status 3; last output line: error: cache node unreachable\n") {
		t.Fatalf("agent hooks table:\n%q", out.String())
	}
}
