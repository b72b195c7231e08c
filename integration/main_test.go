// Package integration tests Switchyard as operators run it: real binaries,
// NATS, HAProxy and HTTP backends, driven through the CLI and real traffic.
package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
)

// binDir holds the binaries built for this test binary; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "switchyard-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	return m.Run()
}

// builtBinary builds one package of the module once per test binary, on
// first use: tests that need no process (examples) do not pay for it, and a
// broken cmd/switchyard does not take the backend's own tests down with it.
type builtBinary struct {
	pkg, name string
	// noRace builds without the race detector: code that is not ours.
	noRace bool
	once   sync.Once
	path   string
	err    error
}

var (
	switchyardBin = &builtBinary{pkg: "./cmd/switchyard", name: "switchyard"}
	backendBin    = &builtBinary{pkg: "./integration/backend", name: "backend"}
	// xdsClientBin is the proxyless gRPC client Envoy nodes have as their
	// frontend.
	xdsClientBin = &builtBinary{pkg: "./integration/xdsclient", name: "xdsclient"}
	// natsServerBin is the real nats-server, from the same module version
	// as the embedded one, for tests of an external NATS deployment.
	natsServerBin = &builtBinary{pkg: "github.com/nats-io/nats-server/v2", name: "nats-server", noRace: true}
)

func (b *builtBinary) get(t testing.TB) string {
	t.Helper()
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		root, err := harness.ModuleRoot()
		if err != nil {
			b.err = err
			return
		}
		var flags []string
		if raceEnabled && !b.noRace {
			flags = append(flags, "-race")
		}
		b.path, b.err = harness.Build(ctx, root, b.pkg, filepath.Join(binDir, b.name), flags...)
	})
	if b.err != nil {
		t.Fatalf("build %s: %v", b.pkg, b.err)
	}
	return b.path
}

// binaries returns the switchyard binary and the test backend.
func binaries(t testing.TB) (switchyard, backend string) {
	t.Helper()
	return switchyardBin.get(t), backendBin.get(t)
}

// examplePath is a file of examples/, which the tests use as they are so the
// README tour and the tests cannot drift apart.
func examplePath(t testing.TB, name string) string {
	t.Helper()
	root, err := harness.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, "examples", name)
}
