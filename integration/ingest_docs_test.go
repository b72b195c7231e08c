package integration

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// TestDocs_ProfilingACoordinator runs the pprof commands of
// docs/operations.md against a `switchyard coordinator` started with
// --pprof-addr, and on profiles fetched from it the way the ingest
// benchmark keeps them. It only checks that each command prints a table,
// so it may share the cores.
func TestDocs_ProfilingACoordinator(t *testing.T) {
	t.Parallel()
	sy, _ := binaries(t)
	ctx := harnesstest.Context(t, 3*time.Minute)
	nb := harnesstest.StartNATS(t)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Size: 1, Switchyard: sy, NATS: nb, Log: io.Discard, LogLevel: "warn", Pprof: true})
	addr := c.Coordinators[0].PprofAddr
	if addr == "" {
		t.Fatal("the harness gave the coordinator no --pprof-addr")
	}
	dir := t.TempDir()
	profileCoordinatorTo(t, ctx, filepath.Join(dir, "bench", "profiles"), addr, "BenchmarkIngest_ReportsPerSecond", time.Second)()
	for _, ext := range []string{".coordinator.cpu.pprof", ".coordinator.heap.pprof"} {
		if fi, err := os.Stat(filepath.Join(dir, "bench", "profiles", "BenchmarkIngest_ReportsPerSecond"+ext)); err != nil || fi.Size() == 0 {
			t.Fatalf("profile %s: %v", ext, err)
		}
	}
	cmds := docCommands(t, "docs/operations.md", "TestDocs_ProfilingACoordinator")
	if len(cmds) != 4 {
		t.Fatalf("%d commands under TestDocs_ProfilingACoordinator, want 4", len(cmds))
	}
	for _, c := range cmds {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		cmd := exec.CommandContext(cctx, "bash", "-c", c.text)
		cmd.Dir = dir
		// go tool pprof keeps what it fetches in PPROF_TMPDIR ($HOME/pprof
		// by default).
		cmd.Env = append(os.Environ(), "SWITCHYARD_PPROF_ADDR="+addr, "PPROF_TMPDIR="+dir)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.text, err, out)
		}
		if !strings.Contains(string(out), "flat%") {
			t.Fatalf("%s printed no table:\n%s", c.text, out)
		}
	}
}
