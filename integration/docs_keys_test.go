package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/bus"
	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// TestDocs_SigningKeyGenerate runs docs/security.md's `keys generate`
// with the real binary, in a directory of its own in place of
// /etc/switchyard, and checks what the doc says of it: a private key of
// mode 0600 and its .pub, the key id and the trust line printed, and no
// overwrite on a second run.
func TestDocs_SigningKeyGenerate(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, time.Minute)
	sy, _ := binaries(t)
	etc := t.TempDir()
	env := []string{"PATH=" + filepath.Dir(sy) + ":" + os.Getenv("PATH")}
	cmds := docCommands(t, "docs/security.md", "TestDocs_SigningKeyGenerate")
	if len(cmds) != 1 {
		t.Fatalf("%d commands, want the one keys generate", len(cmds))
	}
	cmd := strings.ReplaceAll(cmds[0].text, "/etc/switchyard", etc)
	res, err := harness.RunCLI(ctx, "bash", env, "-c", cmd)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("$ %s\n%v %+v", cmd, err, res)
	}
	t.Logf("$ %s\n%s", cmd, res.Stdout)

	key := filepath.Join(etc, "coordinator.key")
	fi, err := os.Stat(key)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, the doc says 0600", key, fi.Mode().Perm())
	}
	pubLine, err := os.ReadFile(key + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := bus.LoadPublicKey(strings.TrimSpace(string(pubLine)))
	if err != nil {
		t.Fatalf("coordinator.key.pub: %v", err)
	}
	for _, want := range []string{bus.KeyID(pub), strings.TrimSpace(string(pubLine))} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("the command did not print %q (the key id and the trust line)", want)
		}
	}
	if !strings.HasPrefix(strings.TrimSpace(string(pubLine)), "ed25519:") {
		t.Errorf("the trust line %q is not ed25519:<base64>", pubLine)
	}
	// It refuses to overwrite.
	again, err := harness.RunCLI(ctx, "bash", env, "-c", cmd)
	if err != nil || again.ExitCode == 0 || !strings.Contains(again.Stderr, "file exists") {
		t.Fatalf("second run: %v %+v, want a refusal", err, again)
	}
	if after, _ := os.ReadFile(key + ".pub"); string(after) != string(pubLine) {
		t.Fatal("the second run replaced the key")
	}
}
