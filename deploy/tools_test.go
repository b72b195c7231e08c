package deploy

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// repoRoot is the checkout the tests read the deploy files and Go sources
// from.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// tool finds a command the test needs; CI installs it (.ci/run), so a
// missing tool fails the test rather than skipping it.
func tool(t *testing.T, name, debianPackage string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install Debian's %s package (.ci/run does)", name, debianPackage)
	}
	return path
}

// runTool runs a command with a deadline and returns its combined output;
// the test fails when it exits non-zero.
func runTool(t *testing.T, timeout time.Duration, dir string, name string, args ...string) string {
	t.Helper()
	out, err := tryTool(t, timeout, dir, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

func tryTool(t *testing.T, timeout time.Duration, dir string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
