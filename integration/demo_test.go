package integration

import (
	"bytes"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// TestDemo_MakeDemoAsTheREADMESays runs the README's first command, `make
// demo`, as written from the repository's root: a local fleet with real
// NATS, a coordinator, three agents with real HAProxy, a blue-green
// release, an abort, and a bad canary the judge rolls back by itself. It
// must exit 0, narrate each part, and say it stopped what it started.
func TestDemo_MakeDemoAsTheREADMESays(t *testing.T) {
	ctx := harnesstest.Context(t, 5*time.Minute)
	binaries(t) // builds the module once; the demo's `go run` then finds it cached
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "make", "demo")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("make demo: %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{
		"->  green x10", // the blue-green switch, through every HAProxy
		"->  blue x10",
		"every HAProxy back on blue:",
		"with nobody acting",
		"Phase:       rolled-back",
		"== Stopping every process",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("make demo did not say %q:\n%s", want, text)
		}
	}
	if m := regexp.MustCompile(`caught and reverted in ([0-9.]+)s`).FindStringSubmatch(text); m == nil {
		t.Errorf("make demo did not say how long the bad canary took to revert:\n%s", text)
	}
}
