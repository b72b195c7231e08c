package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// docBlock returns the commands of the ```sh block of docs/operations.md
// marked with "<!-- run: NAME -->", one per line.
func docBlock(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	marker := "<!-- run: " + name + " -->"
	for i, l := range lines {
		if strings.TrimSpace(l) != marker {
			continue
		}
		if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "```sh" {
			t.Fatalf("docs/operations.md:%d: %s is not followed by a ```sh block", i+1, marker)
		}
		var out []string
		for _, c := range lines[i+2:] {
			if strings.TrimSpace(c) == "```" {
				return out
			}
			if strings.TrimSpace(c) != "" {
				out = append(out, c)
			}
		}
		t.Fatalf("docs/operations.md: the block after %s does not end", marker)
	}
	t.Fatalf("docs/operations.md has no block marked %s", marker)
	return nil
}

// runDocCommand runs one documented command with bash from the checkout's
// root, as a reader would.
func runDocCommand(t *testing.T, command string) string {
	t.Helper()
	return runTool(t, 5*time.Minute, repoRoot(t), "bash", "-euo", "pipefail", "-c", command)
}

// The rule commands of "Prometheus and Grafana" run and pass.
func TestDocs_OperationsRules(t *testing.T) {
	tool(t, "promtool", "prometheus")
	cmds := docBlock(t, "deploy-rules")
	if len(cmds) != 3 {
		t.Fatalf("want the config check, the rules check and the rule tests, got %q", cmds)
	}
	for _, c := range cmds {
		if out := runDocCommand(t, c); !strings.Contains(out, "SUCCESS") {
			t.Errorf("%s: %s", c, out)
		}
	}
}

// The commands of "Installing from the .deb" run top to bottom: build the
// package, install it, print the version from the installed binary, verify
// the units, purge it. As another user than root only the build runs and
// the .deb is inspected.
func TestDocs_OperationsPackage(t *testing.T) {
	tool(t, "dpkg", "dpkg")
	tool(t, "systemd-analyze", "systemd")
	cmds := docBlock(t, "deploy-package")
	if len(cmds) != 5 || !strings.HasPrefix(cmds[0], "make package VERSION=v0.3.0") {
		t.Fatalf("the documented package commands changed; update this test: %q", cmds)
	}
	t.Cleanup(func() {
		debs, _ := filepath.Glob(filepath.Join(repoRoot(t), "bin", "switchyard_0.3.0_*.deb"))
		for _, d := range debs {
			os.Remove(d)
		}
	})
	if os.Geteuid() != 0 {
		runDocCommand(t, cmds[0])
		debs, _ := filepath.Glob(filepath.Join(repoRoot(t), "bin", "switchyard_0.3.0_*.deb"))
		if len(debs) != 1 {
			t.Fatalf("make package wrote %v", debs)
		}
		t.Logf("not root: built %s; dpkg -i needs root", debs[0])
		return
	}
	if _, err := os.Stat("/usr/bin/switchyard"); err == nil {
		t.Fatal("/usr/bin/switchyard exists already; this test installs and purges its own package")
	}
	_, userErr := tryTool(t, time.Minute, ".", "getent", "passwd", "switchyard")
	installed := false
	t.Cleanup(func() {
		if installed {
			if out, err := dpkgRetry(t, "dpkg", "--purge", "switchyard"); err != nil {
				t.Errorf("dpkg --purge: %v\n%s", err, out)
			}
		}
		if userErr != nil {
			tryTool(t, time.Minute, ".", "userdel", "switchyard")
			tryTool(t, time.Minute, ".", "groupdel", "switchyard")
		}
	})
	for i, c := range cmds {
		out := runDocCommand(t, c)
		switch i {
		case 1:
			installed = true
		case 2:
			if strings.TrimSpace(out) != "switchyard v0.3.0" {
				t.Errorf("%s: %q, want %q", c, out, "switchyard v0.3.0")
			}
		case 3:
			if strings.TrimSpace(out) != "" {
				t.Errorf("%s: %s", c, out)
			}
		case 4:
			installed = false
		}
	}
	if _, err := os.Stat("/usr/bin/switchyard"); err == nil {
		t.Error("/usr/bin/switchyard is still there after dpkg --purge")
	}
}
