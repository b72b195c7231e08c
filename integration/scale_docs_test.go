package integration

import (
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDocs_ReadingTheScaleProfiles runs the pprof commands of
// docs/operations.md on profiles written the way the scale benchmark
// writes them.
func TestDocs_ReadingTheScaleProfiles(t *testing.T) {
	dir := t.TempDir()
	profiles := filepath.Join(dir, "bench", "profiles")
	t.Setenv(profileDirEnv, profiles)
	stop := startProfile(t, "BenchmarkScale_DecisionToApplied_agents-10000_keyring-own")
	// Some work for the CPU profile to see.
	sum := sha256.Sum256(nil)
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
		sum = sha256.Sum256(sum[:])
	}
	stop()
	for _, ext := range []string{".cpu.pprof", ".heap.pprof"} {
		if fi, err := os.Stat(filepath.Join(profiles, "BenchmarkScale_DecisionToApplied_agents-10000_keyring-own"+ext)); err != nil || fi.Size() == 0 {
			t.Fatalf("profile %s: %v", ext, err)
		}
	}
	for _, c := range docCommands(t, "docs/operations.md", "TestDocs_ReadingTheScaleProfiles") {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := exec.CommandContext(ctx, "bash", "-c", c.text)
		cmd.Dir = dir
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
