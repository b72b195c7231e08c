package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// TestDocs_PoPAttachesThroughALeaf runs the commands of docs/operations.md's
// "How a PoP attaches" with the real nats-server and switchyard binaries, on
// ports picked at run time in place of the documented ones: a hub server
// with a JetStream domain, a leaf server of a PoP, a coordinator on the hub.
// An operator's `rollout status` through the leaf is answered, and the
// desired-state bucket is readable through the leaf in the hub's domain
// with an operator's own permissions.
func TestDocs_PoPAttachesThroughALeaf(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 3*time.Minute)
	work, ports, all := runDocBlocks(t, ctx, "docs/operations.md", "TestDocs_PoPAttachesThroughALeaf", "4222", "4223", "7422", "7000", "7070")
	if !strings.Contains(all, "no rollouts") {
		t.Errorf("rollout status through the leaf never printed %q:\n%s", "no rollouts", all)
	}
	sec := bus.Security{
		Creds: filepath.Join(work, "auth", "creds", "ci.creds"), CA: filepath.Join(work, "tls", "ca.pem"),
		JetStreamDomain: "hub",
	}
	opts, err := sec.Options("")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect("tls://127.0.0.1:"+ports["4223"], opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := sec.JetStream(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := js.KeyValue(rctx, bus.DesiredBucket)
		return err
	}); err != nil {
		t.Fatalf("desired-state bucket through the leaf in domain hub: %v", err)
	}
	// The doc's apply at the PoP waited for its document on the bus in
	// the hub's domain; its audit record is read there too, once the
	// leader has exported it.
	sy, _ := binaries(t)
	if err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		res, err := harness.RunCLI(ctx, sy, nil, "audit", "log", "--rollout", "web-green-1",
			"--nats", "tls://127.0.0.1:"+ports["4223"], "--nats-creds", sec.Creds, "--nats-ca", sec.CA, "--jetstream-domain", "hub")
		if err != nil {
			return err
		}
		if res.ExitCode != 0 || !strings.Contains(res.Stdout, "web-green-1") {
			return fmt.Errorf("exit %d: %s%s", res.ExitCode, res.Stdout, res.Stderr)
		}
		return nil
	}); err != nil {
		t.Fatalf("audit log through the leaf in domain hub: %v", err)
	}

	// "Leaf credentials from an earlier release": the hub's account
	// pushed, a new leaf identity issued, the old one revoked on the
	// running servers; the leaf still holding it is cut off from the hub.
	env := []string{"PATH=" + filepath.Dir(sy) + ":" + os.Getenv("PATH")}
	var outputs []string
	for _, c := range docCommands(t, "docs/operations.md", "TestDocs_PoPAttachesThroughALeaf/leaf-credentials") {
		if strings.HasPrefix(c.text, "#") {
			continue // what to do with the leaf's config: the test keeps the old one, to see it refused
		}
		cmd := strings.ReplaceAll(c.text, "tls://HUB:4222", "tls://127.0.0.1:"+ports["4222"])
		res, err := harness.RunCLI(ctx, "bash", env, "-c", "cd "+work+" && "+cmd)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("$ %s\n%v %+v", cmd, err, res)
		}
		t.Logf("$ %s\n%s%s", cmd, res.Stdout, res.Stderr)
		outputs = append(outputs, res.Stdout)
	}
	all = strings.Join(outputs, "\n")
	for _, want := range []string{"account pushed", "revoked pop-a in"} {
		if !strings.Contains(all, want) {
			t.Errorf("the leaf-credentials commands never printed %q:\n%s", want, all)
		}
	}
	if _, err := os.Stat(filepath.Join(work, "auth", "creds", "pop-a-2.creds")); err != nil {
		t.Errorf("the new leaf identity: %v", err)
	}
	if err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := js.KeyValue(rctx, bus.DesiredBucket); err == nil {
			return errors.New("the hub's bucket is still reachable through the leaf of the revoked pop-a")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// runDocBlocks runs the ```sh blocks of doc marked for name in a fresh
// directory with switchyard and nats-server on PATH, each documented port
// replaced by a free one; commands ending in '&' keep running until the
// test ends. It returns the directory, the port map and every command's
// output.
func runDocBlocks(t *testing.T, ctx context.Context, doc, name string, documentedPorts ...string) (string, map[string]string, string) {
	t.Helper()
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
	for _, documented := range documentedPorts {
		p, err := harness.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[documented] = strconv.Itoa(p)
	}
	localize := func(s string) string {
		for documented, p := range ports {
			s = strings.ReplaceAll(s, ":"+documented, ":"+p)
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
	for i, c := range docCommands(t, doc, name) {
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
	return work, ports, strings.Join(outputs, "\n")
}
