package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/bus/auth"
	"github.com/switchyard/switchyard/coordinator"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
	"github.com/switchyard/switchyard/internal/certs"
)

// docCommand is one shell command of a doc's runnable blocks: a line (with
// its continuation lines and heredoc), run in the background when it ends
// with '&'.
type docCommand struct {
	text       string
	background bool
}

// docCommands reads the ```sh blocks of a doc marked with
// "<!-- run: NAME -->" on the line before them.
func docCommands(t *testing.T, doc, name string) []docCommand {
	t.Helper()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, doc))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	var out []docCommand
	marker := "<!-- run: " + name + " -->"
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != marker {
			continue
		}
		if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "```sh" {
			t.Fatalf("%s:%d: %s is not followed by a ```sh block", doc, i+1, marker)
		}
		i += 2
		var cur []string
		heredoc := ""
		for ; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			line := lines[i]
			cur = append(cur, line)
			switch {
			case heredoc != "":
				if strings.TrimSpace(line) != heredoc {
					continue
				}
				heredoc = "" // the command ends with its heredoc
			case strings.Contains(line, "<<'"):
				heredoc = strings.TrimSuffix(strings.SplitN(line, "<<'", 2)[1], "'")
				continue
			case strings.HasSuffix(line, "\\"):
				continue
			}
			text := strings.Join(cur, "\n")
			cur = nil
			if strings.TrimSpace(text) == "" {
				continue
			}
			bg := strings.HasSuffix(strings.TrimSpace(text), "&")
			out = append(out, docCommand{text: strings.TrimSuffix(strings.TrimSpace(text), "&"), background: bg})
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s has no block marked %s", doc, marker)
	}
	return out
}

// TestDocs_SecuredExternalCluster runs the commands of docs/operations.md's
// "Securing the bus and the cluster" with the real nats-server and
// switchyard binaries, on ports picked at run time in place of the
// documented ones, and checks that the result is what the doc says: a
// coordinator on an authorized TLS bus and a revoked identity refused.
func TestDocs_SecuredExternalCluster(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	sy, _ := binaries(t)
	ns := natsServerBin.get(t)
	binDir := t.TempDir()
	for name, path := range map[string]string{"switchyard": sy, "nats-server": ns} {
		if err := os.Symlink(path, filepath.Join(binDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	work := harnesstest.Dir(t)
	ports := map[string]string{}
	for _, documented := range []string{"4222", "7000", "7070"} {
		p, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[documented] = strconv.Itoa(p)
	}
	localize := func(s string) string {
		for documented, p := range ports {
			s = strings.ReplaceAll(s, ":"+documented, ":"+p)
			s = strings.ReplaceAll(s, "port: "+documented, "port: "+p)
		}
		return s
	}
	env := []string{"PATH=" + binDir + ":" + os.Getenv("PATH")}

	var background []*harness.Process
	t.Cleanup(func() {
		for i := len(background) - 1; i >= 0; i-- {
			if err := background[i].Stop(); err != nil {
				t.Errorf("%s: %v", background[i].Name(), err)
			}
		}
	})
	var outputs []string
	for i, c := range docCommands(t, "docs/operations.md", "TestDocs_SecuredExternalCluster") {
		cmd := localize(c.text)
		if c.background {
			p, err := harness.StartProcess(harness.ProcessSpec{
				Name: fmt.Sprintf("doc-%d", i), Path: "bash",
				Args: []string{"-c", "cd " + work + " && exec " + cmd}, Env: env,
				LogDir: filepath.Join(work, "logs"),
			})
			if err != nil {
				t.Fatal(err)
			}
			background = append(background, p)
			continue
		}
		// A command right after a background start may find it not ready
		// yet: retried until it succeeds or the deadline passes.
		var res *harness.CLIResult
		err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
			for _, p := range background {
				if !p.Running() {
					return harness.Permanent(fmt.Errorf("%s exited: %s", p.Name(), p.Tail(20)))
				}
			}
			var err error
			res, err = harness.RunCLI(ctx, "bash", env, "-c", "cd "+work+" && "+cmd)
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return fmt.Errorf("exit %d: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s\n%v", cmd, err)
		}
		t.Logf("$ %s\n%s", cmd, strings.TrimSpace(res.Stdout))
		outputs = append(outputs, res.Stdout)
	}
	all := strings.Join(outputs, "\n")
	for _, want := range []string{"no rollouts", "revoked edge-1", "account pushed", "c1  127.0.0.1:" + ports["7000"]} {
		if !strings.Contains(all, want) {
			t.Errorf("the documented commands never printed %q", want)
		}
	}
	// The coordinator leads over mutual TLS.
	tc, err := coordinator.ClusterClientTLS(certs.Files{CA: filepath.Join(work, "tls", "ca.pem")})
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
		m, err := (&coordinator.ClusterClient{TLS: tc}).Members(ctx, "127.0.0.1:"+ports["7070"])
		if err != nil {
			return err
		}
		if m.Leader != "c1" {
			return fmt.Errorf("leader %q", m.Leader)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// What the doc promises: edge-1 is refused, the operator is not.
	url := "tls://127.0.0.1:" + ports["4222"]
	ca := filepath.Join(work, "tls", "ca.pem")
	for name, allowed := range map[string]bool{"edge-1": false, "ci": true} {
		opts, err := (bus.Security{Creds: filepath.Join(work, "auth", "creds", name+".creds"), CA: ca}).Options("")
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			nc.Close()
		}
		if (err == nil) != allowed {
			t.Errorf("%s connects: %v, want allowed=%v", name, err, allowed)
		}
	}
}

// TestDocs_RolePermissionsTable checks docs/security.md's table of roles
// against the permissions the code grants, subject by subject.
func TestDocs_RolePermissionsTable(t *testing.T) {
	t.Parallel()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "security.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 5 {
			continue
		}
		rows[strings.Trim(strings.TrimSpace(cells[1]), "`")] = line
	}
	generic := strings.NewReplacer("KV_"+bus.DesiredBucket, "KV_<bucket>", "KV_"+bus.DrillsBucket, "KV_<bucket>")
	granted := map[string]bus.Permissions{auth.RoleLeaf: bus.LeafPermissions()}
	for _, role := range bus.Roles {
		perms, err := bus.RolePermissions(role)
		if err != nil {
			t.Fatal(err)
		}
		granted[string(role)] = perms
	}
	for role, perms := range granted {
		row, ok := rows[role]
		if !ok {
			t.Errorf("docs/security.md has no row for role %s", role)
			continue
		}
		cells := strings.Split(row, "|")
		pub, sub := cells[2], cells[3]
		for _, s := range perms.Publish {
			if !strings.Contains(pub, "`"+generic.Replace(s)+"`") && !strings.Contains(pub, "`"+s+"`") {
				t.Errorf("role %s may publish to %s; docs/security.md does not say so", role, s)
			}
		}
		for _, s := range perms.Subscribe {
			if !strings.Contains(sub, "`"+s+"`") {
				t.Errorf("role %s may subscribe to %s; docs/security.md does not say so", role, s)
			}
		}
	}
}
