package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// TestDocs_ReadAPI runs the commands of docs/api.md's examples as a shell
// session would: a dev control plane in the background with a viewer
// token, then, with the lines it wrote to dev.env exported (the doc's
// `set -a && . ./dev.env`), a rollout and reads through curl and the CLI.
// It checks that each says what the doc says.
func TestDocs_ReadAPI(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 2*time.Minute)
	sy, _ := binaries(t)
	binDir := t.TempDir()
	if err := os.Symlink(sy, filepath.Join(binDir, "switchyard")); err != nil {
		t.Fatal(err)
	}
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	work := harnesstest.Dir(t)
	if err := os.Symlink(filepath.Join(root, "examples"), filepath.Join(work, "examples")); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + binDir + ":" + os.Getenv("PATH"), "HOME=" + work}

	var background []*harness.Process
	t.Cleanup(func() {
		for i := len(background) - 1; i >= 0; i-- {
			if err := background[i].Stop(); err != nil {
				t.Errorf("%s: %v", background[i].Name(), err)
			}
		}
	})
	var outputs []string
	sourced := false
	for i, c := range docCommands(t, "docs/api.md", "TestDocs_ReadAPI") {
		if c.background {
			p, err := harness.StartProcess(harness.ProcessSpec{
				Name: fmt.Sprintf("doc-%d", i), Path: "bash",
				Args: []string{"-c", "cd " + work + " && exec " + c.text}, Env: env,
				LogDir: filepath.Join(work, "logs"),
			})
			if err != nil {
				t.Fatal(err)
			}
			background = append(background, p)
			continue
		}
		if !sourced && strings.Contains(c.text, ". ./dev.env") {
			// The shell keeps what the doc exports; each line here runs
			// in a shell of its own, so the test carries it over once dev
			// has written every line.
			if err := harness.Poll(ctx, 100*time.Millisecond, func(context.Context) error {
				for _, p := range background {
					if !p.Running() {
						return harness.Permanent(fmt.Errorf("%s exited: %s", p.Name(), p.Tail(20)))
					}
				}
				b, err := os.ReadFile(filepath.Join(work, "dev.env"))
				if err != nil || !strings.Contains(string(b), "SWITCHYARD_TRUST_KEY=") {
					return fmt.Errorf("dev.env not complete: %v", err)
				}
				env = append(env, strings.Split(strings.TrimSpace(string(b)), "\n")...)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			sourced = true
		}
		var res *harness.CLIResult
		err := harness.Poll(ctx, 200*time.Millisecond, func(ctx context.Context) error {
			for _, p := range background {
				if !p.Running() {
					return harness.Permanent(fmt.Errorf("%s exited: %s", p.Name(), p.Tail(20)))
				}
			}
			var err error
			res, err = harness.RunCLI(ctx, "bash", env, "-c", "cd "+work+" && "+c.text)
			if err != nil {
				return err
			}
			if res.ExitCode != 0 {
				return fmt.Errorf("exit %d: %s", res.ExitCode, strings.TrimSpace(res.Stderr))
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s\n%v", c.text, err)
		}
		t.Logf("$ %s\n%s", c.text, strings.TrimSpace(res.Stdout))
		outputs = append(outputs, res.Stdout)
	}
	all := strings.Join(outputs, "\n")
	// protojson varies its whitespace on purpose; compare without it.
	compact := strings.Join(strings.Fields(all), "")
	for _, want := range []string{
		// rollouts
		`"id":"web-green-1"`, `"position":"wave1/1all,step1/1setWeight100,green`, `"answeredBy":"dev"`, `"leader":"dev"`,
		`"services":[{"service":"web","rollout":"web-green-1"`, // fleet
		`"killSwitch":{`,                                           // drills
		`"role":"to"`,                                              // series
		"401",                                                      // no token
		"retry:2000", "event:overview", `data:{"answeredBy":"dev"`, // events
		"ROLLOUTSERVICEFROMTOPHASE", "web-green-1webbluegreen", // rollout list --service web
	} {
		if !strings.Contains(compact, want) {
			t.Errorf("the documented commands never printed %q", want)
		}
	}
}
