package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/agent"
	"github.com/switchyard/switchyard/agent/driver/haproxy"
)

const testVersion = "v9.8.7-1-gdeb0test"

// buildDeb builds a switchyard binary stamped with testVersion and packages
// it the way `make package` does; it returns the .deb's path.
func buildDeb(t *testing.T) string {
	t.Helper()
	goCmd := goTool(t)
	dir := t.TempDir()
	bin := buildBinary(t)
	out := runTool(t, 5*time.Minute, "package", goCmd, "run", ".", "-version", testVersion, "-binary", bin, "-out", dir)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	deb := lines[len(lines)-1]
	if !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("package printed no .deb path: %s", out)
	}
	return deb
}

func TestPackage_RefusesBadInput(t *testing.T) {
	goCmd := goTool(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "-binary: required"},
		{[]string{"-binary", "/nonexistent/switchyard"}, "-binary: stat /nonexistent/switchyard"},
		{[]string{"-binary", "nfpm.yaml"}, "-binary: "},
		{[]string{"-binary", "/bin/sh", "-version", "1.0 beta"}, "-version: "},
	} {
		out, err := tryTool(t, 5*time.Minute, "package", goCmd, append([]string{"run", "."}, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("package %v: err %v, output %q; want a failure naming %q", c.args, err, out, c.want)
		}
	}
}

// The .deb installs into the real system with dpkg -i (CI runs as root),
// its units pass systemd-analyze verify, the installed binary reports the
// stamped version, and dpkg --purge removes it again. Without root the
// package is unpacked with dpkg-deb -x into a temporary directory instead.
func TestPackage_DebInstallsUnitsVerifyAndVersionRuns(t *testing.T) {
	dpkg := tool(t, "dpkg", "dpkg")
	dpkgDeb := tool(t, "dpkg-deb", "dpkg")
	analyze := tool(t, "systemd-analyze", "systemd")
	deb := buildDeb(t)

	fields := runTool(t, time.Minute, ".", dpkgDeb, "--show", "--showformat", "${Package} ${Version} ${Depends}\n", deb)
	if want := "switchyard 9.8.7+1+gdeb0test adduser"; strings.TrimSpace(fields) != want {
		t.Errorf("package fields %q, want %q", strings.TrimSpace(fields), want)
	}
	contents := runTool(t, time.Minute, ".", dpkgDeb, "--contents", deb)
	for _, f := range []string{"./usr/bin/switchyard", "./lib/systemd/system/switchyard-coordinator.service",
		"./lib/systemd/system/switchyard-agent.service", "./etc/switchyard/coordinator.yaml", "./etc/switchyard/agent.yaml",
		"./usr/share/switchyard/prometheus/switchyard.rules.yml", "./usr/share/switchyard/grafana/fleet.json"} {
		if !strings.Contains(contents, f+"\n") {
			t.Errorf("the package has no %s:\n%s", f, contents)
		}
	}
	conffiles := runTool(t, time.Minute, ".", dpkgDeb, "--info", deb, "conffiles")
	if !strings.Contains(conffiles, "/etc/switchyard/agent.yaml") || !strings.Contains(conffiles, "/etc/switchyard/coordinator.yaml") {
		t.Errorf("the example configs are not conffiles: %q", conffiles)
	}

	root := "/"
	if os.Geteuid() == 0 {
		installDeb(t, dpkg, deb)
	} else {
		t.Logf("not root: unpacking with dpkg-deb -x instead of dpkg -i")
		root = t.TempDir()
		runTool(t, time.Minute, ".", dpkgDeb, "-x", deb, root)
	}

	binary := filepath.Join(root, "usr/bin/switchyard")
	if got := strings.TrimSpace(runTool(t, 30*time.Second, ".", binary, "--version")); got != "switchyard "+testVersion {
		t.Errorf("%s --version: %q, want %q", binary, got, "switchyard "+testVersion)
	}

	units := []string{
		filepath.Join(root, "lib/systemd/system/switchyard-coordinator.service"),
		filepath.Join(root, "lib/systemd/system/switchyard-agent.service"),
	}
	verify := units
	if root != "/" {
		// Unpacked, the binary is not at /usr/bin: verify copies of the
		// units whose ExecStart names the unpacked one.
		verify = nil
		dir := t.TempDir()
		for _, u := range units {
			b, err := os.ReadFile(u)
			if err != nil {
				t.Fatal(err)
			}
			c := filepath.Join(dir, filepath.Base(u))
			if err := os.WriteFile(c, []byte(strings.ReplaceAll(string(b), "ExecStart=/usr/bin/switchyard", "ExecStart="+binary)), 0o644); err != nil {
				t.Fatal(err)
			}
			verify = append(verify, c)
		}
	}
	// verify reports unknown keys as warnings and exits 0; any output fails.
	if out, err := tryTool(t, time.Minute, ".", analyze, append([]string{"verify"}, verify...)...); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify %v: %v\n%s", verify, err, out)
	}
	// The hardening, as systemd scores it: exposure at most 2.5 of 10
	// (threshold 25 of 100; an unhardened service scores 9.6).
	if out, err := tryTool(t, time.Minute, ".", analyze, append([]string{"security", "--offline=yes", "--threshold=25", "--no-pager"}, verify...)...); err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.5: %v\n%s", err, out)
	} else {
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "Overall exposure level") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"User=switchyard", "NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes",
			"ProtectHome=yes", "CapabilityBoundingSet=\n", "StateDirectory=switchyard/"} {
			if !strings.Contains(string(b), d) {
				t.Errorf("%s: no %q", u, strings.TrimSpace(d))
			}
		}
	}

	for _, name := range []string{"agent.yaml", "coordinator.yaml"} {
		if _, err := os.Stat(filepath.Join(root, "etc/switchyard", name)); err != nil {
			t.Errorf("example config: %v", err)
		}
	}
}

// installDeb installs the package with dpkg -i, checks what its scripts
// did, and removes it (and the user it created) when the test ends.
func installDeb(t *testing.T, dpkg, deb string) {
	t.Helper()
	if out, err := tryTool(t, time.Minute, ".", "dpkg-query", "-W", "-f", "${Status}", "switchyard"); err == nil && strings.Contains(out, "installed") {
		t.Fatalf("a switchyard package is already installed (%s); this test installs and removes its own", out)
	}
	if _, err := os.Stat("/usr/bin/switchyard"); err == nil {
		t.Fatal("/usr/bin/switchyard exists outside a package; this test would replace it")
	}
	_, userErr := exec.Command("getent", "passwd", "switchyard").Output()
	userExisted := userErr == nil
	_, groupErr := exec.Command("getent", "group", "switchyard").Output()
	groupExisted := groupErr == nil

	t.Cleanup(func() {
		if out, err := dpkgRetry(t, dpkg, "--purge", "switchyard"); err != nil {
			t.Errorf("dpkg --purge switchyard: %v\n%s", err, out)
		}
		if _, err := os.Stat("/usr/bin/switchyard"); err == nil {
			t.Error("/usr/bin/switchyard is still there after dpkg --purge")
		}
		if !userExisted {
			if out, err := exec.Command("userdel", "switchyard").CombinedOutput(); err != nil {
				t.Errorf("userdel switchyard: %v %s", err, out)
			}
		}
		if !groupExisted {
			if out, err := exec.Command("getent", "group", "switchyard").Output(); err == nil && len(out) > 0 {
				if out, err := exec.Command("groupdel", "switchyard").CombinedOutput(); err != nil {
					t.Errorf("groupdel switchyard: %v %s", err, out)
				}
			}
		}
	})
	if out, err := dpkgRetry(t, dpkg, "-i", deb); err != nil {
		t.Fatalf("dpkg -i %s: %v\n%s", deb, err, out)
	}
	status := runTool(t, time.Minute, ".", "dpkg-query", "-W", "-f", "${Status} ${Version}", "switchyard")
	if status != "install ok installed 9.8.7+1+gdeb0test" {
		t.Errorf("dpkg-query: %q", status)
	}
	pw, err := exec.Command("getent", "passwd", "switchyard").Output()
	if err != nil {
		t.Fatalf("the package created no switchyard user: %v", err)
	}
	if f := strings.Split(strings.TrimSpace(string(pw)), ":"); len(f) < 7 || f[6] != "/usr/sbin/nologin" {
		t.Errorf("switchyard user %q: want a system user with shell /usr/sbin/nologin", pw)
	}
	if _, err := exec.Command("getent", "group", "haproxy").Output(); err == nil {
		groups, _ := exec.Command("id", "-nG", "switchyard").Output()
		if !strings.Contains(" "+string(groups)+" ", " haproxy") {
			t.Errorf("switchyard is not in group haproxy (%q): the agent cannot reach the stats socket", groups)
		}
	}
	st, err := os.Stat("/etc/switchyard/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 {
		t.Errorf("/etc/switchyard/agent.yaml mode %v, want 0640 (it names credentials)", st.Mode().Perm())
	}
}

// dpkgRetry runs dpkg, waiting while another dpkg holds the lock.
func dpkgRetry(t *testing.T, dpkg string, args ...string) (string, error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := tryTool(t, 2*time.Minute, ".", dpkg, args...)
		if err == nil || !strings.Contains(out, "lock") || time.Now().After(deadline) {
			return out, err
		}
		time.Sleep(time.Second)
	}
}

// The example agent config the package installs is valid once the files it
// names exist: they are made with the switchyard commands the comments in
// it name, in a temporary directory standing in for /etc/switchyard.
func TestPackage_ExampleAgentConfigIsValid(t *testing.T) {
	bin := buildBinary(t)
	etc := t.TempDir()
	runTool(t, time.Minute, ".", bin, "auth", "init", "--dir", etc)
	runTool(t, time.Minute, ".", bin, "auth", "issue", "--dir", etc, "--role", "agent", "--name", "edge-1", "--out", filepath.Join(etc, "edge-1.creds"))
	runTool(t, time.Minute, ".", bin, "auth", "tls", "--dir", etc, "--name", "nats", "--host", "127.0.0.1")
	if err := os.Rename(filepath.Join(etc, "ca.pem"), filepath.Join(etc, "nats-ca.pem")); err != nil {
		t.Fatal(err)
	}
	runTool(t, time.Minute, ".", bin, "keys", "generate", "--out", filepath.Join(etc, "coordinator.key"))

	b, err := os.ReadFile("etc/switchyard/agent.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := agent.ParseConfig([]byte(strings.ReplaceAll(string(b), "/etc/switchyard/", etc+"/")))
	if err != nil {
		t.Fatalf("etc/switchyard/agent.yaml: %v", err)
	}
	if cfg.StateDir != "/var/lib/switchyard/agent" {
		t.Errorf("stateDir %q: the unit's StateDirectory is /var/lib/switchyard/agent", cfg.StateDir)
	}
	unit, err := os.ReadFile("systemd/switchyard-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for name, svc := range cfg.Services {
		hsec, ok := svc.Proxy.(*haproxy.Section)
		if !ok {
			continue
		}
		if !strings.HasPrefix(hsec.LogSocket, "/run/switchyard-agent/") || !strings.Contains(string(unit), "RuntimeDirectory=switchyard-agent") {
			t.Errorf("service %s: logSocket %q is not in the unit's RuntimeDirectory /run/switchyard-agent", name, hsec.LogSocket)
		}
		if !strings.HasPrefix(hsec.Socket, "/run/haproxy/") || !strings.Contains(string(unit), "ReadWritePaths=-/run/haproxy") {
			t.Errorf("service %s: socket %q is not under the unit's ReadWritePaths /run/haproxy", name, hsec.Socket)
		}
	}
}

// buildBinary builds switchyard stamped with testVersion.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "switchyard")
	runTool(t, 5*time.Minute, repoRoot(t), goTool(t), "build", "-ldflags", "-X main.version="+testVersion, "-o", bin, "./cmd/switchyard")
	return bin
}

// goTool is the go command that runs this test.
func goTool(t *testing.T) string {
	t.Helper()
	return tool(t, "go", "golang-go")
}
